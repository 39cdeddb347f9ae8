//! Exec, ExecSync and Attach: the agent checks the request, turns it into a runtime-spec
//! process (husk-oci) and relays the streams to and from the container's shim, which starts the
//! process through the runtime and owns its stdio.
use std::sync::Arc;
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::shim::v1 as shim_pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::container::Container;
use super::service::Streamed;
use super::Agent;

/// How long the first message of a stream may take.
const FIRST_MESSAGE: Duration = Duration::from_secs(30);
/// ExecSync keeps at most this much of each stream.
pub const SYNC_OUTPUT_LIMIT: usize = 16 << 20;
/// After ExecSync's timeout has killed the process group, how long the shim gets to report the
/// exit before the call returns without it.
const AFTER_TIMEOUT: Duration = Duration::from_secs(10);

fn id_of(id: &husk_proto::mesos::v1::ContainerId, field: &str) -> Result<String, Status> {
    husk_oci::validate::container_id(id, field).map_err(super::status_of)?;
    Ok(husk_oci::validate::display_id(id))
}

/// The container, if it runs.
fn running(agent: &Agent, id: &husk_proto::mesos::v1::ContainerId, field: &str) -> Result<Arc<Container>, Status> {
    let c = agent.get(&id_of(id, field)?)?;
    let state = c.state();
    if state != pb::ContainerState::Running || c.terminated().is_some() {
        return Err(Status::failed_precondition(format!(
            "{field}: `{}` is {}, not RUNNING",
            c.id,
            state.as_str_name()
        )));
    }
    Ok(c)
}

/// Input for the shim's exec stream, the stream of its output, and the input's [`Cut`].
type ShimExec = (mpsc::Sender<shim_pb::ExecInput>, Streaming<shim_pb::ExecOutput>, Cut);

/// Ends the exec's input stream to the shim at once, dropping what is queued on it. A process
/// that does not read its stdin leaves input queued (and the HTTP/2 window full) for good; a
/// caller that gives up on the exec cuts its input so the stream can end, and the shim, seeing
/// the exec's client gone, kills the process group.
pub(crate) struct Cut(Option<tokio::sync::oneshot::Sender<()>>);

/// An exec'd process held by a pidfd, so the agent can kill it without the shim: a shim whose
/// input to the process is blocked (a process that does not read its stdin) stops reading the
/// exec stream, and a kill sent on it would wait behind that input for good.
pub(crate) struct ExecProcess {
    pid: i32,
    fd: std::os::fd::OwnedFd,
}

impl ExecProcess {
    /// Holds the process the shim reported (None: it is gone already).
    pub(crate) fn open(pid: u32) -> Option<ExecProcess> {
        let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
        husk_shim::pidfd_open(pid).ok().map(|fd| ExecProcess { pid, fd })
    }

    /// SIGKILL to the process and, while it is alive (so its pid is still its own), its group.
    pub(crate) fn kill(&self) {
        use std::os::fd::AsFd;
        if husk_shim::pidfd_signal(self.fd.as_fd(), 0).is_ok() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-self.pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = husk_shim::pidfd_signal(self.fd.as_fd(), libc::SIGKILL);
    }
}

impl Cut {
    pub(crate) fn now(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts `p` in its container through the shim.
pub(crate) async fn start(agent: &Agent, p: &pb::ExecProcess) -> Result<ShimExec, Status> {
    let c = running(agent, &p.container_id, "start.container_id")?;
    let mut client = super::shim_client(&c).await?;
    let state = super::within_deadline(&c, client.state(shim_pb::StateRequest {})).await?;
    let spec = husk_oci::bundle::read_spec(&c.bundle())
        .map_err(|e| Status::internal(format!("container_id: `{}`: its bundle: {e}", c.id)))?;
    let base = spec.process().clone().ok_or_else(|| Status::internal("the container's bundle has no process"))?;
    // The container's root as it sees it, wherever it comes from.
    let root = std::path::PathBuf::from(format!("/proc/{}/root", state.pid));
    let process = husk_oci::exec::exec_process(&base, p, &root).map_err(super::status_of)?;
    let process_json = serde_json::to_string(&process).map_err(|e| Status::internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel(16);
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    // Only an explicit cut ends the input early; a dropped Cut leaves it to end with `tx`.
    let cut_now = async move {
        if cut_rx.await.is_err() {
            std::future::pending::<()>().await
        }
    };
    let input = futures_util::StreamExt::take_until(tokio_stream::wrappers::ReceiverStream::new(rx), cut_now);
    let start = shim_pb::exec_input::Input::Start(shim_pb::ExecStart { process_json, stdin: p.stdin() });
    let _ = tx.send(shim_pb::ExecInput { input: Some(start) }).await;
    // The shim answers once the process runs (or the runtime said why it could not).
    let outputs = tokio::time::timeout(Duration::from_secs(90), client.exec(input))
        .await
        .map_err(|_| Status::deadline_exceeded(format!("container_id: `{}`: the exec did not start in time", c.id)))??
        .into_inner();
    tracing::info!(container = %c.id, args = ?process.args(), "exec");
    Ok((tx, outputs, Cut(Some(cut))))
}

/// The pid of a running container's init, as its shim knows it.
pub(crate) async fn init_pid(agent: &Agent, key: &str) -> Result<u32, Status> {
    let c = agent.get(key)?;
    if c.terminated().is_some() || c.state() != pb::ContainerState::Running {
        return Err(Status::failed_precondition(format!("`{key}` is not running")));
    }
    let mut client = super::shim_client(&c).await?;
    Ok(super::within_deadline(&c, client.state(shim_pb::StateRequest {})).await?.pid)
}

fn exit_of(e: &shim_pb::ExitStatus) -> pb::ExecExit {
    pb::ExecExit { status: Some(e.wait_status), exit_code: e.exit_code, signal: e.signal }
}

fn response_of(o: shim_pb::ExecOutput) -> Option<pb::ExecResponse> {
    use pb::exec_response::Response as R;
    use shim_pb::exec_output::Output as O;
    let r = match o.output? {
        O::Pid(p) => R::Pid(p),
        O::Stdout(d) => R::Stdout(d),
        O::Stderr(d) => R::Stderr(d),
        O::Exit(e) => R::Exit(exit_of(&e)),
    };
    Some(pb::ExecResponse { response: Some(r) })
}

/// The first message of a stream, which must come within [`FIRST_MESSAGE`].
async fn first_message<T>(input: &mut Streaming<T>, what: &str) -> Result<Option<T>, Status> {
    tokio::time::timeout(FIRST_MESSAGE, input.message())
        .await
        .map_err(|_| Status::deadline_exceeded(format!("no `{what}` within {FIRST_MESSAGE:?}")))?
}

fn window(size: husk_proto::mesos::v1::tty_info::WindowSize) -> shim_pb::WindowSize {
    shim_pb::WindowSize { rows: size.rows, columns: size.columns }
}

pub async fn exec(
    agent: Arc<Agent>,
    mut input: Streaming<pb::ExecRequest>,
) -> Result<Streamed<pb::ExecResponse>, Status> {
    let first = first_message(&mut input, "start").await?;
    let Some(pb::ExecRequest { request: Some(pb::exec_request::Request::Start(p)) }) = first else {
        return Err(Status::invalid_argument("start: the first message of an exec must be `start`"));
    };
    let (tx, outputs, _cut) = start(&agent, &p).await?;
    tokio::spawn(async move {
        use pb::exec_request::Request as R;
        use shim_pb::exec_input::Input as I;
        while let Ok(Some(m)) = input.message().await {
            let forwarded = match m.request {
                Some(R::Stdin(d)) => I::Stdin(d),
                Some(R::CloseStdin(c)) => I::CloseStdin(c),
                Some(R::Resize(size)) => I::Resize(window(size)),
                Some(R::Signal(n)) => I::Signal(n as u32),
                Some(R::Start(_)) | None => continue,
            };
            if tx.send(shim_pb::ExecInput { input: Some(forwarded) }).await.is_err() {
                return;
            }
        }
        // The client's side ended (its input with it); the shim's stream closes with `tx`.
    });
    Ok(Box::pin(outputs.filter_map(|r| match r {
        Ok(o) => response_of(o).map(Ok),
        Err(e) => Some(Err(e)),
    })))
}

pub async fn exec_sync(agent: Arc<Agent>, req: pb::ExecSyncRequest) -> Result<pb::ExecSyncResponse, Status> {
    let mut p = req.process;
    p.stdin = Some(req.stdin.is_some());
    if p.tty() {
        return Err(Status::invalid_argument("process.tty: ExecSync collects output: use Exec for a terminal"));
    }
    let timeout = match &req.timeout {
        Some(d) if d.nanoseconds <= 0 => {
            return Err(Status::invalid_argument("timeout: must be positive (leave it unset for none)"))
        }
        Some(d) => Some(Duration::from_nanos(d.nanoseconds as u64)),
        None => None,
    };
    let (tx, mut outputs, mut cut) = start(&agent, &p).await.map_err(|e| rename(e, "start.", "process."))?;
    if let Some(data) = req.stdin {
        use shim_pb::exec_input::Input as I;
        let _ = tx.send(shim_pb::ExecInput { input: Some(I::Stdin(data)) }).await;
        let _ = tx.send(shim_pb::ExecInput { input: Some(I::CloseStdin(true)) }).await;
    }
    let mut out = pb::ExecSyncResponse::default();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let keep = |buf: &mut Vec<u8>, data: Vec<u8>, truncated: &mut Option<bool>| {
        let room = SYNC_OUTPUT_LIMIT.saturating_sub(buf.len());
        if data.len() > room {
            *truncated = Some(true);
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    };
    let expiry = tokio::time::sleep(timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(expiry);
    let mut deadline_after_kill = None;
    loop {
        let next = tokio::select! {
            m = outputs.message() => m,
            _ = &mut expiry, if timeout.is_some() && out.timed_out.is_none() => {
                out.timed_out = Some(true);
                use shim_pb::exec_input::Input as I;
                let _ = tx.send(shim_pb::ExecInput { input: Some(I::Signal(libc::SIGKILL as u32)) }).await;
                deadline_after_kill = Some(tokio::time::Instant::now() + AFTER_TIMEOUT);
                continue;
            }
            _ = tokio::time::sleep_until(deadline_after_kill.unwrap_or_else(tokio::time::Instant::now)),
                if deadline_after_kill.is_some() => {
                    // The kill may be queued behind input the process never read.
                    cut.now();
                    break;
                }
        };
        use shim_pb::exec_output::Output as O;
        match next? {
            None => break,
            Some(o) => match o.output {
                Some(O::Stdout(d)) => keep(&mut stdout, d, &mut out.truncated),
                Some(O::Stderr(d)) => keep(&mut stderr, d, &mut out.truncated),
                Some(O::Exit(e)) => out.exit = Some(exit_of(&e)),
                Some(O::Pid(_)) | None => {}
            },
        }
    }
    out.stdout = Some(stdout);
    out.stderr = Some(stderr);
    Ok(out)
}

/// `start.x` errors of the shared start path, as `process.x` for ExecSync's request shape.
fn rename(e: Status, from: &str, to: &str) -> Status {
    match e.message().strip_prefix(from) {
        Some(rest) => Status::new(e.code(), format!("{to}{rest}")),
        None => e,
    }
}

pub async fn attach(
    agent: Arc<Agent>,
    mut input: Streaming<pb::AttachRequest>,
) -> Result<Streamed<pb::LogChunk>, Status> {
    let first = first_message(&mut input, "start").await?;
    let Some(pb::AttachRequest { request: Some(pb::attach_request::Request::Start(start)) }) = first else {
        return Err(Status::invalid_argument("start: the first message of an attach must be `start`"));
    };
    let c = running(&agent, &start.container_id, "start.container_id")?;
    if start.input() {
        if c.launch.container.as_ref().and_then(|i| i.tty_info.as_ref()).is_none() && !c.launch.stdin() {
            return Err(Status::failed_precondition(format!(
                "start.input: `{}` was launched without a terminal (container.tty_info) or open stdin (stdin)",
                c.id
            )));
        }
        relay_input(&c, input, |m: pb::AttachRequest| {
            use pb::attach_request::Request as R;
            use shim_pb::attach_input::Input as I;
            match m.request {
                Some(R::Stdin(d)) => Some(I::Stdin(d)),
                Some(R::CloseStdin(c)) => Some(I::CloseStdin(c)),
                Some(R::Resize(size)) => Some(I::Resize(window(size))),
                Some(R::Start(_)) | None => None,
            }
        })
        .await?;
    }
    Ok(super::service::logs(&c, start.stream(), Some(0), true, None))
}

/// Takes the container's input (its terminal or open stdin) through its shim and feeds it what
/// `input` brings, converted by `convert`, until `input` ends. Returns once the input is ours.
/// Reports whether the client's stream ended cleanly (`true`) or broke.
pub(crate) async fn relay_input<T: Send + 'static>(
    c: &Container,
    mut input: impl tokio_stream::Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    convert: fn(T) -> Option<shim_pb::attach_input::Input>,
) -> Result<tokio::sync::oneshot::Receiver<bool>, Status> {
    let mut client = super::shim_client(c).await?;
    let (tx, rx) = mpsc::channel(16);
    let mut answers = super::within_deadline(c, client.attach(tokio_stream::wrappers::ReceiverStream::new(rx))).await?;
    // The first answer: the input is ours (or why not).
    super::within_deadline(c, async { answers.message().await.map(tonic::Response::new) }).await?;
    let id = c.id.clone();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let clean = loop {
            match input.next().await {
                Some(Ok(m)) => {
                    if let Some(forwarded) = convert(m) {
                        if tx.send(shim_pb::AttachInput { input: Some(forwarded) }).await.is_err() {
                            break true;
                        }
                    }
                }
                None => break true,
                Some(Err(_)) => break false,
            }
        };
        let _ = ended_tx.send(clean);
        drop(tx);
        if let Err(e) = answers.message().await {
            tracing::warn!(container = %id, "attach input: {}", e.message());
        }
    });
    Ok(ended)
}

pub async fn launch_session(
    agent: Arc<Agent>,
    mut input: Streaming<pb::SessionRequest>,
) -> Result<Streamed<pb::LogChunk>, Status> {
    let first = first_message(&mut input, "launch").await?;
    let Some(pb::SessionRequest { request: Some(pb::session_request::Request::Launch(mut req)) }) = first else {
        return Err(Status::invalid_argument("launch: the first message of a session must be `launch`"));
    };
    if req.container_id.parent.is_none() {
        return Err(Status::invalid_argument(
            "launch.container_id.parent: a session is a nested container: name its parent",
        ));
    }
    if req.container.as_ref().and_then(|i| i.tty_info.as_ref()).is_none() {
        req.stdin = Some(true);
    }
    req.session = Some(true);
    // The setup runs in a task of its own that destroys the container if the caller went away
    // before the stream was handed over (the request cancelled mid-launch).
    let (caller, mut left) = tokio::sync::oneshot::channel::<()>();
    let setup = tokio::spawn(async move {
        let started = start_session(agent.clone(), req, input).await;
        if let Ok((c, _)) = &started {
            if left.try_recv() == Err(tokio::sync::oneshot::error::TryRecvError::Closed) {
                let _ = agent.kill(&c.id, Some(libc::SIGKILL), None).await;
            }
        }
        started.map(|(_, stream)| stream)
    });
    let result = setup.await.map_err(|e| Status::internal(format!("the session: {e}")))?;
    drop(caller);
    result
}

async fn start_session(
    agent: Arc<Agent>,
    req: pb::LaunchRequest,
    input: Streaming<pb::SessionRequest>,
) -> Result<(Arc<Container>, Streamed<pb::LogChunk>), Status> {
    let c = agent.launch(req).await?;
    let ended = relay_input(&c, input, |m: pb::SessionRequest| {
        use pb::session_request::Request as R;
        use shim_pb::attach_input::Input as I;
        match m.request {
            Some(R::Stdin(d)) => Some(I::Stdin(d)),
            Some(R::CloseStdin(c)) => Some(I::CloseStdin(c)),
            Some(R::Resize(size)) => Some(I::Resize(window(size))),
            Some(R::Launch(_)) | None => None,
        }
    })
    .await;
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            let _ = agent.kill(&c.id, Some(libc::SIGKILL), None).await;
            return Err(e);
        }
    };
    let mut output = super::service::logs(&c, pb::logs_request::Stream::Both, None, true, None);
    let (tx, rx) = mpsc::channel(16);
    let session = c.clone();
    tokio::spawn(async move {
        // The session lives as long as its client: a client that goes away (its output stream
        // dropped, or its input broken) takes the container with it.
        let mut ended = ended;
        let mut input_open = true;
        let gone = loop {
            tokio::select! {
                chunk = output.next() => match chunk {
                    Some(chunk) => {
                        if tx.send(chunk).await.is_err() {
                            break true;
                        }
                    }
                    None => break false,
                },
                clean = &mut ended, if input_open => {
                    input_open = false;
                    if !clean.unwrap_or(false) {
                        break true;
                    }
                }
                _ = tx.closed() => break true,
            }
        };
        if gone && session.terminated().is_none() {
            tracing::info!(container = %session.id, "the session's client went away: destroying its container");
            if let Err(e) = agent.kill(&session.id, Some(libc::SIGKILL), None).await {
                tracing::warn!(container = %session.id, "destroying the session's container: {}", e.message());
            }
        }
    });
    Ok((c, Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
