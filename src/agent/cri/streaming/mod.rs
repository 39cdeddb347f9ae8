//! The CRI streaming server. Exec, Attach and PortForward answer with a URL on this server, as
//! the CRI asks; the client (crictl, critest, or the kubelet proxying `kubectl exec`) then
//! upgrades an HTTP/1.1 request on that URL to SPDY/3.1 (`X-Stream-Protocol-Version`
//! `v4.channel.k8s.io`, or `portforward.k8s.io`) or to a websocket (`v5.channel.k8s.io` /
//! `v4.channel.k8s.io`), and the streams of the process travel over it.
//!
//! A URL holds a single-use token of 128 random bits that expires after a minute unused (as the
//! kubelet's own streaming server does); it names the request the RPC checked, so the HTTP side
//! takes nothing from the client but the streams. The server listens on loopback by default: the
//! kubelet and crictl run on the node and reach it there.
mod inbox;
mod spdy;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use husk_proto::agent::v1 as pb;
use husk_proto::mesos::v1 as mesos;
use husk_proto::shim::v1 as shim_pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::agent::Agent;
use inbox::Inbox;

/// How long a URL stays valid unused.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// URLs handed out and not used yet, at most.
const MAX_PENDING: usize = 1000;
/// The upgrade request's head: its size and how long it may take.
const HEAD_LIMIT: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client gets to open the streams of an exec or attach.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections still sending their request head, at most; more wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Port forwarding: streams waiting for the other half of their pair, and connections being
/// forwarded, per SPDY connection.
const MAX_UNPAIRED: usize = 128;
const MAX_FORWARDS: usize = 128;
/// After the client closed its side of a forwarded connection, how long the pod's side may
/// still answer.
const FORWARD_LINGER: Duration = Duration::from_secs(1);
/// A terminal size message is a few dozen bytes; a resize stream buffering more is garbage.
const MAX_SIZE_MESSAGE: usize = 4096;

/// Protocols of exec and attach, in husk's order of preference (v5 differs from v4 only in the
/// websocket's close-stdin signal).
const CHANNEL_V5: &str = "v5.channel.k8s.io";
const CHANNEL_V4: &str = "v4.channel.k8s.io";
const PORT_FORWARD: &str = "portforward.k8s.io";

/// What a URL was made for, as its RPC checked it.
#[derive(Clone, Debug)]
pub enum Request {
    Exec {
        container: mesos::ContainerId,
        cmd: Vec<String>,
        opts: Opts,
    },
    /// `close_stdin`: the client's end of input closes the container's (the container's
    /// `stdin_once`, without a terminal), as containerd does.
    Attach {
        container: String,
        opts: Opts,
        close_stdin: bool,
    },
    PortForward {
        pod: String,
    },
}

/// The streams an exec or attach asked for.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Opts {
    /// The CRI's rules for the stream flags, `field` naming the request.
    pub fn check(&self) -> Result<(), Status> {
        if !(self.stdin || self.stdout || self.stderr) {
            return Err(Status::invalid_argument("stdin, stdout, stderr: at least one must be set"));
        }
        if self.tty && self.stderr {
            return Err(Status::invalid_argument("tty, stderr: a terminal has no separate stderr; unset stderr"));
        }
        Ok(())
    }
}

impl Request {
    /// The streams an exec or attach asked for (None: port forwarding).
    fn opts(&self) -> Option<Opts> {
        match self {
            Request::Exec { opts, .. } | Request::Attach { opts, .. } => Some(*opts),
            Request::PortForward { .. } => None,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

pub struct Streaming {
    agent: Weak<Agent>,
    base: String,
    pending: Mutex<HashMap<String, (Request, Instant)>>,
    /// A connection silent both ways for this long is closed.
    idle_timeout: Duration,
}

impl Streaming {
    /// Binds `addr` and serves it for as long as the returned server lives.
    pub fn bind(agent: &Arc<Agent>, addr: SocketAddr, idle_timeout: Duration) -> anyhow::Result<Arc<Streaming>> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| anyhow::anyhow!("--streaming-listen {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let server = Arc::new(Streaming {
            agent: Arc::downgrade(agent),
            base: format!("http://{local}"),
            pending: Mutex::new(HashMap::new()),
            idle_timeout,
        });
        tracing::info!(address = %local, "serving CRI streams (exec, attach, port-forward)");
        let weak = Arc::downgrade(&server);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("streaming server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(server) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    // A client that vanishes without a FIN (its node rebooted) is noticed.
                    let _ = nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::KeepAlive, &true);
                    if let Err(e) = server.connection(tcp, permit).await {
                        tracing::info!(%peer, "streaming request: {e}");
                    }
                });
            }
        });
        Ok(server)
    }

    /// The URL that serves `request` once.
    pub fn url(&self, request: Request) -> Result<String, Status> {
        let token = super::random_hex(16)?;
        let path = request.path();
        let mut pending = self.pending.lock().unwrap();
        let now = Instant::now();
        pending.retain(|_, (_, expires)| *expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(Status::resource_exhausted(format!(
                "{MAX_PENDING} streaming URLs are waiting for their client; retry in a minute"
            )));
        }
        pending.insert(token.clone(), (request, now + TOKEN_TTL));
        Ok(format!("{}/{path}/{token}", self.base))
    }

    fn take(&self, path: &str, token: &str) -> Option<Request> {
        let mut pending = self.pending.lock().unwrap();
        match pending.remove(token) {
            Some((r, expires)) if expires > Instant::now() && r.path() == path => Some(r),
            Some((r, expires)) if expires > Instant::now() => {
                // Asked on the wrong path: the token stays for its own.
                pending.insert(token.to_string(), (r, expires));
                None
            }
            _ => None,
        }
    }

    async fn connection(
        self: Arc<Self>,
        mut tcp: TcpStream,
        handshake: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await;
        drop(handshake);
        let (head, rest) = match head {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let _ = respond(&mut tcp, 400, &e).await;
                return Err(e);
            }
            Err(_) => return Err(format!("no request within {HEAD_TIMEOUT:?}")),
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            let _ = respond(&mut tcp, 400, "malformed HTTP request").await;
            return Err("malformed HTTP request".into());
        }
        let method = req.method.unwrap_or_default().to_string();
        let path = req.path.unwrap_or_default().to_string();
        let values = |name: &str| -> Vec<String> {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| {
                    String::from_utf8_lossy(h.value).split(',').map(|v| v.trim().to_string()).collect::<Vec<_>>()
                })
                .filter(|v| !v.is_empty())
                .collect()
        };
        let upgrade = values("upgrade");
        let ws_key = values("sec-websocket-key").into_iter().next();
        let ws_protocols = values("sec-websocket-protocol");
        let stream_protocols = values("x-stream-protocol-version");
        let (kind, token) =
            path.split('?').next().unwrap_or("").trim_start_matches('/').split_once('/').unwrap_or(("", ""));
        if method != "GET" && method != "POST" {
            let _ = respond(&mut tcp, 405, "use GET or POST").await;
            return Err(format!("method {method}"));
        }
        let Some(request) = self.take(kind, token) else {
            let _ =
                respond(&mut tcp, 404, "no such streaming URL (they are used once and expire after a minute)").await;
            return Err(format!("unknown or expired URL {}", path.escape_debug()));
        };
        let Some(agent) = self.agent.upgrade() else { return Err("the agent is stopping".into()) };
        // From here the connection carries streams: one silent both ways for the idle timeout
        // is shut down, and whatever it served ends as if its client had left.
        let activity = Activity::new();
        let _idle = IdleWatch::start(&tcp, self.idle_timeout, activity.clone());
        let mut io = Rewind { head: rest, at: 0, io: tcp, activity };
        let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
        let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
        if websocket {
            let Some(opts) = request.opts() else {
                let msg = "port forwarding is served over SPDY/3.1 only";
                let _ = respond(&mut io.io, 400, msg).await;
                return Err(msg.into());
            };
            let supported = [CHANNEL_V5, CHANNEL_V4];
            let Some(protocol) = ws_protocols.iter().find(|p| supported.contains(&p.as_str())).cloned() else {
                let msg = format!("Sec-WebSocket-Protocol: none of {ws_protocols:?} is supported ({supported:?})");
                let _ = respond(&mut io.io, 400, &msg).await;
                return Err(msg);
            };
            let Some(key) = ws_key else {
                let _ = respond(&mut io.io, 400, "Sec-WebSocket-Key is missing").await;
                return Err("websocket upgrade without Sec-WebSocket-Key".into());
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
            );
            io.io.write_all(answer.as_bytes()).await.map_err(|e| e.to_string())?;
            tracing::debug!(request = request.path(), %protocol, "websocket stream");
            let (chans, pump) = ws::start(io, opts, protocol == CHANNEL_V5).await;
            run(agent, request, chans).await;
            pump.finish().await;
            return Ok(());
        }
        if !spdy {
            let msg = "Upgrade: SPDY/3.1 or websocket is required";
            let _ = respond(&mut io.io, 400, msg).await;
            return Err(msg.into());
        }
        let supported: &[&str] = match request {
            Request::PortForward { .. } => &[PORT_FORWARD],
            _ => &[CHANNEL_V5, CHANNEL_V4],
        };
        let Some(protocol) = stream_protocols.iter().find(|p| supported.contains(&p.as_str())).cloned() else {
            let msg = format!("X-Stream-Protocol-Version: none of {stream_protocols:?} is supported ({supported:?})");
            let _ = respond(&mut io.io, 403, &msg).await;
            return Err(msg);
        };
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        io.io.write_all(answer.as_bytes()).await.map_err(|e| e.to_string())?;
        tracing::debug!(request = request.path(), %protocol, "SPDY stream");
        let (session, incoming) = spdy::Session::start(io);
        match (request.opts(), &request) {
            (Some(opts), _) => {
                if let Some((chans, pump)) = spdy_channels(&session, incoming, opts).await {
                    run(agent, request, chans).await;
                    // What is still queued goes out, unless the client stopped reading.
                    let stop = pump.abort_handle();
                    if tokio::time::timeout(Duration::from_secs(10), pump).await.is_err() {
                        stop.abort();
                    }
                }
            }
            (None, Request::PortForward { pod }) => port_forward(&agent, pod, &session, incoming).await,
            (None, _) => {}
        }
        session.close().await;
        Ok(())
    }
}

/// Reads up to the end of the request head: the head, and what came after it.
async fn read_head(tcp: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the client closed before its request was complete".into());
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + end + 4;
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > HEAD_LIMIT {
            return Err(format!("a request head over {HEAD_LIMIT} bytes"));
        }
    }
}

async fn respond<W: AsyncWrite + Unpin>(w: &mut W, code: u16, msg: &str) -> std::io::Result<()> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let body = format!("{msg}\n");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    w.shutdown().await
}

/// When a connection last carried a byte, either way (milliseconds since it was accepted).
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { since: Instant::now(), last_ms: Default::default() }
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// Shuts a connection down once it has been silent both ways for its idle timeout (through a
/// duplicate of its descriptor, which cannot be reused by another file meanwhile). Stops when
/// dropped.
struct IdleWatch(tokio::task::JoinHandle<()>);

impl IdleWatch {
    fn start(tcp: &TcpStream, timeout: Duration, activity: Activity) -> Option<IdleWatch> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = match tcp.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("streaming connection: no idle timeout ({e})");
                return None;
            }
        };
        Some(IdleWatch(tokio::spawn(async move {
            loop {
                let silent = activity.silent_for();
                if silent >= timeout {
                    tracing::info!(?timeout, "closing a streaming connection idle for {silent:?}");
                    let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                    return;
                }
                tokio::time::sleep(timeout - silent).await;
            }
        })))
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The connection, with the bytes read past the request head served first.
struct Rewind {
    head: Vec<u8>,
    at: usize,
    io: TcpStream,
    activity: Activity,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The streams of an exec or attach, whatever carries them.
pub(super) struct Channels {
    /// What the client types; ends when it closes its input.
    stdin: Option<Inbox>,
    /// Terminal sizes as JSON (`{"Width":80,"Height":24}`), one after the other.
    resize: Option<Inbox>,
    /// Output for the client; closed once the client is gone.
    out: mpsc::Sender<(Chan, Bytes)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Chan {
    Stdout = 1,
    Stderr = 2,
    /// The final status (a Kubernetes `Status` object as JSON).
    Error = 3,
}

/// Waits for the client to open the streams `opts` asks for (and the error stream, and a resize
/// stream with a terminal), then relays [`Channels`] onto them. The pump ends, closing the
/// streams, once the exec or attach dropped its output.
async fn spdy_channels(
    session: &spdy::Session,
    mut incoming: mpsc::Receiver<spdy::Incoming>,
    opts: Opts,
) -> Option<(Channels, tokio::task::JoinHandle<()>)> {
    let (mut error, mut stdout, mut stderr) = (None, None, None);
    let (mut stdin, mut resize) = (None, None);
    let writer = session.writer.clone();
    let complete = |e: &Option<u32>, o: &Option<u32>, r: &Option<u32>, i: &Option<_>, z: &Option<_>| {
        e.is_some()
            && (!opts.stdout || o.is_some())
            && (!opts.stderr || r.is_some())
            && (!opts.stdin || i.is_some())
            && (!opts.tty || z.is_some())
    };
    let deadline = tokio::time::sleep(STREAMS_TIMEOUT);
    tokio::pin!(deadline);
    while !complete(&error, &stdout, &stderr, &stdin, &resize) {
        tokio::select! {
            s = incoming.recv() => {
                let s = s?;
                match s.header("streamtype").unwrap_or("") {
                    "error" => error = Some(s.id),
                    "stdout" => stdout = Some(s.id),
                    "stderr" => stderr = Some(s.id),
                    "stdin" if opts.stdin => stdin = Some(s.data),
                    "resize" if opts.tty => resize = Some(s.data),
                    other => {
                        tracing::debug!(streamtype = other, "refusing a stream of unknown type");
                        writer.reset(s.id, spdy::REFUSED_STREAM).await;
                    }
                }
            }
            _ = &mut deadline => {
                tracing::info!("streaming: the client did not open its streams within {STREAMS_TIMEOUT:?}");
                if let Some(id) = error {
                    let status = status_json(Err(format!("the streams were not all opened within {STREAMS_TIMEOUT:?}")));
                    writer.data(id, status).await;
                    writer.finish(id).await;
                }
                return None;
            }
        }
    }
    // Streams opened later are refused.
    let late = writer.clone();
    tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            late.reset(s.id, spdy::REFUSED_STREAM).await;
        }
    });
    let (out, mut rx) = mpsc::channel::<(Chan, Bytes)>(16);
    let pump = tokio::spawn(async move {
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some((chan, data)) = m else { break };
                    let id = match chan {
                        Chan::Stdout => stdout,
                        Chan::Stderr => stderr,
                        Chan::Error => error,
                    };
                    if let Some(id) = id {
                        if !writer.data(id, data).await {
                            return;
                        }
                    }
                }
                _ = writer.closed() => return,
            }
        }
        for id in [stdout, stderr, error].into_iter().flatten() {
            writer.finish(id).await;
        }
    });
    Some((Channels { stdin, resize, out }, pump))
}

/// Serves an exec or attach over `chans`, then sends its status.
async fn run(agent: Arc<Agent>, request: Request, mut chans: Channels) {
    let result = match request {
        Request::Exec { container, cmd, opts } => exec(&agent, container, cmd, opts, &mut chans).await,
        Request::Attach { container, opts, close_stdin } => {
            attach(&agent, &container, opts, close_stdin, &mut chans).await.map(|_| 0)
        }
        Request::PortForward { .. } => Err("port forwarding over this transport is not supported".into()),
    };
    if let Err(e) = &result {
        tracing::info!("streaming: {e}");
    }
    let _ = chans.out.send((Chan::Error, status_json(result))).await;
}

/// The Kubernetes `Status` a v4 client reads from the error stream: success, a non-zero exit
/// code (as the `ExitCode` cause client-go turns into the exit code), or a failure.
fn status_json(result: Result<i32, String>) -> Bytes {
    let v = match result {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    Bytes::from(v.to_string())
}

/// Input for a process: what the client types, its end, a new terminal size.
enum Input {
    Stdin(Bytes),
    Close,
    Resize(shim_pb::WindowSize),
}

/// Splits a byte stream of JSON terminal sizes into sizes.
#[derive(Default)]
struct Sizes(Vec<u8>);

impl Sizes {
    fn feed(&mut self, data: &[u8]) -> Vec<shim_pb::WindowSize> {
        #[derive(serde::Deserialize)]
        struct Size {
            #[serde(rename = "Width")]
            width: u32,
            #[serde(rename = "Height")]
            height: u32,
        }
        self.0.extend_from_slice(data);
        if self.0.len() > MAX_SIZE_MESSAGE {
            self.0.clear();
            return Vec::new();
        }
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.0).into_iter::<Size>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    used = it.byte_offset();
                    sizes.push(shim_pb::WindowSize { rows: s.height, columns: s.width });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Not a size: drop what was buffered rather than stall on it.
                    used = self.0.len();
                    break;
                }
                None => {
                    used = self.0.len();
                    break;
                }
            }
        }
        self.0.drain(..used);
        sizes
    }
}

/// Turns the client's stdin and resize streams into [`Input`]s for `tx`.
async fn feed<T>(
    mut stdin: Option<Inbox>,
    mut resize: Option<Inbox>,
    tx: mpsc::Sender<T>,
    wrap: fn(Input) -> Option<T>,
) {
    let mut sizes = Sizes::default();
    loop {
        let input = tokio::select! {
            d = async { stdin.as_mut().unwrap().recv().await }, if stdin.is_some() => match d {
                Some(d) => vec![Input::Stdin(d)],
                None => {
                    stdin = None;
                    vec![Input::Close]
                }
            },
            r = async { resize.as_mut().unwrap().recv().await }, if resize.is_some() => match r {
                Some(r) => sizes.feed(&r).into_iter().map(Input::Resize).collect(),
                None => {
                    resize = None;
                    continue;
                }
            },
            else => return,
        };
        for i in input.into_iter().filter_map(wrap) {
            if tx.send(i).await.is_err() {
                return;
            }
        }
    }
}

async fn exec(
    agent: &Agent,
    container: mesos::ContainerId,
    cmd: Vec<String>,
    opts: Opts,
    chans: &mut Channels,
) -> Result<i32, String> {
    let p = pb::ExecProcess {
        container_id: container,
        command: mesos::CommandInfo {
            shell: Some(false),
            value: cmd.first().cloned(),
            arguments: cmd,
            ..Default::default()
        },
        tty: Some(opts.tty),
        stdin: Some(chans.stdin.is_some()),
        ..Default::default()
    };
    let (tx, mut outputs, mut cut) = crate::agent::exec::start(agent, &p).await.map_err(|e| e.message().to_string())?;
    let input = tokio::spawn(feed(chans.stdin.take(), chans.resize.take(), tx.clone(), |i| {
        use shim_pb::exec_input::Input as I;
        let i = match i {
            Input::Stdin(d) => I::Stdin(d.to_vec()),
            Input::Close => I::CloseStdin(true),
            Input::Resize(size) => I::Resize(size),
        };
        Some(shim_pb::ExecInput { input: Some(i) })
    }));
    let out = chans.out.clone();
    let mut process = None;
    let result = loop {
        use shim_pb::exec_output::Output as O;
        tokio::select! {
            m = outputs.message() => match m {
                Ok(Some(o)) => {
                    let sent = match o.output {
                        Some(O::Stdout(d)) if opts.stdout => out.send((Chan::Stdout, d.into())).await.is_ok(),
                        Some(O::Stderr(d)) if opts.stderr => out.send((Chan::Stderr, d.into())).await.is_ok(),
                        Some(O::Exit(e)) => break Ok(exit_code(&e)),
                        Some(O::Pid(pid)) => {
                            process = crate::agent::exec::ExecProcess::open(pid);
                            true
                        }
                        _ => true,
                    };
                    if !sent {
                        break Err(gone(&input, &tx, process.as_ref(), outputs, &mut cut).await);
                    }
                }
                Ok(None) => break Err("the exec ended without an exit status".to_string()),
                Err(e) => break Err(e.message().to_string()),
            },
            _ = out.closed() => break Err(gone(&input, &tx, process.as_ref(), outputs, &mut cut).await),
        }
    };
    input.abort();
    result
}

/// The client went away mid-exec: its process goes too (as with containerd). SIGKILL goes to
/// its process group, from here through its pidfd and through the shim; if the exit does not
/// follow soon, the input is cut and the exec's output dropped, on which the shim kills the
/// group itself.
async fn gone(
    input: &tokio::task::JoinHandle<()>,
    tx: &mpsc::Sender<shim_pb::ExecInput>,
    process: Option<&crate::agent::exec::ExecProcess>,
    mut outputs: tonic::Streaming<shim_pb::ExecOutput>,
    cut: &mut crate::agent::exec::Cut,
) -> String {
    use shim_pb::exec_input::Input as I;
    input.abort();
    if let Some(p) = process {
        p.kill();
    }
    let _ = tx.try_send(shim_pb::ExecInput { input: Some(I::Signal(libc::SIGKILL as u32)) });
    let exited = async {
        while let Ok(Some(o)) = outputs.message().await {
            if matches!(o.output, Some(shim_pb::exec_output::Output::Exit(_))) {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), exited).await.is_err() {
        cut.now();
    }
    "the client went away; its exec was killed".into()
}

fn exit_code(e: &shim_pb::ExitStatus) -> i32 {
    match (e.exit_code, e.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

fn attach_input(i: Input) -> Option<Result<shim_pb::attach_input::Input, Status>> {
    use shim_pb::attach_input::Input as I;
    Some(Ok(match i {
        Input::Stdin(d) => I::Stdin(d.to_vec()),
        Input::Close => I::CloseStdin(true),
        Input::Resize(size) => I::Resize(size),
    }))
}

/// As [`attach_input`], but the client's end of input leaves the container's open (for the
/// next attach), as a detach does.
fn attach_input_kept_open(i: Input) -> Option<Result<shim_pb::attach_input::Input, Status>> {
    match i {
        Input::Close => None,
        i => attach_input(i),
    }
}

async fn attach(agent: &Agent, key: &str, opts: Opts, close_stdin: bool, chans: &mut Channels) -> Result<(), String> {
    let c = agent.get(key).map_err(|e| e.message().to_string())?;
    if c.terminated().is_some() || c.state() != pb::ContainerState::Running {
        return Err(format!("container {key} is not running"));
    }
    // Input, or (a terminal without input) only the client's terminal size.
    let (stdin, resize) = (chans.stdin.take(), chans.resize.take());
    if stdin.is_some() || resize.is_some() {
        let wants_input = stdin.is_some();
        let (tx, rx) = mpsc::channel(16);
        let wrap = match close_stdin {
            true => attach_input,
            false => attach_input_kept_open,
        };
        tokio::spawn(feed(stdin, resize, tx, wrap));
        match crate::agent::exec::relay_input(&c, tokio_stream::wrappers::ReceiverStream::new(rx), Some).await {
            Ok(_) => {}
            Err(e) if wants_input => return Err(e.message().to_string()),
            Err(e) => tracing::debug!(container = key, "attach: terminal size: {}", e.message()),
        }
    }
    let mut output = crate::agent::service::logs(&c, pb::logs_request::Stream::Both, Some(0), true, None);
    let out = chans.out.clone();
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(chunk)) => {
                    let chan = match chunk.stream() {
                        pb::logs_request::Stream::Stderr if opts.stderr => Chan::Stderr,
                        pb::logs_request::Stream::Stderr => continue,
                        _ if opts.stdout => Chan::Stdout,
                        _ => continue,
                    };
                    if out.send((chan, chunk.data.unwrap_or_default().into())).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e.message().to_string()),
                None => return Ok(()),
            },
            _ = out.closed() => return Ok(()),
        }
    }
}

/// Port forwarding over SPDY: each forwarded connection is a pair of streams (`streamtype`
/// `error` and `data`, one `requestid`, the pod's `port`); husk connects to that port on the
/// pod's loopback, in its network namespace, and copies both ways.
async fn port_forward(agent: &Agent, pod: &str, session: &spdy::Session, mut incoming: mpsc::Receiver<spdy::Incoming>) {
    let netns = match crate::agent::exec::init_pid(agent, pod).await {
        Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        Err(e) => {
            tracing::info!(pod, "port-forward: {}", e.message());
            return;
        }
    };
    let ns = match std::fs::File::open(&netns) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::info!(pod, "port-forward: {}: {e}", netns.display());
            return;
        }
    };
    let writer = &session.writer;
    let forwards = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    let mut halves: HashMap<String, (Option<spdy::Incoming>, Option<spdy::Incoming>)> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let (Some(request), Some(kind)) = (s.header("requestid"), s.header("streamtype")) else {
            writer.reset(s.id, spdy::PROTOCOL_ERROR).await;
            continue;
        };
        let request = request.to_string();
        if !halves.contains_key(&request) && halves.len() >= MAX_UNPAIRED {
            tracing::info!(pod, "port-forward: {MAX_UNPAIRED} streams wait for their pair; refusing more");
            writer.reset(s.id, spdy::REFUSED_STREAM).await;
            continue;
        }
        let entry = halves.entry(request.clone()).or_default();
        let slot = match kind {
            "error" => &mut entry.0,
            "data" => &mut entry.1,
            _ => {
                writer.reset(s.id, spdy::PROTOCOL_ERROR).await;
                continue;
            }
        };
        if slot.is_some() {
            // A second stream of one kind for one request: the first stays.
            writer.reset(s.id, spdy::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(s);
        if let (Some(_), Some(_)) = entry {
            let Some((Some(error), Some(data))) = halves.remove(&request) else { continue };
            let port = data.header("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
            let Ok(permit) = forwards.clone().try_acquire_owned() else {
                let msg = format!(
                    "error forwarding port {} to pod {pod}: {MAX_FORWARDS} connections are open",
                    port.unwrap_or(0)
                );
                refuse(writer, error.id, data.id, msg).await;
                continue;
            };
            let (ns, pod, w) = (ns.clone(), pod.to_string(), writer.clone());
            tokio::spawn(async move {
                forward(ns, pod, port, error, data, w).await;
                drop(permit);
            });
        }
    }
}

/// Says why a forwarded connection could not be made, and closes its streams.
async fn refuse(w: &spdy::Writer, error: u32, data: u32, msg: String) {
    tracing::info!("port-forward: {msg}");
    w.data(error, Bytes::from(msg)).await;
    w.finish(error).await;
    w.finish(data).await;
}

async fn forward(
    ns: Arc<std::fs::File>,
    pod: String,
    port: Option<u16>,
    error: spdy::Incoming,
    data: spdy::Incoming,
    w: spdy::Writer,
) {
    // The client sends nothing on the error stream; whatever it would is dropped unread.
    let error = error.id;
    let spdy::Incoming { id: data_id, data: mut from_client, .. } = data;
    let connected = match port {
        None => Err("the `port` header is missing or not a port number".to_string()),
        Some(port) => tokio::task::spawn_blocking(move || connect_in(&ns, port))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("connecting to localhost:{port} in the pod's network: {e}"))),
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(e) => {
            return refuse(&w, error, data_id, format!("error forwarding port {} to pod {pod}: {e}", port.unwrap_or(0)))
                .await
        }
    };
    let (mut r, mut tw) = tcp.into_split();
    // The client's bytes go to the pod until the client closes its side (then the pod reads
    // EOF and gets FORWARD_LINGER to finish answering); the pod's go to the client until the
    // pod closes its side. Either end going away ends the connection.
    let (client_done, mut client_closed) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            if tw.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = tw.shutdown().await;
        let _ = client_done.send(());
    });
    let linger = async {
        let _ = (&mut client_closed).await;
        tokio::time::sleep(FORWARD_LINGER).await;
    };
    tokio::pin!(linger);
    let mut buf = vec![0u8; 32 << 10];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !w.data(data_id, Bytes::copy_from_slice(&buf[..n])).await {
                        break;
                    }
                }
            },
            _ = &mut linger => break,
            _ = w.closed() => break,
        }
    }
    up.abort();
    w.finish(data_id).await;
    w.finish(error).await;
}

/// A TCP connection to `127.0.0.1:port` in the network namespace `ns`, made by a thread of its
/// own that enters the namespace and ends with it (a socket keeps the namespace it was made in).
fn connect_in(ns: &std::fs::File, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            std::net::TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })?;
    tcp.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_split_across_reads() {
        let mut s = Sizes::default();
        assert!(s.feed(b"{\"Width\":80,").is_empty());
        let got = s.feed(b"\"Height\":24}\n{\"Width\":100,\"Height\":30}\n{\"Wi");
        assert_eq!(got.iter().map(|w| (w.columns, w.rows)).collect::<Vec<_>>(), vec![(80, 24), (100, 30)]);
        let got = s.feed(b"dth\":1,\"Height\":2}");
        assert_eq!(got.iter().map(|w| (w.columns, w.rows)).collect::<Vec<_>>(), vec![(1, 2)]);
        assert!(s.feed(b"not json").is_empty());
        assert!(s.0.is_empty(), "garbage is dropped, not kept");
        // A size that never ends is dropped once it outgrows any real one.
        assert!(s.feed(b"{\"Width\":\"").is_empty());
        assert!(s.feed(&[b'9'; MAX_SIZE_MESSAGE]).is_empty());
        assert!(s.0.is_empty());
    }

    #[test]
    fn statuses_as_client_go_reads_them() {
        let ok: serde_json::Value = serde_json::from_slice(&status_json(Ok(0))).unwrap();
        assert_eq!(ok["status"], "Success");
        let exit: serde_json::Value = serde_json::from_slice(&status_json(Ok(3))).unwrap();
        assert_eq!(exit["reason"], "NonZeroExitCode");
        assert_eq!(exit["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(exit["details"]["causes"][0]["message"], "3");
        let err: serde_json::Value = serde_json::from_slice(&status_json(Err("boom".into()))).unwrap();
        assert_eq!((err["status"].as_str(), err["message"].as_str()), (Some("Failure"), Some("boom")));
    }

    #[test]
    fn stream_flags_follow_the_cri_rules() {
        let o = |stdin, stdout, stderr, tty| Opts { stdin, stdout, stderr, tty };
        assert!(o(false, false, false, false).check().is_err());
        assert!(o(true, true, true, true).check().unwrap_err().message().contains("tty, stderr"));
        assert!(o(false, true, false, true).check().is_ok());
        assert!(o(true, false, false, false).check().is_ok());
    }
}
