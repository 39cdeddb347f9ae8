//! The websocket transport of exec and attach (`v4.channel.k8s.io`, `v5.channel.k8s.io`): every
//! binary message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the final status,
//! 4 terminal sizes; v5 adds channel 255, whose message `[255, 0]` closes stdin.
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Message, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::inbox::{inbox, Refused};
use super::{Channels, Opts, Rewind};

const STDIN: u8 = 0;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// The largest message a client may send (stdin arrives in small pieces).
const MAX_MESSAGE: usize = 4 << 20;

/// The connection's two halves at work; [`Pump::finish`] waits for them to end.
pub(super) struct Pump {
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Pump {
    /// Waits for the close handshake (a few seconds at most), then drops the connection.
    pub(super) async fn finish(self) {
        let _ = self.writer.await;
        let abort = self.reader.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.reader).await.is_err() {
            abort.abort();
        }
    }
}

/// Speaks the channel protocol on `io`, whose upgrade is answered.
pub(super) async fn start(io: Rewind, opts: Opts, v5: bool) -> (Channels, Pump) {
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let (stdin_tx, stdin) = inbox();
    let (resize_tx, resize) = inbox();
    let (out, mut out_rx) = mpsc::channel::<(super::Chan, Bytes)>(16);
    let (gone_tx, mut gone) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(m) = source.next().await {
            let data = match m {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some(&chan) = data.first() else { continue };
            let body = data.slice(1..);
            match chan {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        match tx.offer(body) {
                            Ok(()) => {}
                            Err(Refused::Closed) => stdin_tx = None,
                            Err(Refused::Full) => {
                                // The process does not read what it is sent: its input ends
                                // here rather than the connection's reader stall.
                                tracing::info!("streaming: stdin over {} bytes unread; closing it", super::inbox::CAP);
                                stdin_tx = None;
                            }
                        }
                    }
                }
                RESIZE => {
                    let _ = resize_tx.offer(body);
                }
                CLOSE if v5 && body.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                m = out_rx.recv() => match m {
                    Some((chan, data)) => {
                        let mut framed = Vec::with_capacity(data.len() + 1);
                        framed.push(chan as u8);
                        framed.extend_from_slice(&data);
                        if sink.send(Message::Binary(framed.into())).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let bye = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                        let _ = sink.send(Message::Close(Some(bye))).await;
                        return;
                    }
                },
                _ = &mut gone => return,
            }
        }
    });
    let chans = Channels { stdin: opts.stdin.then_some(stdin), resize: opts.tty.then_some(resize), out };
    (chans, Pump { reader, writer })
}
