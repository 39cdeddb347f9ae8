//! The runtime that creates the container: husk's own (in-process) or an external OCI runtime
//! command line (runc, crun, youki, ...), driven the way containerd's runc shim drives it.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::os::unix::net::{UnixListener, UnixStream};

use super::reaper::Reaper;
use crate::runtime::console::{self, ConsoleSocket};
use crate::runtime::{self, CreateOptions};

/// The husk-runtime binary installed beside husk-shim.
fn builtin_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("husk-runtime")))
        .unwrap_or_else(|| PathBuf::from("husk-runtime"))
}

/// What creating a container gives the shim.
pub struct Created {
    pub pid: i32,
    pub warnings: Vec<String>,
    /// The master of the container's terminal, with `process.terminal`.
    pub master: Option<OwnedFd>,
}

/// Accepts the runtime's connection on the console socket and receives the terminal master,
/// giving up when the runtime exits first or after a minute.
fn accept_terminal(listener: &UnixListener, runtime: &mut std::process::Child) -> Result<OwnedFd, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                return console::receive(&stream).map_err(|e| e.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("console socket: {e}")),
        }
        if matches!(runtime.try_wait(), Ok(Some(_))) || std::time::Instant::now() > deadline {
            return Err("the runtime sent no terminal".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    BuiltIn { root: PathBuf },
    External { binary: PathBuf, root: PathBuf, log: PathBuf },
}

impl Backend {
    /// The backend a shim's `--runtime` names: `husk` for the built-in runtime, else an OCI
    /// runtime command line. Its state goes under `root` (a shim's `<state dir>/runtime`), and
    /// an external runtime's log beside it.
    pub fn named(runtime: &str, root: PathBuf, state_dir: &Path) -> Backend {
        match runtime {
            "husk" => Backend::BuiltIn { root },
            other => Backend::External { binary: other.into(), root, log: state_dir.join("runtime.log") },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Backend::BuiltIn { .. } => "husk".into(),
            Backend::External { binary, .. } => binary.display().to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_logging_to(args, None)
    }

    /// A runtime command line; `log` replaces the shared runtime log (an exec's own log keeps
    /// its error apart from concurrent ones).
    fn command_logging_to(&self, args: &[&str], log_to: Option<&Path>) -> Command {
        let (binary, root, log) = match self {
            Backend::External { binary, root, log } => (binary.clone(), root, log.clone()),
            // With poststart or poststop hooks, the shim drives its own runtime through the
            // husk-runtime binary beside it, like any other: hooks and waits then happen in
            // that process, not in the shim whose reaper collects every child.
            Backend::BuiltIn { root } => (builtin_binary(), root, root.join("husk-runtime.log")),
        };
        let log = log_to.map(Path::to_path_buf).unwrap_or(log);
        let mut cmd = Command::new(binary);
        cmd.arg("--root").arg(root).arg("--log").arg(log).args(["--log-format", "json"]).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// The last error the runtime logged (runc writes `{"level":"error","msg":...}`).
    pub fn last_error(&self) -> String {
        let log = match self {
            Backend::External { log, .. } => log.clone(),
            Backend::BuiltIn { root } => root.join("husk-runtime.log"),
        };
        last_error_in(&log)
    }

    /// `exec --detach` of the process in `process` (runtime-spec JSON), as containerd's runc
    /// shim runs it: the runtime writes the pid to `pid_file` and exits once the process runs;
    /// the process stays, a child of the shim (its subreaper). Stdio is the command's own.
    pub fn exec_command(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console: Option<&Path>,
        log: &Path,
    ) -> Command {
        let (process, pid_file) = (process.display().to_string(), pid_file.display().to_string());
        let mut args = vec!["exec", "--detach", "--pid-file", &pid_file, "--process", &process];
        let console = console.map(|c| c.display().to_string());
        if let Some(c) = &console {
            args.extend(["--console-socket", c]);
        }
        args.push(id);
        self.command_logging_to(&args, Some(log))
    }
}

/// The last error logged to `log`, a runtime's JSON log.
pub fn last_error_in(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| "the runtime failed without logging why".into())
}

impl Backend {
    /// Creates the container with `stdio` as its stdin/stdout/stderr (or, with `terminal`, a
    /// pty whose master is returned). Runs before the shim has threads (the built-in runtime
    /// forks).
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: [&OwnedFd; 3],
        init_status: Option<&OwnedFd>,
        terminal: bool,
        state_dir: &Path,
    ) -> Result<Created, String> {
        if init_status.is_some() && matches!(self, Backend::External { .. }) {
            return Err(format!("--init needs husk's runtime; {} has no init", self.name()));
        }
        match self {
            Backend::BuiltIn { root } => {
                let pair = terminal.then(UnixStream::pair).transpose().map_err(|e| format!("socketpair: {e}"))?;
                let opts = CreateOptions {
                    id: id.to_string(),
                    bundle: bundle.to_path_buf(),
                    root: root.clone(),
                    pid_file: None,
                    stdio: Some([stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()]),
                    init_status: init_status.map(|fd| fd.as_raw_fd()),
                    console: pair.as_ref().map(|(_, theirs)| ConsoleSocket::Fd(theirs.as_raw_fd())),
                };
                let (st, warnings) = runtime::create(&opts).map_err(|e| e.to_string())?;
                let master = match &pair {
                    Some((ours, _)) => Some(console::receive(ours).map_err(|e| e.to_string())?),
                    None => None,
                };
                Ok(Created { pid: st.pid, warnings, master })
            }
            Backend::External { .. } => {
                let pid_file = state_dir.join("runtime.pid");
                let console_path = state_dir.join("console.sock");
                let mut args = vec![
                    "create".to_string(),
                    "--bundle".into(),
                    bundle.display().to_string(),
                    "--pid-file".into(),
                    pid_file.display().to_string(),
                ];
                let listener = match terminal {
                    true => {
                        let _ = std::fs::remove_file(&console_path);
                        let l = UnixListener::bind(&console_path)
                            .map_err(|e| format!("{}: {e}", console_path.display()))?;
                        args.extend(["--console-socket".into(), console_path.display().to_string()]);
                        Some(l)
                    }
                    false => None,
                };
                args.push(id.to_string());
                let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut cmd = self.command(&arg_refs);
                let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
                let (Ok(i), Ok(o), Ok(e)) = (dup(stdio[0]), dup(stdio[1]), dup(stdio[2])) else {
                    return Err("duplicating the container's stdio".into());
                };
                cmd.stdin(i).stdout(o).stderr(e);
                let mut child = cmd.spawn().map_err(|e| format!("running {}: {e}", self.name()))?;
                let master = match &listener {
                    Some(l) => {
                        let received = accept_terminal(l, &mut child);
                        let _ = std::fs::remove_file(&console_path);
                        Some(received.map_err(|e| format!("{e}: {}", self.last_error()))?)
                    }
                    None => None,
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let status = loop {
                    if let Some(status) = child.try_wait().map_err(|e| format!("running {}: {e}", self.name()))? {
                        break status;
                    }
                    if std::time::Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("{} create did not finish within a minute", self.name()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                };
                if !status.success() {
                    return Err(self.last_error());
                }
                let pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| format!("{} wrote no pid file", self.name()))?;
                let _ = std::fs::remove_file(pid_file);
                Ok(Created { pid, warnings: Vec::new(), master })
            }
        }
    }

    /// Runs an external runtime command and waits for it through the shim's reaper (which
    /// reaps every child of the shim).
    async fn run(&self, reaper: &Reaper, args: &[&str]) -> Result<(), String> {
        let rx = reaper.spawn(&mut self.command(args)).map_err(|e| format!("running {}: {e}", self.name()))?;
        let status = rx.await.unwrap_or(-1);
        if status == 0 {
            Ok(())
        } else {
            Err(self.last_error())
        }
    }

    /// Runs `step` of the built-in runtime in the shim itself, on a blocking thread, when the
    /// container has no `phase` hooks: an exec of the runtime binary less (1–2 ms of a launch).
    /// Hooks are children the step waits for, which the shim's reaper (it reaps every child)
    /// would take from it: with hooks (or another runtime) it answers None, and the step runs
    /// in the binary like any runtime's.
    async fn in_process<T: Send + 'static>(
        &self,
        id: &str,
        phase: runtime::HookPhase,
        step: fn(&Path, &str) -> T,
    ) -> Option<Result<T, String>> {
        let Backend::BuiltIn { root } = self else { return None };
        let (root, id) = (root.clone(), id.to_string());
        let ran = tokio::task::spawn_blocking(move || {
            // Reading the bundle is blocking work too.
            (!runtime::has_hooks(&root, &id, phase)).then(|| step(&root, &id))
        })
        .await;
        match ran {
            Ok(None) => None,
            Ok(Some(out)) => Some(Ok(out)),
            Err(e) => Some(Err(e.to_string())),
        }
    }

    pub async fn start(&self, reaper: &Reaper, id: &str) -> Result<(), String> {
        match self.in_process(id, runtime::HookPhase::Poststart, runtime::start).await {
            Some(ran) => ran?.map_err(|e| e.to_string()),
            None => self.run(reaper, &["start", id]).await,
        }
    }

    /// Removes the runtime's record of the container (after its processes are gone).
    pub async fn delete(&self, reaper: &Reaper, id: &str) -> Result<(), String> {
        let (Backend::BuiltIn { root } | Backend::External { root, .. }) = self;
        if !root.join(id).exists() {
            return Ok(());
        }
        let delete = |root: &Path, id: &str| runtime::delete(root, id, true);
        match self.in_process(id, runtime::HookPhase::Poststop, delete).await {
            Some(ran) => match ran? {
                Ok(()) | Err(runtime::Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            None => self.run(reaper, &["delete", "--force", id]).await,
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
