//! Exec and attach: stdio streamed between a gRPC stream and a process of the container.
//!
//! An exec is the runtime's own `exec --detach` (husk-runtime or runc), run as a fresh process
//! with pipes or a console socket as its stdio: the shim, which has threads, never forks into
//! the container. The runtime exits once the process runs, the process becomes the shim's
//! (its subreaper's) child, and the reaper hands its status over. Its statuses are held from
//! before the runtime starts until the pid is known, so an exit in between is not lost.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use husk_proto::shim::v1 as pb;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::service::{exit_to_pb, Shared, CALL_DEADLINE};
use crate::exit::ExitRecord;

/// How long output may still come after the process exited: a background child that keeps the
/// pipes open must not hold the caller.
const DRAIN: Duration = Duration::from_millis(500);
/// How long the runtime may take to start the process.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// End of transmission: what "closing stdin" is on a terminal.
const EOT: u8 = 0x04;

pub type Outputs = tokio_stream::wrappers::ReceiverStream<Result<pb::ExecOutput, Status>>;

/// The files of one exec, removed when it has started (or failed to).
struct Files {
    process: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    console: PathBuf,
}

impl Files {
    fn new(state_dir: &Path, n: u64) -> std::io::Result<Files> {
        let dir = state_dir.join("exec");
        std::fs::create_dir_all(&dir)?;
        Ok(Files {
            process: dir.join(format!("{n}.json")),
            pid: dir.join(format!("{n}.pid")),
            log: dir.join(format!("{n}.log")),
            // A socket path must fit 108 bytes: keep it as short as the shim's own socket's.
            console: state_dir.join(format!("c{n}")),
        })
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in [&self.process, &self.pid, &self.log, &self.console] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Status::internal(format!("pipe: {e}")))
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Starts the process of the stream's first message and returns the stream of its output.
pub async fn exec(s: Arc<Shared>, mut input: Streaming<pb::ExecInput>) -> Result<Outputs, Status> {
    let start = match tokio::time::timeout(CALL_DEADLINE, input.message()).await {
        Ok(Ok(Some(pb::ExecInput { input: Some(pb::exec_input::Input::Start(start)) }))) => start,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Status::deadline_exceeded(format!("no `start` within {CALL_DEADLINE:?}"))),
        Ok(_) => return Err(Status::invalid_argument("start: the first message of an exec must be `start`")),
    };
    let process: oci_spec::runtime::Process = serde_json::from_str(&start.process_json)
        .map_err(|e| Status::invalid_argument(format!("start.process_json: not a runtime-spec process: {e}")))?;
    if !s.started.load(Ordering::SeqCst) || !s.init_alive() {
        return Err(Status::failed_precondition("the container is not running"));
    }
    let terminal = process.terminal().unwrap_or(false);
    let n = s.execs.fetch_add(1, Ordering::SeqCst);
    let files = Files::new(&s.state_dir, n).map_err(|e| internal("exec files", e))?;
    husk_oci::checkpoint::write_atomic(&files.process, start.process_json.as_bytes(), 0o600)
        .map_err(|e| internal("writing the process", e))?;

    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| internal("/dev/null", e))
    };
    let (stdin_r, stdin_w) = match start.stdin && !terminal {
        true => pipe().map(|(r, w)| (r, Some(w)))?,
        false => (null()?, None),
    };
    let (out_r, out_w, err_r, err_w) = match terminal {
        true => (None, null()?, None, null()?),
        false => {
            let (or, ow) = pipe()?;
            let (er, ew) = pipe()?;
            (Some(or), ow, Some(er), ew)
        }
    };
    let listener = match terminal {
        true => Some(tokio::net::UnixListener::bind(&files.console).map_err(|e| internal("console socket", e))?),
        false => None,
    };
    let console = listener.as_ref().map(|_| files.console.as_path());
    let hold = s.reaper.hold();
    let mut cmd = s.backend.exec_command(&s.id, &files.process, &files.pid, console, &files.log);
    cmd.stdin(stdin_r).stdout(out_w).stderr(err_w);
    let mut runtime = s.reaper.spawn(&mut cmd).map_err(|e| internal(&format!("running {}", s.backend.name()), e))?;
    // Our copies of the child's ends go, so the output reads EOF when the process' copies do.
    drop(cmd);

    // The rest runs in a task of its own: a caller that goes away mid-start (its request
    // cancelled) must not leave a process nobody follows. Any failure from here on kills what
    // the runtime may have started.
    let io = StartIo { listener, stdin_w, out_r, err_r, terminal };
    let task = tokio::spawn(async move {
        let result = finish_start(&s, &files, &mut runtime, &hold, io, input).await;
        if result.is_err() {
            abandon(&files, &mut runtime).await;
        }
        drop(hold);
        result
    });
    task.await.map_err(|e| internal("the exec", e))?
}

/// What an exec's stdio is made of while it starts.
struct StartIo {
    listener: Option<tokio::net::UnixListener>,
    stdin_w: Option<OwnedFd>,
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
    terminal: bool,
}

/// After a failed start: the runtime is given its time to finish, and a process it started
/// goes (with its group).
async fn abandon(files: &Files, runtime: &mut tokio::sync::oneshot::Receiver<i32>) {
    if !runtime.is_terminated() {
        let _ = tokio::time::timeout(START_DEADLINE, runtime).await;
    }
    if let Some(pid) = std::fs::read_to_string(&files.pid).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
        signal_group(pid, Signal::SIGKILL);
    }
}

async fn finish_start(
    s: &Arc<Shared>,
    files: &Files,
    runtime: &mut tokio::sync::oneshot::Receiver<i32>,
    hold: &super::reaper::Hold,
    io: StartIo,
    input: Streaming<pb::ExecInput>,
) -> Result<Outputs, Status> {
    let failed = |files: &Files| Status::failed_precondition(super::backend::last_error_in(&files.log));
    let master = match io.listener {
        None => None,
        Some(l) => {
            let accepted = tokio::select! {
                a = l.accept() => a.map_err(|e| internal("console socket", e))?.0,
                _ = &mut *runtime => return Err(failed(files)),
                _ = tokio::time::sleep(START_DEADLINE) => {
                    return Err(Status::deadline_exceeded("the runtime sent no terminal in time"));
                }
            };
            let stream = accepted.into_std().map_err(|e| internal("console socket", e))?;
            stream.set_nonblocking(false).map_err(|e| internal("console socket", e))?;
            let master = tokio::task::spawn_blocking(move || crate::runtime::console::receive(&stream))
                .await
                .map_err(|e| internal("receiving the terminal", e))?
                .map_err(|e| internal("receiving the terminal", e))?;
            Some(master)
        }
    };
    let status = match tokio::time::timeout(START_DEADLINE, &mut *runtime).await {
        Ok(status) => status.unwrap_or(-1),
        Err(_) => return Err(Status::deadline_exceeded(format!("{} exec did not finish in time", s.backend.name()))),
    };
    if status != 0 {
        return Err(failed(files));
    }
    let pid: i32 = std::fs::read_to_string(&files.pid)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| Status::internal(format!("{} wrote no pid file", s.backend.name())))?;
    let mut outputs = Vec::new();
    let mut input_to = io.stdin_w;
    if let Some(m) = master {
        input_to = Some(m.try_clone().map_err(|e| internal("dup", e))?);
        outputs.push((m, false));
    }
    outputs.extend(io.out_r.map(|fd| (fd, false)));
    outputs.extend(io.err_r.map(|fd| (fd, true)));
    let feed_to = Input::new(input_to, io.terminal).map_err(|e| internal("the process' input", e))?;
    let exited = s.reaper.claim(pid, hold);
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.send(Ok(pb::ExecOutput { output: Some(pb::exec_output::Output::Pid(pid as u32)) })).await;
    tokio::spawn(follow(pid, exited, outputs, feed_to, input, tx));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Runs until the process has exited and its output is drained (bounded), then sends the exit.
/// A client that goes away kills the process and its group.
async fn follow(
    pid: i32,
    exited: tokio::sync::oneshot::Receiver<i32>,
    outputs: Vec<(OwnedFd, bool)>,
    input: Input,
    stream: Streaming<pb::ExecInput>,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    let started = super::now_ns();
    let mut pumps = tokio::task::JoinSet::new();
    for (fd, stderr) in outputs {
        let tx = tx.clone();
        pumps.spawn(read_chunks(fd, move |data| {
            let output = match stderr {
                true => pb::exec_output::Output::Stderr(data),
                false => pb::exec_output::Output::Stdout(data),
            };
            let tx = tx.clone();
            async move { tx.send(Ok(pb::ExecOutput { output: Some(output) })).await.is_ok() }
        }));
    }
    let feeder = tokio::spawn(feed(pid, input, stream));
    let mut exited = exited;
    let status = tokio::select! {
        status = &mut exited => status.unwrap_or(-1),
        _ = tx.closed() => {
            signal_group(pid, Signal::SIGKILL);
            feeder.abort();
            return;
        }
    };
    let _ = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
    pumps.abort_all();
    feeder.abort();
    let record = ExitRecord::from_wait_status(status, false, started, super::now_ns());
    let _ = tx.send(Ok(pb::ExecOutput { output: Some(pb::exec_output::Output::Exit(exit_to_pb(&record))) })).await;
}

/// Signals the process and its process group (the runtime makes it a session leader, so its
/// children are in the group unless they left it).
fn signal_group(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(-pid), sig);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// Where input goes: a pipe to the process' stdin, or its terminal. Writes wait for room and
/// may be abandoned at any await (the descriptor stays registered), so a client that goes away
/// never leaves a write pending.
pub struct Input {
    to: Option<AsyncFd<OwnedFd>>,
    terminal: bool,
}

impl Input {
    pub fn new(to: Option<OwnedFd>, terminal: bool) -> std::io::Result<Input> {
        Ok(Input { to: to.map(nonblocking).transpose()?, terminal })
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some(afd) = &self.to else { return Ok(()) };
        let mut rest = data;
        while !rest.is_empty() {
            let mut guard = afd.writable().await?;
            match nix::unistd::write(afd.get_ref(), rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // A reader that went away (EPIPE) ends the input, nothing else.
                    self.to = None;
                    return Err(std::io::Error::from(e));
                }
            }
        }
        Ok(())
    }

    async fn close(&mut self) {
        match self.terminal {
            true => {
                let _ = self.write(&[EOT]).await;
            }
            false => self.to = None,
        }
    }

    fn resize(&self, size: &pb::WindowSize) -> Result<(), Status> {
        if !self.terminal {
            return Err(Status::failed_precondition("resize: the process has no terminal"));
        }
        let (Ok(rows), Ok(cols)) = (u16::try_from(size.rows), u16::try_from(size.columns)) else {
            return Err(Status::invalid_argument("resize: rows and columns must fit in 16 bits"));
        };
        if let Some(fd) = &self.to {
            crate::sys::set_window_size(fd.get_ref().as_raw_fd(), rows, cols).map_err(|e| internal("resize", e))?;
        }
        Ok(())
    }
}

/// Feeds the exec's input messages to the process until the client's side ends.
async fn feed(pid: i32, mut input: Input, mut stream: Streaming<pb::ExecInput>) {
    use pb::exec_input::Input as In;
    while let Ok(Some(msg)) = stream.message().await {
        match msg.input {
            Some(In::Stdin(data)) => {
                let _ = input.write(&data).await;
            }
            Some(In::CloseStdin(true)) => input.close().await,
            Some(In::Resize(size)) => {
                let _ = input.resize(&size);
            }
            Some(In::Signal(n)) => {
                if let Ok(sig) = Signal::try_from(n as i32) {
                    signal_group(pid, sig);
                }
            }
            Some(In::CloseStdin(false)) | Some(In::Start(_)) | None => {}
        }
    }
    // The client's side ended: that is the end of its input too.
    if !input.terminal {
        input.to = None;
    }
}

/// Feeds the container's terminal or open stdin from an attach stream until it ends or the
/// client goes away (`gone`).
pub async fn attach(
    input: &mut Input,
    mut stream: Streaming<pb::AttachInput>,
    gone: impl std::future::Future<Output = ()>,
) -> Result<(), Status> {
    use pb::attach_input::Input as In;
    tokio::pin!(gone);
    loop {
        let step = async {
            let Some(msg) = stream.message().await? else { return Ok(false) };
            match msg.input {
                Some(In::Stdin(data)) => input.write(&data).await.map_err(|e| internal("writing the input", e))?,
                Some(In::CloseStdin(true)) => input.close().await,
                Some(In::Resize(size)) => input.resize(&size)?,
                Some(In::CloseStdin(false)) | None => {}
            }
            Ok::<bool, Status>(true)
        };
        tokio::select! {
            more = step => if !more? { return Ok(()) },
            _ = &mut gone => return Ok(()),
        }
    }
}

fn nonblocking(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    crate::sys::async_fd(fd)
}

/// Reads `fd` (a pipe or a terminal master) until EOF, giving each chunk to `f` until it
/// returns false. A terminal's master reads EIO once the last process closed the slave.
pub async fn read_chunks<F, Fut>(fd: OwnedFd, mut f: F)
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Ok(afd) = nonblocking(fd) else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = afd.readable().await else { return };
        match nix::unistd::read(afd.get_ref(), &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !f(buf[..n].to_vec()).await {
                    return;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
