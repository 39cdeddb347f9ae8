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

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<i32>>,
    /// Statuses of processes reaped before anyone asked for them.
    unclaimed: HashMap<i32, i32>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Waits for the status of `pid`, a child the caller started.
    pub async fn wait_for(&self, pid: i32) -> i32 {
        let rx = {
            let mut t = self.table.lock().unwrap();
            if let Some(status) = t.unclaimed.remove(&pid) {
                return status;
            }
            let (tx, rx) = oneshot::channel();
            t.waiting.insert(pid, tx);
            rx
        };
        rx.await.unwrap_or(-1)
    }

    /// Reaps every exited child. `on_init` gets the status of `init` if it is among them.
    pub fn reap(&self, init: i32, mut on_init: impl FnMut(i32)) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(ws) => {
                    let Some((pid, status)) = raw_status(&ws) else { continue };
                    if pid == init {
                        on_init(status);
                        continue;
                    }
                    let mut t = self.table.lock().unwrap();
                    match t.waiting.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        // A runtime command not yet waited for, or an orphan of the container:
                        // keep a bounded record for the former.
                        None if t.unclaimed.len() < 1024 => {
                            t.unclaimed.insert(pid, status);
                        }
                        None => {}
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }
}
