//! A Go gRPC client of cri-tools ≤ v1.30 sends the unix socket's path as the HTTP/2
//! `:authority`, which the h2 server refuses unless husk mends it. This client speaks HTTP/2
//! by hand, byte for byte as grpc-go does: its header blocks index `:authority` (and the other
//! headers) in its HPACK table, and its second request refers to those entries by index.
mod common;

use std::path::Path;
use std::time::Duration;

#[path = "common/agent.rs"]
mod fixture;

use fixture::Agent;
use husk_proto::cri;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal with incremental indexing of the static table's name `index` (RFC 7541 §6.2.1).
fn indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    loona_hpack::encoder::encode_integer_into(index, 6, 0x40, out).unwrap();
    loona_hpack::encoder::encode_integer_into(value.len(), 7, 0, out).unwrap();
    out.extend_from_slice(value);
}

/// grpc-go's first request: every header not fully in the static table is indexed.
/// Static table: 3 `:method: POST`, 6 `:scheme: http`, 4 `:path`, 1 `:authority`,
/// 31 `content-type`. After it, the client's table holds (newest first) 62 `te`,
/// 63 `content-type`, 64 `:authority`, 65 `:path`.
fn first_block(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    indexed_name(&mut b, 4, path.as_bytes());
    indexed_name(&mut b, 1, authority.as_bytes());
    indexed_name(&mut b, 31, b"application/grpc");
    b.push(0x40);
    for s in [&b"te"[..], b"trailers"] {
        b.push(s.len() as u8);
        b.extend_from_slice(s);
    }
    b
}

/// The same request again, as indices into the client's table.
fn second_block() -> Vec<u8> {
    vec![0x83, 0x86, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62]
}

/// One gRPC message in a DATA frame that ends the stream.
fn grpc_data(stream: u32, message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut payload = vec![0];
    payload.extend((body.len() as u32).to_be_bytes());
    payload.extend(body);
    frame(DATA, END_STREAM, stream, &payload)
}

/// What came back on one stream: the header fields of each block, and the DATA bytes.
#[derive(Default)]
struct Reply {
    headers: Vec<Vec<(String, String)>>,
    data: Vec<u8>,
}

/// Reads frames until every one of `streams` has ended, acknowledging the server's SETTINGS
/// and PINGs; the replies in the order of `streams`.
async fn replies(conn: &mut UnixStream, decoder: &mut loona_hpack::Decoder<'static>, streams: &[u32]) -> Vec<Reply> {
    let mut out: Vec<Reply> = streams.iter().map(|_| Reply::default()).collect();
    let mut open = streams.len();
    while open > 0 {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut head))
            .await
            .expect("the agent answers within 30 s")
            .expect("the agent keeps the connection open");
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        let reply = streams.iter().position(|s| *s == id).map(|i| &mut out[i]);
        match kind {
            SETTINGS if flags & 1 == 0 => conn.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap(),
            PING if flags & 1 == 0 => conn.write_all(&frame(PING, 1, 0, &payload)).await.unwrap(),
            RST_STREAM => panic!("the agent reset stream {id}: error code {:?}", &payload[..]),
            GOAWAY => panic!("the agent closed the connection: GOAWAY {:?}", &payload[..]),
            HEADERS => {
                assert_eq!(flags & END_HEADERS, END_HEADERS, "the test reads single-frame header blocks");
                // Every block goes through the decoder, to keep its table in step.
                let fields = decoder.decode(&payload).expect("the agent's header block decodes");
                let fields = fields
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect();
                if let Some(r) = reply {
                    r.headers.push(fields);
                    open -= usize::from(flags & END_STREAM != 0);
                }
            }
            DATA => {
                if let Some(r) = reply {
                    r.data.extend(payload);
                    open -= usize::from(flags & END_STREAM != 0);
                }
            }
            _ => {}
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

async fn connect(socket: &Path) -> UnixStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the CRI socket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    UnixStream::connect(socket).await.unwrap()
}

#[tokio::test]
async fn a_go_client_sending_the_socket_path_as_authority_is_served() {
    require!(false);
    let agent = Agent::start("cri-authority");
    let socket = agent.path("cri.sock");
    let authority = socket.to_str().unwrap().to_string();
    let mut conn = connect(&socket).await;
    let mut decoder = loona_hpack::Decoder::new();

    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&hello).await.unwrap();

    let version = cri::VersionRequest { version: "v1".into() };
    let mut request = frame(HEADERS, END_HEADERS, 1, &first_block("/runtime.v1.RuntimeService/Version", &authority));
    request.extend(grpc_data(1, &version));
    conn.write_all(&request).await.unwrap();
    // The second request on the same connection refers to the first's table entries.
    let mut again = frame(HEADERS, END_HEADERS, 3, &second_block());
    again.extend(grpc_data(3, &version));
    conn.write_all(&again).await.unwrap();

    for (r, stream) in replies(&mut conn, &mut decoder, &[1, 3]).await.into_iter().zip([1, 3]) {
        assert_eq!(field(&r.headers[0], ":status"), Some("200"), "stream {stream}: {:?}", r.headers);
        let trailers = r.headers.last().unwrap();
        assert_eq!(field(trailers, "grpc-status"), Some("0"), "stream {stream}: {trailers:?}");
        assert!(r.data.len() > 5 && r.data[0] == 0, "one uncompressed gRPC message: {:?}", r.data);
        let v = cri::VersionResponse::decode(&r.data[5..]).unwrap();
        assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("husk", "v1"), "stream {stream}");
    }

    // The same holds on the husk API socket, for Go clients of husk's own API.
    let mut conn = connect(&agent.path("husk.sock")).await;
    let mut decoder = loona_hpack::Decoder::new();
    conn.write_all(&hello).await.unwrap();
    let mut request = frame(
        HEADERS,
        END_HEADERS,
        1,
        &first_block("/husk.agent.v1.Containerizer/Version", agent.path("husk.sock").to_str().unwrap()),
    );
    request.extend(grpc_data(1, &husk_proto::agent::v1::VersionRequest {}));
    conn.write_all(&request).await.unwrap();
    let r = replies(&mut conn, &mut decoder, &[1]).await.remove(0);
    assert_eq!(field(r.headers.last().unwrap(), "grpc-status"), Some("0"), "{:?}", r.headers);
}
