//! Accepting gRPC clients that send a unix socket's path as the HTTP/2 `:authority`.
//!
//! Go gRPC clients of cri-tools up to v1.30 (and kubelets of that era) dial a unix socket and
//! send its path, `/run/husk/cri.sock`, as `:authority`. That is not a valid authority, and the
//! h2 server under tonic refuses the request (RST_STREAM PROTOCOL_ERROR) before any handler
//! runs; containerd (Go) and CRI-O accept it. husk mends the request on its way in: the bytes
//! a client sends are read through [`AuthorityFix`], which follows the HTTP/2 frames, decodes
//! every header block with the client's HPACK state, and replaces an invalid `:authority` by
//! `localhost` (the authority Go clients send for unix sockets since).
//!
//! HPACK is stateful: the client's encoder and the server's decoder share a dynamic table. As
//! long as nothing needed mending, the client's bytes pass through untouched, so both tables
//! stay equal. From the first mended block on, every header block of the connection is
//! re-encoded as literals that neither use nor change the server's table (RFC 7541 §6.2.2), so
//! what the server decodes never depends on the entries the client indexed. Anything that is
//! not HTTP/2 as expected (no connection preface, a malformed frame or header block, a block
//! over [`MAX_BLOCK`]) turns the fix off for the connection and is passed through as it came,
//! for the server to refuse with its own error.
use bytes::{BufMut, BytesMut};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE of husk's server: the default, which it never raises.
const MAX_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE of husk's server (the default): the largest dynamic table a
/// client may ask for in a size update.
const TABLE_SIZE: usize = 4_096;
/// The largest header block (all its frames) that is decoded; a larger one turns the fix off.
pub const MAX_BLOCK: usize = 256 * 1024;
/// What replaces an authority the server would refuse.
const REPLACEMENT: &[u8] = b"localhost";

enum State {
    /// Reading the connection preface; nothing is emitted until it is complete.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside a frame that is not part of a header block: its `usize` remaining bytes pass.
    Forward(usize),
    /// Not HTTP/2 as expected: everything passes untouched.
    Off,
}

/// A header block being gathered: its HEADERS frame, then any CONTINUATION frames.
struct Block {
    stream: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The HEADERS frame's priority fields, when it had them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, to pass on when nothing needs mending.
    raw: Vec<u8>,
}

/// A frame the fix gave up on: whether it is already held in the open block (else it is to be
/// put back in front of the input), so that it passes exactly once.
struct Held(bool);

/// The client-to-server half of a connection, mended (see the module documentation).
pub struct AuthorityFix {
    state: State,
    input: BytesMut,
    output: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    /// A block was re-encoded: every later block is too.
    reencoding: bool,
    block: Option<Block>,
    /// Header blocks whose `:authority` was replaced (for the log and tests).
    pub mended: u64,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityFix {
            state: State::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder,
            reencoding: false,
            block: None,
            mended: 0,
        }
    }
}

/// Whether the h2 server accepts `value` as an authority.
fn valid_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn literal(out: &mut Vec<u8>, s: &[u8]) {
    loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out).expect("writing to a Vec");
    out.extend_from_slice(s);
}

impl AuthorityFix {
    /// Takes bytes the client sent.
    pub fn feed(&mut self, data: &[u8]) {
        if matches!(self.state, State::Off) {
            self.output.extend_from_slice(data);
            return;
        }
        self.input.extend_from_slice(data);
        self.process();
    }

    /// The client closed its side: whatever is held back goes to the server as it came.
    pub fn finish(&mut self) {
        self.turn_off();
    }

    /// Bytes ready for the server.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Passes everything held back, as it came, and stops looking at the connection.
    fn turn_off(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        let input = self.input.split();
        self.output.extend_from_slice(&input);
        self.state = State::Off;
    }

    fn process(&mut self) {
        loop {
            match self.state {
                State::Off => return,
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        return self.turn_off();
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&preface);
                    self.state = State::Frame;
                }
                State::Forward(0) => self.state = State::Frame,
                State::Forward(left) => {
                    if self.input.is_empty() {
                        return;
                    }
                    let n = left.min(self.input.len());
                    let bytes = self.input.split_to(n);
                    self.output.extend_from_slice(&bytes);
                    self.state = State::Forward(left - n);
                }
                State::Frame => {
                    if self.input.len() < HEADER_LEN {
                        return;
                    }
                    let h = &self.input[..HEADER_LEN];
                    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.is_some() {
                            // Only CONTINUATION may follow an unfinished block (RFC 9113 §6.10).
                            return self.turn_off();
                        }
                        let header = self.input.split_to(HEADER_LEN);
                        self.output.extend_from_slice(&header);
                        self.state = State::Forward(len);
                        continue;
                    }
                    if len > MAX_FRAME {
                        return self.turn_off();
                    }
                    if self.input.len() < HEADER_LEN + len {
                        return;
                    }
                    let frame = self.input.split_to(HEADER_LEN + len);
                    if let Err(Held(held)) = self.header_frame(&frame, kind, flags, stream) {
                        if !held {
                            // Put the frame back in front, so that it passes too.
                            let rest = std::mem::replace(&mut self.input, frame);
                            self.input.extend_from_slice(&rest);
                        }
                        return self.turn_off();
                    }
                }
            }
        }
    }

    /// Takes a HEADERS or CONTINUATION frame; an error when it is not one the fix understands.
    fn header_frame(&mut self, frame: &[u8], kind: u8, flags: u8, stream: u32) -> Result<(), Held> {
        let mut payload = &frame[HEADER_LEN..];
        if kind == HEADERS {
            if self.block.is_some() || stream == 0 {
                return Err(Held(false));
            }
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some((&p, rest)) = payload.split_first() else { return Err(Held(false)) };
                pad = p as usize;
                payload = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(Held(false));
                }
                priority = Some(payload[..5].try_into().expect("5 bytes"));
                payload = &payload[5..];
            }
            if pad > payload.len() {
                return Err(Held(false));
            }
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: payload[..payload.len() - pad].to_vec(),
                raw: frame.to_vec(),
            });
        } else {
            let Some(block) = self.block.as_mut().filter(|b| b.stream == stream) else { return Err(Held(false)) };
            block.fragment.extend_from_slice(payload);
            block.raw.extend_from_slice(frame);
        }
        if self.block.as_ref().is_some_and(|b| b.raw.len() > MAX_BLOCK) {
            return Err(Held(true));
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().expect("a block is open");
        let fields = match self.decoder.decode(&block.fragment) {
            Ok(fields) => fields,
            Err(e) => {
                tracing::debug!(?e, "an HPACK block the fix cannot decode; passed as it came");
                self.block = Some(block);
                return Err(Held(true));
            }
        };
        let invalid = fields.iter().any(|(n, v)| n == b":authority" && !valid_authority(v));
        if !invalid && !self.reencoding {
            self.output.extend_from_slice(&block.raw);
            return Ok(());
        }
        if invalid {
            self.mended += 1;
            if self.mended == 1 {
                let authority = fields.iter().find(|(n, _)| n == b":authority").map(|(_, v)| v.clone());
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&authority.unwrap_or_default()),
                    "a client sent an invalid :authority (a unix socket path?); serving it as `localhost`"
                );
            }
        }
        self.reencoding = true;
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &fields {
            let value = if name == b":authority" && !valid_authority(value) { REPLACEMENT } else { value };
            // Literal header field without indexing, new name (RFC 7541 §6.2.2).
            encoded.push(0);
            literal(&mut encoded, name);
            literal(&mut encoded, value);
        }
        self.emit(&block, &encoded);
        Ok(())
    }

    /// Writes a re-encoded block as a HEADERS frame and as many CONTINUATION frames as needed.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let first_room = MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let len = first.len() + if block.priority.is_some() { 5 } else { 0 };
        frame_header(&mut self.output, len, HEADERS, flags, block.stream);
        if let Some(p) = &block.priority {
            self.output.extend_from_slice(p);
        }
        self.output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if after.is_empty() { END_HEADERS } else { 0 };
            frame_header(&mut self.output, chunk.len(), CONTINUATION, flags, block.stream);
            self.output.extend_from_slice(chunk);
            rest = after;
        }
    }

    /// Moves up to `buf.len()` ready bytes into `buf`.
    #[cfg(test)]
    pub fn read_into(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.output.len());
        buf[..n].copy_from_slice(&self.output[..n]);
        bytes::Buf::advance(&mut self.output, n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Feeds `bytes` `chunk` at a time and returns what reaches the server.
    fn run(fix: &mut AuthorityFix, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            fix.feed(piece);
            let mut buf = [0u8; 7];
            loop {
                let n = fix.read_into(&mut buf);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        out
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// The server's view: the frames of `bytes` (after the preface) as (type, flags, stream,
    /// decoded header block, payload of other frames).
    fn server_view(bytes: &[u8]) -> Vec<(u8, u8, u32, Fields, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            let mut payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            assert!(len <= MAX_FRAME);
            if kind == HEADERS || kind == CONTINUATION {
                if flags & PRIORITY != 0 {
                    payload = &payload[5..];
                }
                assert_eq!(flags & PADDED, 0);
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let fields = decoder.decode(&block).unwrap();
                    block.clear();
                    frames.push((kind, flags, stream, fields, Vec::new()));
                }
            } else {
                frames.push((kind, flags, stream, Vec::new(), payload.to_vec()));
            }
        }
        frames
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.29.1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'static>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn mended(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(n, v)| {
                let v = if n == b":authority" && !valid_authority(v) { REPLACEMENT.to_vec() } else { v.clone() };
                (n.clone(), v)
            })
            .collect()
    }

    #[test]
    fn what_the_server_refuses() {
        for ok in ["localhost", "localhost:10250", "127.0.0.1:8080", "[::1]:1"] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        // grpc-go's unix socket authorities: the path (≤ 1.5x), its percent-encoding (1.6x).
        for bad in ["/run/husk/cri.sock", "%2Frun%2Fhusk%2Fcri.sock", "unix:///run/x.sock", "a b"] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn valid_requests_pass_byte_for_byte() {
        let mut enc = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        for stream in [1, 3] {
            wire.extend(frame(HEADERS, END_HEADERS, stream, &encode(&mut enc, &request(b"localhost"))));
            wire.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        for chunk in [1, 5, 4096] {
            let mut fix = AuthorityFix::default();
            assert_eq!(run(&mut fix, &wire, chunk), wire);
            assert_eq!(fix.mended, 0);
        }
    }

    #[test]
    fn a_socket_path_authority_is_mended_in_every_block_after() {
        // The client indexes its headers: the second request refers to the first's entries,
        // the third (in a HEADERS and a CONTINUATION, padded, with priority) adds new ones.
        let mut enc = loona_hpack::Encoder::new();
        let path = b"/run/husk/cri.sock";
        let requests = [request(path), request(path), {
            let mut r = request(path);
            r.push((b"x-big".to_vec(), vec![b'a'; 20_000]));
            r
        }];
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        let first = encode(&mut enc, &requests[0]);
        wire.extend(frame(HEADERS, END_HEADERS, 1, &first));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &encode(&mut enc, &requests[1])));
        let third = encode(&mut enc, &requests[2]);
        let (a, b) = third.split_at(100);
        let mut padded = vec![3u8];
        padded.extend([0x80, 0, 0, 1, 16]);
        padded.extend_from_slice(a);
        padded.extend([0, 0, 0]);
        wire.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &padded));
        let (b1, b2) = b.split_at(b.len() / 2);
        wire.extend(frame(CONTINUATION, 0, 5, b1));
        wire.extend(frame(CONTINUATION, END_HEADERS, 5, b2));
        wire.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));

        for chunk in [1, 3, 9, 16_384, 1 << 20] {
            let mut fix = AuthorityFix::default();
            let out = run(&mut fix, &wire, chunk);
            assert_eq!(fix.mended, 3);
            let frames = server_view(&out);
            let blocks: Vec<_> = frames.iter().filter(|f| f.0 == HEADERS || f.0 == CONTINUATION).collect();
            assert_eq!(blocks.len(), 3, "chunk {chunk}");
            for (got, want) in blocks.iter().zip(&requests) {
                assert_eq!(got.3, mended(want), "chunk {chunk}");
            }
            // Streams, END_STREAM and the other frames are kept.
            let kinds: Vec<_> = frames.iter().map(|f| (f.0, f.2, f.1 & END_STREAM)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, 1, 0),
                    (0x0, 1, END_STREAM),
                    (HEADERS, 3, END_STREAM),
                    (CONTINUATION, 5, 0),
                    (0x8, 0, 0)
                ]
            );
        }
    }

    #[test]
    fn a_valid_block_after_a_mended_one_is_reencoded() {
        // The client indexed `x-client: 1` in the mended block, which the server's table never
        // got: a later block that refers to it must not reach the server as it came.
        let mut enc = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        let mut first = request(b"/x.sock");
        first.push((b"x-client".to_vec(), b"1".to_vec()));
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &encode(&mut enc, &first)));
        let mut second = request(b"localhost");
        second.push((b"x-client".to_vec(), b"1".to_vec()));
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &encode(&mut enc, &second)));
        let mut fix = AuthorityFix::default();
        let frames = server_view(&run(&mut fix, &wire, 2));
        assert_eq!(frames[1].3, second);
        assert_eq!(fix.mended, 1);
    }

    #[test]
    fn what_is_not_http2_as_expected_passes_untouched() {
        let http1 = b"GET / HTTP/1.1\r\nHost: /x.sock\r\n\r\n".to_vec();
        assert_eq!(run(&mut AuthorityFix::default(), &http1, 3), http1);

        // A malformed header block, a CONTINUATION without HEADERS, an oversized frame.
        for bad in [
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]),
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            frame(HEADERS, END_HEADERS, 1, &vec![0x82; MAX_FRAME + 1]),
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),
        ] {
            let mut wire = PREFACE.to_vec();
            wire.extend(&bad);
            wire.extend(frame(0x0, END_STREAM, 1, b"data"));
            let mut fix = AuthorityFix::default();
            let mut out = run(&mut fix, &wire, 4);
            fix.finish();
            let mut buf = vec![0; wire.len()];
            let n = fix.read_into(&mut buf);
            out.extend_from_slice(&buf[..n]);
            assert_eq!(out, wire);
        }

        // A truncated frame at the end of the connection reaches the server as it came.
        let mut wire = PREFACE.to_vec();
        wire.extend(&frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86])[..10]);
        let mut fix = AuthorityFix::default();
        let mut out = run(&mut fix, &wire, 100);
        fix.finish();
        let mut buf = vec![0; 64];
        let n = fix.read_into(&mut buf);
        out.extend_from_slice(&buf[..n]);
        assert_eq!(out, wire);
    }
}
