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
    /// While an exec is being started (its pid not known yet), the statuses of unknown pids
    /// are kept here, with the hold count at the time: the exec'd process may exit, and be
    /// reaped, before its pid is read.
    early: HashMap<i32, (i32, u64)>,
    /// Holds taken so far, and the ones alive (by their number).
    holds_taken: u64,
    live: std::collections::BTreeSet<u64>,
}

/// Keeps unknown exits while alive (see [`Reaper::hold`]).
pub struct Hold {
    table: Arc<Mutex<Table>>,
    seq: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap();
        t.live.remove(&self.seq);
        // An exit recorded before the oldest live hold began is nobody's to claim.
        let oldest = t.live.first().copied().unwrap_or(u64::MAX);
        t.early.retain(|_, (_, at)| *at > oldest);
    }
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

    /// Keeps the statuses of unknown children until the hold is dropped, so that a process
    /// whose pid is learnt after it started (an exec, through the runtime's pid file) can still
    /// be [`claim`](Self::claim)ed if it has already exited.
    pub fn hold(&self) -> Hold {
        let mut t = self.table.lock().unwrap();
        t.holds_taken += 1;
        let seq = t.holds_taken;
        t.live.insert(seq);
        Hold { table: self.table.clone(), seq }
    }

    /// A receiver for the status of `pid`, a child (or orphan) of the shim started under
    /// `hold`: an exit recorded before the hold began (a reused pid's) is not taken.
    pub fn claim(&self, pid: i32, hold: &Hold) -> oneshot::Receiver<i32> {
        let mut t = self.table.lock().unwrap();
        let (tx, rx) = oneshot::channel();
        match t.early.remove(&pid) {
            Some((status, at)) if at >= hold.seq => {
                let _ = tx.send(status);
            }
            _ => {
                t.waiting.insert(pid, tx);
            }
        }
        rx
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
                    } else if !t.live.is_empty() {
                        let at = t.holds_taken;
                        t.early.insert(pid, (status, at));
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(r: &Reaper, pid: i32, status: i32) {
        let mut t = r.table.lock().unwrap();
        if !t.live.is_empty() {
            let at = t.holds_taken;
            t.early.insert(pid, (status, at));
        }
    }

    #[test]
    fn early_exits_go_to_the_hold_they_happened_under() {
        let r = Reaper::default();
        let first = r.hold();
        record(&r, 100, 7 << 8);
        let second = r.hold();
        // Before `second` began: not its (a reused pid would otherwise get a stranger's exit).
        let mut rx = r.claim(100, &second);
        assert!(rx.try_recv().is_err());
        record(&r, 101, 3 << 8);
        assert_eq!(r.claim(101, &second).try_recv().unwrap(), 3 << 8);
        drop(first);
        drop(second);
        assert!(r.table.lock().unwrap().early.is_empty(), "nothing kept once no hold is alive");
        record(&r, 102, 0);
        assert!(r.table.lock().unwrap().early.is_empty(), "nothing is kept without a hold");
    }
}
