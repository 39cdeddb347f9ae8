//! SPDY/3.1 as the Kubernetes streaming protocols use it.
//!
//! The client (client-go's executor over moby/spdystream, as in crictl, critest and the kubelet)
//! opens every stream with SYN_STREAM, naming its role in a `streamtype` header; the server
//! answers each with SYN_REPLY and both sides exchange DATA frames, a FIN flag closing one
//! direction of a stream. Header blocks are zlib streams preset with the SPDY/3 dictionary, one
//! compression context per direction for the whole connection, each block ending in a sync
//! flush. spdystream neither sends nor honours WINDOW_UPDATE, so no flow control window is
//! enforced here: TCP's own backpressure bounds what is in flight.
use std::collections::HashMap;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::inbox::{inbox, Inbox, Refused};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
const FLOW_CONTROL_ERROR: u32 = 7;
/// The largest control frame accepted (its header block compressed).
const MAX_CONTROL_FRAME: usize = 64 << 10;
/// The largest DATA frame accepted (client-go writes 32 KiB at a time).
const MAX_DATA_IN: usize = 1 << 20;
/// The largest header block accepted, decompressed.
const MAX_HEADER_BLOCK: usize = 64 << 10;
const MAX_HEADER_PAIRS: usize = 256;
/// Outgoing data is cut into frames of at most this size.
const MAX_DATA_FRAME: usize = 32 << 10;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
#[rustfmt::skip]
const DICTIONARY: &[u8] =
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\x00\x00\
    \x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\x00\x00\x00\
    \x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03a\
    ge\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\x00\x00\x00\
    \x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10conten\
    t-language\x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-\
    md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04\
    etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\
    \x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\
    \x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08loca\
    tion\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\
    \x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-aft\
    er\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-encodi\
    ng\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\
    \x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\
    \x00\x00\x06status\x00\x00\x00\x06200\x20OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\
    \x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\
    \x00\x00\x06origin100101201202205206300302303304305306307402405406407408409410411412413414415416\
    417502504505203\x20Non-Authoritative\x20Information204\x20No\x20Content301\x20Moved\x20Permanent\
    ly400\x20Bad\x20Request401\x20Unauthorized403\x20Forbidden404\x20Not\x20Found500\x20Internal\x20\
    Server\x20Error501\x20Not\x20Implemented503\x20Service\x20UnavailableJan\x20Feb\x20Mar\x20Apr\
    \x20May\x20Jun\x20Jul\x20Aug\x20Sept\x20Oct\x20Nov\x20Dec\x2000:00:00\x20Mon,\x20Tue,\x20Wed,\
    \x20Thu,\x20Fri,\x20Sat,\x20Sun,\x20GMTchunked,text/html,image/png,image/jpg,image/gif,applicati\
    on/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchch\
    arset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// A stream the client opened.
pub struct Incoming {
    pub id: u32,
    /// Header names lowercased; a value holding several (NUL-separated) is kept whole.
    pub headers: Vec<(String, String)>,
    /// What the client sends on the stream; ends at its FIN, a reset or the connection's end.
    pub data: Inbox,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }
}

enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Reset(u32, u32),
    Ping(u32),
    GoAway,
}

/// Sends frames on the connection; cheap to clone. Every call reports whether the connection
/// still takes frames.
#[derive(Clone)]
pub struct Writer(mpsc::Sender<Out>);

impl Writer {
    pub async fn data(&self, id: u32, data: Bytes) -> bool {
        self.0.send(Out::Data(id, data, false)).await.is_ok()
    }

    /// Closes the server's side of a stream.
    pub async fn finish(&self, id: u32) -> bool {
        self.0.send(Out::Data(id, Bytes::new(), true)).await.is_ok()
    }

    pub async fn reset(&self, id: u32, status: u32) -> bool {
        self.0.send(Out::Reset(id, status)).await.is_ok()
    }

    /// Resolves once the connection takes no more frames (closed, broken, or gone away).
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// One SPDY connection, server side.
pub struct Session {
    pub writer: Writer,
    reader: tokio::task::JoinHandle<()>,
    written: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Serves SPDY on `io`, whose HTTP upgrade is done: the session, and the streams as the
    /// client opens them (ending with the connection).
    pub fn start<S: AsyncRead + AsyncWrite + Send + 'static>(io: S) -> (Session, mpsc::Receiver<Incoming>) {
        let (r, w) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, incoming) = mpsc::channel(16);
        let writer = Writer(out_tx);
        let written = tokio::spawn(async move {
            if let Err(e) = write_loop(w, out_rx).await {
                tracing::debug!("streaming connection: write: {e}");
            }
        });
        let reader_writer = writer.clone();
        let reader = tokio::spawn(async move {
            if let Err(e) = read_loop(r, &reader_writer, in_tx).await {
                tracing::debug!("streaming connection: {e}");
            }
            // Whatever the reason, the peer is gone: stop writing too.
            let _ = reader_writer.0.send(Out::GoAway).await;
        });
        (Session { writer, reader, written }, incoming)
    }

    /// Says GOAWAY, sends what is queued, closes the write side and gives the client a moment
    /// to close its own before the connection is dropped.
    pub async fn close(self) {
        let Session { writer, reader, written } = self;
        let _ = writer.0.send(Out::GoAway).await;
        drop(writer);
        // A client that stopped reading cannot hold the connection open.
        let stop = written.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(10), written).await.is_err() {
            stop.abort();
        }
        let abort = reader.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), reader).await.is_err() {
            abort.abort();
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    writer: &Writer,
    incoming: mpsc::Sender<Incoming>,
) -> Result<(), String> {
    let mut inflate = Inflate::default();
    let mut streams: HashMap<u32, super::inbox::Sender> = HashMap::new();
    let mut last_id = 0u32;
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read: {e}")),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if head[0] & 0x80 == 0 {
            let id = be32(&head) & 0x7fff_ffff;
            if len > MAX_DATA_IN {
                return Err(format!("a DATA frame of {len} bytes (at most {MAX_DATA_IN})"));
            }
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await.map_err(|e| format!("read: {e}"))?;
            if let Some(tx) = streams.get(&id).filter(|_| !payload.is_empty()) {
                match tx.offer(Bytes::from(payload)) {
                    Ok(()) => {}
                    Err(Refused::Closed) => {
                        streams.remove(&id);
                    }
                    Err(Refused::Full) => {
                        // Its consumer does not keep up (a process that does not read its
                        // stdin): the stream is reset, the connection goes on.
                        streams.remove(&id);
                        writer.reset(id, FLOW_CONTROL_ERROR).await;
                        continue;
                    }
                }
            }
            if flags & FLAG_FIN != 0 {
                streams.remove(&id);
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != VERSION {
            return Err(format!("SPDY version {version} (husk speaks 3)"));
        }
        if len > MAX_CONTROL_FRAME {
            return Err(format!("a control frame of {len} bytes (at most {MAX_CONTROL_FRAME})"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(|e| format!("read: {e}"))?;
        let short = |need: usize| match payload.len() < need {
            true => Err(format!("control frame {kind} of {len} bytes")),
            false => Ok(()),
        };
        match kind {
            SYN_STREAM => {
                short(10)?;
                let id = be32(&payload) & 0x7fff_ffff;
                // The header block goes through the shared context even if the stream is refused.
                let headers = parse_block(&inflate.block(&payload[10..])?)?;
                if id == 0 || id % 2 == 0 || id <= last_id {
                    writer.reset(id, PROTOCOL_ERROR).await;
                    continue;
                }
                last_id = id;
                let (tx, data) = inbox();
                writer.0.send(Out::Reply(id)).await.map_err(|_| "the connection closed".to_string())?;
                if flags & FLAG_FIN == 0 {
                    streams.insert(id, tx);
                }
                if incoming.send(Incoming { id, headers, data }).await.is_err() {
                    streams.remove(&id);
                    writer.reset(id, REFUSED_STREAM).await;
                }
            }
            SYN_REPLY | HEADERS => {
                short(4)?;
                inflate.block(&payload[4..])?;
                if flags & FLAG_FIN != 0 {
                    streams.remove(&(be32(&payload) & 0x7fff_ffff));
                }
            }
            RST_STREAM => {
                short(4)?;
                streams.remove(&(be32(&payload) & 0x7fff_ffff));
            }
            PING => {
                short(4)?;
                let _ = writer.0.send(Out::Ping(be32(&payload))).await;
            }
            GOAWAY => return Ok(()),
            // SETTINGS, WINDOW_UPDATE and unknown types carry nothing husk acts on.
            _ => {}
        }
    }
}

/// The inbound header context: one zlib stream for the connection.
struct Inflate(Decompress);

impl Default for Inflate {
    fn default() -> Self {
        Inflate(Decompress::new(true))
    }
}

impl Inflate {
    fn block(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(1024);
        let mut used = 0usize;
        loop {
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(format!("a header block over {MAX_HEADER_BLOCK} bytes"));
            }
            out.reserve(4096);
            let (in_before, out_before) = (self.0.total_in(), out.len());
            match self.0.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(|e| format!("header block: {e}"))?;
                }
                Err(e) => return Err(format!("header block: {e}")),
            }
            used += (self.0.total_in() - in_before) as usize;
            let progressed = self.0.total_in() != in_before || out.len() != out_before;
            if used == input.len() && (out.len() < out.capacity() || !progressed) {
                return Ok(out);
            }
            if !progressed {
                return Err("header block: truncated zlib data".into());
            }
        }
    }
}

fn parse_block(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let bad = || "header block: malformed".to_string();
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let count = be32(take(4)?) as usize;
    if count > MAX_HEADER_PAIRS {
        return Err(format!("header block: {count} headers (at most {MAX_HEADER_PAIRS})"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = be32(take(4)?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = be32(take(4)?) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

async fn write_loop<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Out>) -> std::io::Result<()> {
    let mut w = tokio::io::BufWriter::new(w);
    let mut deflate = Compress::new(Compression::default(), true);
    deflate.set_dictionary(DICTIONARY).map_err(std::io::Error::other)?;
    while let Some(out) = rx.recv().await {
        match out {
            Out::Reply(id) => {
                // An empty header block: the count, 0.
                let block = compress(&mut deflate, &0u32.to_be_bytes())?;
                control(&mut w, SYN_REPLY, 0, &[&id.to_be_bytes(), &block]).await?;
            }
            Out::Data(id, data, fin) => {
                let mut chunks = data.chunks(MAX_DATA_FRAME).peekable();
                if chunks.peek().is_none() {
                    frame_data(&mut w, id, &[], fin).await?;
                }
                while let Some(chunk) = chunks.next() {
                    frame_data(&mut w, id, chunk, fin && chunks.peek().is_none()).await?;
                }
            }
            Out::Reset(id, status) => {
                control(&mut w, RST_STREAM, 0, &[&id.to_be_bytes(), &status.to_be_bytes()]).await?;
            }
            Out::Ping(id) => control(&mut w, PING, 0, &[&id.to_be_bytes()]).await?,
            Out::GoAway => {
                // Last good stream 0 (the server opened none), status OK.
                control(&mut w, GOAWAY, 0, &[&0u32.to_be_bytes(), &0u32.to_be_bytes()]).await?;
                w.flush().await?;
                return w.shutdown().await;
            }
        }
        if rx.is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

fn compress(z: &mut Compress, block: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    let mut used = 0usize;
    loop {
        out.reserve(256);
        let before = z.total_in();
        z.compress_vec(&block[used..], &mut out, FlushCompress::Sync).map_err(std::io::Error::other)?;
        used += (z.total_in() - before) as usize;
        if used == block.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

async fn control<W: AsyncWrite + Unpin>(w: &mut W, kind: u16, flags: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() as u32;
    let mut head = [0u8; 8];
    head[..2].copy_from_slice(&(0x8000 | VERSION).to_be_bytes());
    head[2..4].copy_from_slice(&kind.to_be_bytes());
    head[4..].copy_from_slice(&(u32::from(flags) << 24 | len).to_be_bytes());
    w.write_all(&head).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

async fn frame_data<W: AsyncWrite + Unpin>(w: &mut W, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    head[4..].copy_from_slice(&(u32::from(if fin { FLAG_FIN } else { 0 }) << 24 | data.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(data).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_be_bytes().to_vec();
        for (n, v) in pairs {
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n.as_bytes());
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        b
    }

    fn deflater() -> Compress {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        z
    }

    fn syn_stream(z: &mut Compress, id: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let compressed = compress(z, &block(pairs)).unwrap();
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&compressed);
        let mut f = vec![0x80, 3, 0, SYN_STREAM as u8];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[..]);
        f[4] = 0;
        f.extend_from_slice(&payload);
        f
    }

    async fn read_all(input: Vec<u8>) -> (Result<(), String>, Vec<Incoming>) {
        let (tx, mut rx) = mpsc::channel(64);
        let (in_tx, mut in_rx) = mpsc::channel(64);
        let result = read_loop(&input[..], &Writer(tx), in_tx).await;
        while rx.try_recv().is_ok() {}
        let mut streams = Vec::new();
        while let Ok(s) = in_rx.try_recv() {
            streams.push(s);
        }
        (result, streams)
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(
            DICTIONARY.starts_with(b"\x00\x00\x00\x07options")
                && DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0.")
        );
    }

    #[tokio::test]
    async fn streams_share_one_header_context() {
        let mut z = deflater();
        let mut input = syn_stream(&mut z, 1, &[("streamtype", "error")]);
        input.extend(syn_stream(&mut z, 3, &[("streamtype", "stdout"), ("X-Extra", "a\0b")]));
        // Data for stream 3, then its FIN.
        input.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 3, FLAG_FIN, 0, 0, 0]);
        let (result, mut streams) = read_all(input).await;
        result.unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!((streams[0].id, streams[0].header("streamtype")), (1, Some("error")));
        assert_eq!(streams[1].header("streamtype"), Some("stdout"));
        assert_eq!(streams[1].header("x-extra"), Some("a"), "names lowercased, the first of several values");
        assert_eq!(streams[1].data.recv().await.as_deref(), Some(&b"hi"[..]));
        assert_eq!(streams[1].data.recv().await, None, "FIN ends the stream");
    }

    #[tokio::test]
    async fn hostile_frames_end_the_connection() {
        // Another SPDY version.
        let (r, _) = read_all(vec![0x80, 2, 0, 1, 0, 0, 0, 0]).await;
        assert!(r.unwrap_err().contains("version 2"));
        // A control frame over the limit (not read into memory).
        let (r, _) = read_all(vec![0x80, 3, 0, 1, 0, 0x10, 0, 0]).await;
        assert!(r.unwrap_err().contains("control frame of 1048576 bytes"));
        // A header block that claims a million pairs.
        let mut z = deflater();
        let compressed = compress(&mut z, &1_000_000u32.to_be_bytes()).unwrap();
        let mut f = vec![0x80, 3, 0, 1, 0, 0, 0, (10 + compressed.len()) as u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        f.extend_from_slice(&compressed);
        let (r, _) = read_all(f).await;
        assert!(r.unwrap_err().contains("1000000 headers"));
        // A block that inflates past 64 KiB (a zlib bomb in a small frame).
        let mut z = deflater();
        let mut bomb = 1u32.to_be_bytes().to_vec();
        bomb.extend_from_slice(&(200_000u32).to_be_bytes());
        bomb.extend(std::iter::repeat_n(b'a', 200_000));
        let compressed = compress(&mut z, &bomb).unwrap();
        assert!(compressed.len() < 2000);
        let mut f = vec![0x80, 3, 0, 1, 0];
        f.extend_from_slice(&((10 + compressed.len()) as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&compressed);
        let (r, _) = read_all(f).await;
        assert!(r.unwrap_err().contains("over 65536 bytes"));
        // Garbage where zlib data belongs.
        let mut f = vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        f.extend_from_slice(b"junk");
        let (r, streams) = read_all(f).await;
        assert!(r.unwrap_err().contains("header block"));
        assert!(streams.is_empty());
    }

    #[tokio::test]
    async fn stream_ids_must_be_new_and_odd() {
        let mut z = deflater();
        let mut input = syn_stream(&mut z, 2, &[("streamtype", "error")]);
        input.extend(syn_stream(&mut z, 5, &[("streamtype", "stdin")]));
        input.extend(syn_stream(&mut z, 3, &[("streamtype", "stdout")]));
        let (result, streams) = read_all(input).await;
        result.unwrap();
        assert_eq!(streams.iter().map(|s| s.id).collect::<Vec<_>>(), vec![5]);
    }
}
