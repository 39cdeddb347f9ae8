//! husk's init: the container's pid 1 when the launch asks for one (Mesos' launch helper does
//! the same). It forwards every signal it gets to the command, reaps every process that ends
//! up its child, and when the command exits reports the command's own wait status (pid 1 of a
//! namespace cannot die by a signal it sends itself) and exits, taking the namespace with it.
use std::io::Write;
use std::os::fd::RawFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::exit_child;

pub(super) fn run(command: Pid, status_fd: RawFd) -> ! {
    // pid 1 never execs, so close-on-exec never cleans it: keep only the status pipe (as fd 3),
    // and make it undumpable so the container cannot reach its descriptors via /proc/1/fd.
    let _ = nix::sys::prctl::set_dumpable(false);
    let status_fd = crate::sys::move_fd(status_fd, 3).unwrap_or(status_fd);
    crate::sys::close_from(if status_fd == 3 { 4 } else { 3 });
    for fd in 0..3 {
        let _ = nix::unistd::close(fd);
    }
    let mut status_out = crate::sys::adopt_fd(status_fd);
    let signals = SigSet::all();
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(command, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    let Some((pid, raw)) = crate::shim::raw_status(&ws) else { continue };
                    if pid == command.as_raw() {
                        let _ = status_out.write_all(&raw.to_ne_bytes());
                        let code = match ws {
                            WaitStatus::Exited(_, c) => c,
                            WaitStatus::Signaled(_, s, _) => 128 + s as i32,
                            _ => 255,
                        };
                        exit_child(code)
                    }
                }
            }
        }
    }
}
