//! `exit.json`: the container init's termination, written atomically before any waiter is
//! answered, so no exit status is lost to a crash of the agent or the shim.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the exit record in the shim's state directory.
pub const EXIT_FILE: &str = "exit.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Raw wait(2) status of the init.
    pub wait_status: i32,
    /// Exit code when the init exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number when the init was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
    /// Unix time in nanoseconds.
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
}

impl ExitRecord {
    /// Decodes a wait(2) status.
    pub fn from_wait_status(wait_status: i32, oom_killed: bool, started_at_ns: i64, finished_at_ns: i64) -> Self {
        let (exit_code, signal) = if libc::WIFEXITED(wait_status) {
            (Some(libc::WEXITSTATUS(wait_status)), None)
        } else if libc::WIFSIGNALED(wait_status) {
            (None, Some(libc::WTERMSIG(wait_status)))
        } else {
            (None, None)
        };
        ExitRecord { wait_status, exit_code, signal, oom_killed, started_at_ns, finished_at_ns }
    }

    /// The shell convention: the exit code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }

    /// Writes the record to `<dir>/exit.json` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        husk_oci::checkpoint::write_atomic(&dir.join(EXIT_FILE), &json, 0o644)
    }

    /// Reads `<dir>/exit.json`; `Ok(None)` when the init has not exited (no file).
    pub fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(dir.join(EXIT_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{EXIT_FILE}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exits_and_signals() {
        // W_EXITCODE(3, 0) and W_EXITCODE(0, SIGKILL), as the kernel encodes them.
        let exited = ExitRecord::from_wait_status(3 << 8, false, 1, 2);
        assert_eq!((exited.exit_code, exited.signal, exited.shell_code()), (Some(3), None, 3));
        let killed = ExitRecord::from_wait_status(libc::SIGKILL, true, 1, 2);
        assert_eq!((killed.exit_code, killed.signal, killed.shell_code()), (None, Some(9), 137));
        assert!(killed.oom_killed);
    }

    #[test]
    fn survives_a_round_trip_and_reports_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ExitRecord::load(dir.path()).unwrap(), None);
        let r = ExitRecord::from_wait_status(0, false, 10, 20);
        r.save(dir.path()).unwrap();
        assert_eq!(ExitRecord::load(dir.path()).unwrap(), Some(r));
        std::fs::write(dir.path().join(EXIT_FILE), b"{torn").unwrap();
        assert_eq!(ExitRecord::load(dir.path()).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
