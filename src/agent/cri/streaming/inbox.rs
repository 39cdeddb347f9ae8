//! A stream's inbound bytes, buffered up to a cap, so that a connection's reader never waits on
//! one slow consumer: SPDY as spdystream speaks it and websockets have no flow control, and a
//! reader that waits stops reading the connection, so it would not see the client leave.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// What one stream may have buffered and not consumed yet.
pub const CAP: usize = 1 << 20;

pub struct Sender {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
}

/// The receiving side; ends when the sender is dropped (the stream's end, or the connection's).
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

#[derive(Debug, PartialEq)]
pub enum Refused {
    /// More than [`CAP`] bytes would be waiting.
    Full,
    /// The receiver is gone.
    Closed,
}

pub fn inbox() -> (Sender, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (Sender { tx, queued: queued.clone() }, Inbox { rx, queued })
}

impl Sender {
    pub fn offer(&self, data: Bytes) -> Result<(), Refused> {
        if self.tx.is_closed() {
            return Err(Refused::Closed);
        }
        let len = data.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > CAP {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.tx.send(data).map_err(|_| Refused::Closed)
    }
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Bytes> {
        let data = self.rx.recv().await?;
        self.queued.fetch_sub(data.len(), Ordering::AcqRel);
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_bytes_not_messages() {
        let (tx, mut rx) = inbox();
        tx.offer(Bytes::from(vec![0; CAP - 1])).unwrap();
        tx.offer(Bytes::from_static(b"x")).unwrap();
        assert_eq!(tx.offer(Bytes::from_static(b"y")), Err(Refused::Full));
        assert_eq!(rx.recv().await.unwrap().len(), CAP - 1);
        tx.offer(Bytes::from_static(b"y")).unwrap();
        drop(rx);
        assert_eq!(tx.offer(Bytes::from_static(b"z")), Err(Refused::Closed));
    }
}
