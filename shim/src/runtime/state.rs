//! The runtime's record of a container (`<root>/<id>/state.json`) and the OCI state it reports.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime keeps about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
    /// The init's start time (clock ticks since boot, /proc/<pid>/stat field 22): a pid that
    /// was reused by another process never passes for the container's init.
    pub pid_start_time: u64,
    pub cgroups_path: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Unix time in nanoseconds.
    pub created_ns: i64,
}

/// The OCI runtime state (`state` command output).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// The start time of `pid` (clock ticks since boot) and whether it is a zombie.
pub fn process_start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z") || fields.first() == Some(&"X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

impl State {
    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    pub fn load(root: &Path, id: &str) -> Result<State, Error> {
        let path = State::dir(root, id).join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(id.to_string())),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::io(path.display(), e))
    }

    pub fn save(&self, root: &Path) -> Result<(), Error> {
        let path = State::dir(root, &self.id).join(STATE_FILE);
        let json = serde_json::to_vec(self).map_err(|e| Error::io(path.display(), e))?;
        husk_oci::checkpoint::write_atomic(&path, &json, 0o600).map_err(|e| Error::io(path.display(), e))
    }

    /// Whether the recorded init is still this container's (same pid, same start time, not a
    /// zombie).
    pub fn init_alive(&self) -> bool {
        matches!(process_start_time(self.pid), Some((t, false)) if t == self.pid_start_time)
    }

    pub fn status(&self, root: &Path) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if State::dir(root, &self.id).join(EXEC_FIFO).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    pub fn oci(&self, root: &Path) -> OciState {
        let status = self.status(root);
        OciState {
            oci_version: "1.0.2".into(),
            id: self.id.clone(),
            status,
            pid: (status != Status::Stopped).then_some(self.pid),
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process() {
        let (t, zombie) = process_start_time(std::process::id() as i32).unwrap();
        assert!(t > 0);
        assert!(!zombie);
        assert!(process_start_time(i32::MAX).is_none());
    }
}
