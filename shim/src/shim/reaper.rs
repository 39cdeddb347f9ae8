//! The shim is the subreaper of its container: on every SIGCHLD it reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left, hands the init's status to the exit path and a
//! runtime command's status to whoever waits for it, and drops the container's orphans.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// The raw wait(2) status of a decoded one.
pub fn raw_status(ws: &WaitStatus) -> Option<(i32, i32)> {
    match *ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), (code & 0xff) << 8)),
        WaitStatus::Signaled(pid, sig, core) => Some((pid.as_raw(), sig as i32 | if core { 0x80 } else { 0 })),
        _ => None,
    }
}

/// Children whose status someone waits for.
#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<i32>>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Spawns `cmd` and returns a receiver for its wait status. The table stays locked from the
    /// spawn to the registration, so the reaper cannot take the status in between.
    pub fn spawn(&self, cmd: &mut std::process::Command) -> std::io::Result<oneshot::Receiver<i32>> {
        let mut t = self.table.lock().unwrap();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The reaper collects the status; the Child must never wait for it.
        std::mem::forget(child);
        let (tx, rx) = oneshot::channel();
        t.waiting.insert(pid, tx);
        Ok(rx)
    }

    /// Reaps every exited child. `on_init` gets the status of `init` if it is among them; a
    /// spawned command's goes to its receiver; the container's orphans are just reaped.
    pub fn reap(&self, init: i32, mut on_init: impl FnMut(i32)) {
        let mut t = self.table.lock().unwrap();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(ws) => {
                    let Some((pid, status)) = raw_status(&ws) else { continue };
                    if pid == init {
                        on_init(status);
                    } else if let Some(tx) = t.waiting.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }
}
