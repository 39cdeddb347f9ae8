//! husk-shim: one small process per container. It creates the container, is the subreaper of
//! its init, writes its output to the sandbox, records its exit in `exit.json` before anyone
//! hears of it, serves `husk.shim.v1` on a unix socket, and outlives whoever started it.
mod backend;
mod exec;
mod reaper;
mod service;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use backend::Backend;
use husk_proto::shim::v1::shim_client::ShimClient;
use husk_proto::shim::v1::shim_server::ShimServer;
pub use reaper::raw_status;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cgroups::{Cgroup, Layout};
use crate::cri_log::{CriLog, Lines};
use crate::exit::ExitRecord;
use crate::logs::{rotation_from_env, RotatingFile};
use crate::runtime::state::process_start_time;
use crate::sys::{exit_child, fork, Fork};

pub const SOCKET: &str = "shim.sock";
pub const SHIM_FILE: &str = "shim.json";
pub const INIT_FILE: &str = "init.json";
pub const LOG_FILE: &str = "shim.log";
/// How long the starter waits for the shim to serve.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub struct Options {
    pub id: String,
    pub bundle: PathBuf,
    pub sandbox: PathBuf,
    /// The shim's own directory (`<runtime dir>/shims/<id>`): socket, pids, exit.json.
    pub state_dir: PathBuf,
    pub backend: Backend,
    /// Run husk's init as the container's pid 1 (built-in runtime only).
    pub init: bool,
    /// Keep the container's stdin open for Attach (without a terminal; with one, the terminal
    /// takes input).
    pub stdin: bool,
    /// A cgroup for the shim itself (e.g. the agent's `/husk/shims`), so shims are accounted
    /// apart from the containers and from the process that started them.
    pub shim_cgroup: Option<PathBuf>,
    /// Also write the container's output to this file in the CRI log format (a Kubernetes
    /// container's `log_path`), reopened on `ReopenLog`.
    pub cri_log: Option<PathBuf>,
}

/// The holder of a pod's namespaces: waits for signals, reaps every child it inherits (it is
/// pid 1 when the pod shares its pid namespace), and returns on SIGTERM or SIGINT.
pub fn hold() -> Result<(), String> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(|e| format!("sigprocmask: {e}"))?;
    // It only waits from here: the code that started it need not stay mapped.
    crate::sys::release_clean_file_pages();
    loop {
        match set.wait().map_err(|e| format!("sigwait: {e}"))? {
            Signal::SIGTERM | Signal::SIGINT => return Ok(()),
            Signal::SIGCHLD => {
                while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if s == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

/// A process identified beyond its pid: pid plus start time, as checkpointed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: i32) -> Option<ProcessId> {
        process_start_time(pid).map(|(start_time, _)| ProcessId { pid, start_time })
    }

    /// Whether the process is still the one recorded (not a reused pid, not a zombie).
    pub fn alive(&self) -> bool {
        matches!(process_start_time(self.pid), Some((t, false)) if t == self.start_time)
    }

    pub fn load(path: &Path) -> Option<ProcessId> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        husk_oci::checkpoint::write_atomic(path, &serde_json::to_vec(self)?, 0o644)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Starts a shim for a new container and returns its socket once it serves. The shim runs on
/// in the background, detached from the caller (its own session, reparented away), so killing
/// the caller or closing its stdio never touches the container.
pub fn start(opts: &Options) -> Result<PathBuf, String> {
    husk_oci::failpoint::init().map_err(|e| format!("{}: {e}", husk_oci::failpoint::VAR))?;
    let socket = opts.state_dir.join(SOCKET);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!("socket path {} is longer than {MAX_SOCKET_PATH} bytes", socket.display()));
    }
    for p in [&opts.bundle, &opts.sandbox] {
        if !p.is_dir() {
            return Err(format!("{} is not a directory", p.display()));
        }
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().recursive(false).mode(0o700).create(&opts.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if opts.state_dir.join(SHIM_FILE).exists() || socket.exists() {
                    return Err(format!("a shim for `{}` already exists in {}", opts.id, opts.state_dir.display()));
                }
            }
            Err(e) => return Err(format!("{}: {e}", opts.state_dir.display())),
        }
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match fork().map_err(|e| format!("fork: {e}"))? {
        Fork::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            match fork() {
                Ok(Fork::Child) => daemon(opts.clone(), ready_w),
                _ => exit_child(0),
            }
        }
        Fork::Parent(pid) => {
            drop(ready_w);
            let _ = nix::sys::wait::waitpid(pid, None);
            // The container's init holds a copy of the pipe until it execs: a shim that dies
            // after creating it is seen gone by its pid, not by the end of the pipe.
            let shim_file = opts.state_dir.join(SHIM_FILE);
            let gone = || ProcessId::load(&shim_file).is_some_and(|p| !p.alive());
            let answer = read_with_deadline(ready_r, READY_DEADLINE, gone)
                .map_err(|e| format!("{e} (its log: {})", opts.state_dir.join(LOG_FILE).display()))?;
            match answer.strip_prefix("ok") {
                Some(_) => Ok(socket),
                None => Err(answer.strip_prefix("error: ").unwrap_or(&answer).trim().to_string()),
            }
        }
    }
}

fn read_with_deadline(fd: OwnedFd, timeout: Duration, gone: impl Fn() -> bool) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the shim did not report within {timeout:?}"));
        }
        let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).min(100);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) if gone() => return Err("the shim exited before it served".into()),
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let mut buf = [0u8; 4096];
        // One line answers; the write end may stay open elsewhere (the container's init holds a
        // copy until it execs), so EOF is not awaited.
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.contains(&b'\n') {
                    break;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("reading from the shim: {e}")),
        }
    }
    if out.is_empty() {
        return Err("the shim exited before it served".into());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn tell(ready: &mut Option<std::fs::File>, msg: &str) {
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(format!("{}\n", msg.replace('\n', " ")).as_bytes());
    }
}

/// The daemonized shim. Never returns.
fn daemon(opts: Options, ready_w: OwnedFd) -> ! {
    let mut ready = Some(std::fs::File::from(ready_w));
    let code = match prepare(&opts) {
        Err(e) => {
            // Whatever was created (a container blocked on its fifo, its cgroup) goes.
            let _ = cleanup(&opts);
            tell(&mut ready, &format!("error: {e}"));
            let _ = std::fs::remove_dir_all(&opts.state_dir);
            1
        }
        Ok(prepared) => match serve(opts.clone(), prepared, &mut ready) {
            Ok(()) => 0,
            Err(e) => {
                tell(&mut ready, &format!("error: {e}"));
                eprintln!("husk-shim: {e}");
                1
            }
        },
    };
    exit_child(code)
}

struct Prepared {
    init: ProcessId,
    created_ns: i64,
    cgroup: Option<Cgroup>,
    oom_baseline: u64,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
    env: Vec<String>,
    /// With an init: where it reports the command's wait status.
    init_status: Option<OwnedFd>,
    /// The container's terminal, kept open for as long as the shim runs.
    terminal_master: Option<OwnedFd>,
    /// The write end of the container's open stdin.
    stdin_w: Option<OwnedFd>,
    cri_log: Option<SharedCriLog>,
}

/// The CRI log file, written by both output pumps and reopened by the service.
pub type SharedCriLog = Arc<std::sync::Mutex<CriLog>>;

/// Everything that must happen before the shim has threads: detach, become the subreaper,
/// create the container (which forks).
fn prepare(opts: &Options) -> Result<Prepared, String> {
    let _ = nix::unistd::chdir("/");
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| e.to_string())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.state_dir.join(LOG_FILE))
        .map_err(|e| format!("shim log: {e}"))?;
    {
        use std::os::fd::AsRawFd;
        crate::sys::set_stdio([null.as_raw_fd(), null.as_raw_fd(), log.as_raw_fd()]).map_err(|e| e.to_string())?;
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    if let Some(path) = &opts.shim_cgroup {
        let cg = Layout::detect()
            .and_then(|l| Cgroup::new(l, path))
            .map_err(|e| format!("shim cgroup {}: {e}", path.display()))?;
        cg.create()
            .and_then(|_| cg.add(std::process::id() as i32))
            .map_err(|e| format!("shim cgroup {}: {e}", path.display()))?;
    }
    let me = ProcessId::of(std::process::id() as i32).ok_or("reading the shim's own start time")?;
    me.save(&opts.state_dir.join(SHIM_FILE)).map_err(|e| format!("{SHIM_FILE}: {e}"))?;

    let spec = husk_oci::bundle::read_spec(&opts.bundle).map_err(|e| e.to_string())?;
    let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap_or_default();
    let cri_log = match &opts.cri_log {
        Some(path) => Some(Arc::new(std::sync::Mutex::new(
            CriLog::open(path).map_err(|e| format!("the CRI log {}: {e}", path.display()))?,
        ))),
        None => None,
    };
    let (stdout_r, stdout_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let (stdin, stdin_w): (OwnedFd, _) = match opts.stdin && !terminal {
        true => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
            (r, Some(w))
        }
        false => (null.into(), None),
    };
    let created_ns = now_ns();
    let (status_r, status_w) = match opts.init {
        true => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| e.to_string())?;
            (Some(r), Some(w))
        }
        false => (None, None),
    };
    let created = opts.backend.create(
        &opts.id,
        &opts.bundle,
        [&stdin, &stdout_w, &stderr_w],
        status_w.as_ref(),
        terminal,
        &opts.state_dir,
    )?;
    drop(status_w);
    let (pid, warnings) = (created.pid, created.warnings);
    // With a terminal, the container's output is the pty master's (stderr included).
    let (stdout_r, terminal_master) = match created.master {
        Some(master) => (master.try_clone().map_err(|e| e.to_string())?, Some(master)),
        None => (stdout_r, None),
    };
    for w in warnings {
        eprintln!("husk-shim: warning: {w}");
    }
    let init = ProcessId::of(pid).ok_or_else(|| format!("the container's init {pid} is gone"))?;
    init.save(&opts.state_dir.join(INIT_FILE)).map_err(|e| format!("{INIT_FILE}: {e}"))?;
    husk_oci::failpoint::hit("shim.created");
    let cgroup = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .and_then(|p| Cgroup::new(Layout::detect().ok()?, &p).ok());
    let oom_baseline = cgroup.as_ref().and_then(|c| c.stats().ok()).and_then(|s| s.oom_kills).unwrap_or(0);
    Ok(Prepared {
        init,
        created_ns,
        cgroup,
        oom_baseline,
        stdout_r,
        stderr_r,
        env,
        init_status: status_r,
        terminal_master,
        stdin_w,
        cri_log,
    })
}

async fn pump(fd: OwnedFd, path: PathBuf, env: Vec<String>, stream: &'static str, cri: Option<SharedCriLog>) {
    let (rotation, warnings) = rotation_from_env(&env, stream);
    for w in warnings {
        eprintln!("husk-shim: warning: {w}");
    }
    let mut file = match RotatingFile::open(&path, rotation) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("husk-shim: {}: {e}", path.display());
            return;
        }
    };
    let cri_stream = if stream == "STDOUT" { "stdout" } else { "stderr" };
    let mut lines = Lines::default();
    let mut to_cri = |data: Option<&[u8]>| {
        let Some(cri) = &cri else { return };
        let mut log = cri.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ns();
        let mut failed = None;
        let mut emit = |partial: bool, text: &[u8]| {
            if let Err(e) = log.entry(now, cri_stream, partial, text) {
                failed = Some(e);
            }
        };
        match data {
            Some(d) => lines.push(d, &mut emit),
            None => lines.finish(&mut emit),
        }
        if let Some(e) = failed {
            eprintln!("husk-shim: {}: {e}", log.path().display());
        }
    };
    // A pipe or a pty master: both read the same way, non-blocking under the reactor. A pty
    // master reads EIO once the container's last process closed the slave.
    if nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).is_err() {
        return;
    }
    let Ok(afd) = crate::sys::async_fd(fd) else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(mut guard) = afd.readable().await else { break };
        match nix::unistd::read(afd.get_ref(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = file.write(&buf[..n]) {
                    eprintln!("husk-shim: {}: {e}", path.display());
                }
                to_cri(Some(&buf[..n]));
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    to_cri(None);
}

/// How long after its last call (or its start) a shim drops its clean code pages.
const RELEASE_CODE_AFTER: Duration = Duration::from_millis(250);
/// How long a thread of blocking work (a start, a delete, cgroup walks) outlives it: less than
/// RELEASE_CODE_AFTER, so that the code its exit runs is mapped before the release, not after.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_millis(100);

fn serve(opts: Options, p: Prepared, ready: &mut Option<std::fs::File>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let socket = opts.state_dir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        }
        let out =
            tokio::spawn(pump(p.stdout_r, opts.sandbox.join("stdout"), p.env.clone(), "STDOUT", p.cri_log.clone()));
        let err =
            tokio::spawn(pump(p.stderr_r, opts.sandbox.join("stderr"), p.env.clone(), "STDERR", p.cri_log.clone()));

        let (exit_tx, exit_rx) = watch::channel(ExitRecord::load(&opts.state_dir).ok().flatten());
        let reaper = reaper::Reaper::default();
        let input = match (&p.terminal_master, p.stdin_w) {
            (Some(master), _) => Some(exec::Input::new(master.try_clone().ok(), true)),
            (None, Some(w)) => Some(exec::Input::new(Some(w), false)),
            (None, None) => None,
        }
        .transpose()
        .map_err(|e| format!("the container's input: {e}"))?;
        let shared = Arc::new(service::Shared {
            id: opts.id.clone(),
            state_dir: opts.state_dir.clone(),
            execs: Default::default(),
            input: Arc::new(tokio::sync::Mutex::new(input)),
            bundle: opts.bundle.clone(),
            backend: opts.backend.clone(),
            reaper: reaper.clone(),
            init_pid: p.init.pid,
            init_start_time: p.init.start_time,
            cgroup: p.cgroup.clone(),
            exit: exit_rx,
            started: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            shutdown: Notify::new(),
            cri_log: p.cri_log.clone(),
        });

        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).map_err(|e| e.to_string())?;
        // Neither SIGTERM, SIGHUP nor SIGINT ends the shim: only Shutdown does.
        for kind in [
            tokio::signal::unix::SignalKind::terminate(),
            tokio::signal::unix::SignalKind::hangup(),
            tokio::signal::unix::SignalKind::interrupt(),
        ] {
            let mut s = tokio::signal::unix::signal(kind).map_err(|e| e.to_string())?;
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
        let state_dir = opts.state_dir.clone();
        let cgroup = p.cgroup.clone();
        let (started_at, init_pid, oom_baseline) = (p.created_ns, p.init.pid, p.oom_baseline);
        let init_status = p.init_status;
        let _terminal = p.terminal_master;
        tokio::spawn(async move {
            let mut pumps = Some((out, err));
            loop {
                let mut status = None;
                reaper.reap(init_pid, |s| status = Some(s));
                if let Some(mut status) = status {
                    // With husk's init, the command's own status is the container's.
                    if let Some(fd) = &init_status {
                        let mut buf = [0u8; 4];
                        if nix::unistd::read(fd, &mut buf) == Ok(4) {
                            status = i32::from_ne_bytes(buf);
                        }
                    }
                    // Let the output drain (bounded: an orphan may hold the pipes open).
                    if let Some((out, err)) = pumps.take() {
                        let _ = tokio::time::timeout(Duration::from_millis(500), async {
                            let _ = out.await;
                            let _ = err.await;
                        })
                        .await;
                    }
                    let oom_now = cgroup.as_ref().and_then(|c| c.stats().ok()).and_then(|s| s.oom_kills).unwrap_or(0);
                    let record = ExitRecord::from_wait_status(status, oom_now > oom_baseline, started_at, now_ns());
                    husk_oci::failpoint::hit("shim.reaped");
                    if let Err(e) = record.save(&state_dir) {
                        eprintln!("husk-shim: writing exit.json: {e}");
                    }
                    husk_oci::failpoint::hit("shim.exit-recorded");
                    let _ = exit_tx.send(Some(record));
                }
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });

        // A shim mostly waits: a while after each call, the code and constant data that calls
        // (and the start) touched are dropped from its page tables, so an idle shim's resident
        // set is its own memory, not the binary's pages that every shim shares.
        let activity = Arc::new(Notify::new());
        tokio::spawn({
            let activity = activity.clone();
            async move {
                loop {
                    activity.notified().await;
                    tokio::time::sleep(RELEASE_CODE_AFTER).await;
                    crate::sys::release_clean_file_pages();
                }
            }
        });
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let shared2 = shared.clone();
        activity.notify_one();
        tell(ready, "ok");
        tonic::transport::Server::builder()
            .add_service(ShimServer::with_interceptor(service::Service(shared), move |req| {
                activity.notify_one();
                Ok(req)
            }))
            .serve_with_incoming_shutdown(incoming, async move { shared2.shutdown.notified().await })
            .await
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(opts.state_dir.join(SHIM_FILE));
        Ok::<(), String>(())
    })
}

/// Connects to a shim's socket.
pub async fn connect(socket: &Path) -> Result<ShimClient<tonic::transport::Channel>, tonic::transport::Error> {
    let path = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://shim")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await?;
    Ok(ShimClient::new(channel))
}

/// The shim's destroy path without the shim (it died): kill what is left of the container,
/// delete it from the runtime, remove its cgroup. Idempotent. The exit status, if the shim
/// recorded one, stays in `exit.json`.
pub fn cleanup(opts: &Options) -> Result<(), String> {
    let spec = husk_oci::bundle::read_spec(&opts.bundle).ok();
    let cgroup = spec
        .as_ref()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()))
        .and_then(|p| Cgroup::new(Layout::detect().ok()?, &p).ok());
    if let Some(cg) = &cgroup {
        cg.kill_all(Duration::from_secs(10)).map_err(|e| e.to_string())?;
    } else if let Some(init) = ProcessId::load(&opts.state_dir.join(INIT_FILE)) {
        if init.alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    opts.backend.delete_blocking(&opts.id)?;
    if let Some(cg) = &cgroup {
        cg.remove(Duration::from_secs(10)).map_err(|e| e.to_string())?;
    }
    if let Some(shim) = ProcessId::load(&opts.state_dir.join(SHIM_FILE)) {
        // (A shim cleaning up after its own failed start is not to be killed.)
        if shim.alive() && shim.pid != std::process::id() as i32 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(opts.state_dir.join(SOCKET));
    let _ = std::fs::remove_file(opts.state_dir.join(SHIM_FILE));
    Ok(())
}
