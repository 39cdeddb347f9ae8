//! The runtime that creates the container: husk's own (in-process) or an external OCI runtime
//! command line (runc, crun, youki, ...), driven the way containerd's runc shim drives it.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::reaper::Reaper;
use crate::runtime::{self, CreateOptions};

#[derive(Debug, Clone)]
pub enum Backend {
    BuiltIn { root: PathBuf },
    External { binary: PathBuf, root: PathBuf, log: PathBuf },
}

impl Backend {
    pub fn name(&self) -> String {
        match self {
            Backend::BuiltIn { .. } => "husk".into(),
            Backend::External { binary, .. } => binary.display().to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let Backend::External { binary, root, log } = self else { unreachable!("external runtimes only") };
        let mut cmd = Command::new(binary);
        cmd.arg("--root").arg(root).arg("--log").arg(log).args(["--log-format", "json"]).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// The last error an external runtime logged (runc writes `{"level":"error","msg":...}`).
    pub fn last_error(&self) -> String {
        let Backend::External { log, .. } = self else { return String::new() };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .rev()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_string())
            })
            .unwrap_or_else(|| "the runtime failed without logging why".into())
    }

    /// Creates the container with `stdio` as its stdin/stdout/stderr; returns the init's pid and
    /// the runtime's warnings. Runs before the shim has threads (the built-in runtime forks).
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: [&OwnedFd; 3],
        init_status: Option<&OwnedFd>,
        state_dir: &Path,
    ) -> Result<(i32, Vec<String>), String> {
        if init_status.is_some() && matches!(self, Backend::External { .. }) {
            return Err(format!("--init needs husk's runtime; {} has no init", self.name()));
        }
        match self {
            Backend::BuiltIn { root } => {
                let opts = CreateOptions {
                    id: id.to_string(),
                    bundle: bundle.to_path_buf(),
                    root: root.clone(),
                    pid_file: None,
                    stdio: Some([stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()]),
                    init_status: init_status.map(|fd| fd.as_raw_fd()),
                };
                runtime::create(&opts).map(|(st, warnings)| (st.pid, warnings)).map_err(|e| e.to_string())
            }
            Backend::External { .. } => {
                let pid_file = state_dir.join("runtime.pid");
                let mut cmd = self.command(&[
                    "create",
                    "--bundle",
                    &bundle.to_string_lossy(),
                    "--pid-file",
                    &pid_file.to_string_lossy(),
                    id,
                ]);
                let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
                let (Ok(i), Ok(o), Ok(e)) = (dup(stdio[0]), dup(stdio[1]), dup(stdio[2])) else {
                    return Err("duplicating the container's stdio".into());
                };
                cmd.stdin(i).stdout(o).stderr(e);
                let status = cmd.status().map_err(|e| format!("running {}: {e}", self.name()))?;
                if !status.success() {
                    return Err(self.last_error());
                }
                let pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| format!("{} wrote no pid file", self.name()))?;
                let _ = std::fs::remove_file(pid_file);
                Ok((pid, Vec::new()))
            }
        }
    }

    /// Runs an external runtime command and waits for it through the shim's reaper (which
    /// reaps every child of the shim).
    async fn run(&self, reaper: &Reaper, args: &[&str]) -> Result<(), String> {
        let child = self.command(args).spawn().map_err(|e| format!("running {}: {e}", self.name()))?;
        let status = reaper.wait_for(child.id() as i32).await;
        // The reaper has the status; the Child must not wait for it again.
        std::mem::forget(child);
        if status == 0 {
            Ok(())
        } else {
            Err(self.last_error())
        }
    }

    pub async fn start(&self, reaper: &Reaper, id: &str) -> Result<(), String> {
        match self {
            Backend::BuiltIn { root } => {
                let (root, id) = (root.clone(), id.to_string());
                tokio::task::spawn_blocking(move || runtime::start(&root, &id))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Backend::External { .. } => self.run(reaper, &["start", id]).await,
        }
    }

    /// Removes the runtime's record of the container (after its processes are gone).
    pub async fn delete(&self, reaper: &Reaper, id: &str) -> Result<(), String> {
        match self {
            Backend::BuiltIn { root } => {
                let (root, id) = (root.clone(), id.to_string());
                tokio::task::spawn_blocking(move || match runtime::delete(&root, &id, true) {
                    Ok(()) | Err(runtime::Error::NotFound(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Backend::External { root, .. } => {
                if !root.join(id).exists() {
                    return Ok(());
                }
                self.run(reaper, &["delete", "--force", id]).await
            }
        }
    }

    /// The same, for `husk-shim cleanup` (no shim, so no reaper and no async runtime).
    pub fn delete_blocking(&self, id: &str) -> Result<(), String> {
        match self {
            Backend::BuiltIn { root } => match runtime::delete(root, id, true) {
                Ok(()) | Err(runtime::Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Backend::External { root, .. } => {
                if !root.join(id).exists() {
                    return Ok(());
                }
                let status = self.command(&["delete", "--force", id]).status().map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(self.last_error())
                }
            }
        }
    }
}
