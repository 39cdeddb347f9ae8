//! huskctl's interactive calls: `exec` (a process in a running container, stdio streamed both
//! ways) and `attach` (a container's live output, and its terminal or stdin).
use std::io::{IsTerminal, Write};

use anyhow::{anyhow, Result};
use husk_proto::agent::v1 as pb;
use husk_proto::mesos::v1::tty_info::WindowSize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::terminal::{self, DetachKeys, RawMode};

type Client = pb::containerizer_client::ContainerizerClient<tonic::transport::Channel>;

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", e.code(), e.message())
}

fn write_to(stderr: bool, data: &[u8]) -> std::io::Result<()> {
    if stderr {
        let mut err = std::io::stderr().lock();
        err.write_all(data)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
}

fn window() -> Option<WindowSize> {
    terminal::window_size().map(|(rows, columns)| WindowSize { rows, columns })
}

/// Sends a resize whenever the operator's terminal changes size (SIGWINCH).
fn follow_window_size<T: Send + 'static>(tx: mpsc::Sender<T>, wrap: fn(WindowSize) -> T) {
    tokio::spawn(async move {
        let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(size) = window() {
                if tx.send(wrap(size)).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// The shell's exit status of an exec.
fn exit_code(e: &pb::ExecExit) -> u8 {
    match (e.exit_code, e.signal) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Runs `start` and relays its stdio; returns its exit status.
pub async fn exec(client: &mut Client, mut start: pb::ExecProcess) -> Result<u8> {
    use pb::exec_request::Request as R;
    let (tty, interactive) = (start.tty(), start.stdin());
    if tty && start.window_size.is_none() {
        start.window_size = window();
    }
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::ExecRequest { request: Some(R::Start(start)) }).await?;
    let mut outputs = client.exec(ReceiverStream::new(rx)).await.map_err(status_error)?.into_inner();
    let _raw = (tty && interactive && std::io::stdin().is_terminal()).then(RawMode::enable);
    if interactive {
        let tx = tx.clone();
        let mut chunks = terminal::stdin_chunks();
        tokio::spawn(async move {
            while let Some(data) = chunks.recv().await {
                if tx.send(pb::ExecRequest { request: Some(R::Stdin(data)) }).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(pb::ExecRequest { request: Some(R::CloseStdin(true)) }).await;
        });
    }
    if tty {
        follow_window_size(tx.clone(), |size| pb::ExecRequest { request: Some(R::Resize(size)) });
    }
    // Held until the end: a closed request stream is the end of the input.
    let _tx = tx;
    use pb::exec_response::Response as O;
    while let Some(m) = outputs.message().await.map_err(status_error)? {
        match m.response {
            Some(O::Stdout(d)) => write_to(false, &d)?,
            Some(O::Stderr(d)) => write_to(true, &d)?,
            Some(O::Exit(e)) => return Ok(exit_code(&e)),
            Some(O::Pid(_)) | None => {}
        }
    }
    Err(anyhow!("the exec's stream ended without its exit status"))
}

/// How an attach ended.
pub enum Attached {
    /// The container's output ended: it terminated.
    Ended,
    /// The operator detached (Ctrl-P Ctrl-Q).
    Detached,
}

/// Streams the container's output (and with `input`, stdin to it) until it terminates or the
/// operator detaches.
pub async fn attach(
    client: &mut Client,
    container_id: husk_proto::mesos::v1::ContainerId,
    input: bool,
) -> Result<Attached> {
    use pb::attach_request::Request as R;
    let (tx, rx) = mpsc::channel(16);
    let start = pb::AttachStart { container_id, input: Some(input), stream: None };
    tx.send(pb::AttachRequest { request: Some(R::Start(start)) }).await?;
    let mut output = client.attach(ReceiverStream::new(rx)).await.map_err(status_error)?.into_inner();
    let _raw = (input && std::io::stdin().is_terminal()).then(RawMode::enable);
    let (detach_tx, mut detached) = mpsc::channel::<()>(1);
    if input {
        if let Some(size) = window() {
            tx.send(pb::AttachRequest { request: Some(R::Resize(size)) }).await?;
        }
        follow_window_size(tx.clone(), |size| pb::AttachRequest { request: Some(R::Resize(size)) });
        let tx = tx.clone();
        let mut chunks = terminal::stdin_chunks();
        tokio::spawn(async move {
            let mut keys = DetachKeys::default();
            while let Some(data) = chunks.recv().await {
                let (data, detach) = keys.scan(&data);
                if !data.is_empty() && tx.send(pb::AttachRequest { request: Some(R::Stdin(data)) }).await.is_err() {
                    return;
                }
                if detach {
                    let _ = detach_tx.send(()).await;
                    return;
                }
            }
            let _ = tx.send(pb::AttachRequest { request: Some(R::CloseStdin(true)) }).await;
        });
    }
    let _tx = tx;
    loop {
        tokio::select! {
            chunk = output.message() => match chunk.map_err(status_error)? {
                Some(c) => write_to(c.stream == Some(pb::logs_request::Stream::Stderr as i32), &c.data.unwrap_or_default())?,
                None => return Ok(Attached::Ended),
            },
            Some(()) = detached.recv() => return Ok(Attached::Detached),
        }
    }
}
