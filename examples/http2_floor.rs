//! A measuring instrument, not a server: what a put costs when the HTTP/2 layer (h2, hyper, http)
//! is taken away, so that the one large lever left on the put path can be weighed before anyone
//! builds it (docs/performance.md, "put-64c, session 7").
//!
//! It starts the real [`Server`] (Raft, WAL, MVCC, the waiter: everything behind
//! `Server::put`) and serves the client URL with a minimal HTTP/2 connection loop that answers
//! *every* stream as a KV `Put`: the request's DATA frames are collected until END_STREAM, the
//! gRPC message in them decoded, `Server::put` awaited, and the reply written as one HEADERS frame
//! (`:status 200`, `content-type`), one DATA frame and a `grpc-status: 0` trailer, with all the
//! replies that are ready leaving in one socket write. SETTINGS and PING are acknowledged.
//!
//! What it leaves out, which a real server cannot: HPACK decoding (request headers are skipped, so
//! it cannot route, read an auth token or a `grpc-timeout`), send-side flow control, stream states
//! beyond "open until END_STREAM", RST_STREAM and GOAWAY handling, limits, HTTP/1.1, and every
//! other service. Its figures are therefore a floor for the HTTP/2 layer's cost, not a design.
//! Only etcd's `benchmark put` and `etcdctl put` should be pointed at it.
//!
//! The same loop on h2's own frame codec (`h2::Codec`, which decodes HPACK into header maps) was
//! measured as well and is described in docs/performance.md; it is not kept here, because that API
//! sits behind h2's `unstable` feature, which has no semver promise.
//!
//! Use: `cargo build --release --example http2_floor`, then `bench-vs-etcd` with one build as A
//! (`--etcd target/release/mini-etcd`) and this as B (`--b-cmd
//! "target/release/examples/http2_floor --data-dir {data_dir} --listen-client-urls
//! http://127.0.0.1:{port} ..."`), and again with the roles swapped. It takes mini-etcd's flags.

use std::collections::HashMap;
use std::process::ExitCode;

use bytes::{Buf, BufMut, BytesMut};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use mini_etcd::config::{Cli, Config};
use mini_etcd::proto::etcdserverpb::{PutRequest, PutResponse};
use mini_etcd::server::Server;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types and flags used here (RFC 9113, section 6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// The receive window granted to the client, per stream and for the connection.
const WINDOW: u32 = 1 << 30;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_args(cli.server) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("http2_floor: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http2_floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http2_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> mini_etcd::Result<()> {
    let url = config
        .listen_client_urls
        .first()
        .cloned()
        .ok_or_else(|| mini_etcd::Error::InvalidArgument("no --listen-client-urls".into()))?;
    let addr = Config::socket_addr(&url)?;
    let server = Server::start(config).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, server).await;
        });
    }
}

/// Appends one frame to `out`.
fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

/// Serves one connection until the client closes it or sends GOAWAY.
async fn connection(mut tcp: TcpStream, server: Server) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) for streams, then the connection's window.
    let mut settings = Vec::new();
    settings.extend_from_slice(&4u16.to_be_bytes());
    settings.extend_from_slice(&WINDOW.to_be_bytes());
    frame(&mut out, SETTINGS, 0, 0, &settings);
    frame(
        &mut out,
        WINDOW_UPDATE,
        0,
        0,
        &(WINDOW - 65_535).to_be_bytes(),
    );
    tcp.write_all(&out).await?;
    out.clear();

    let mut preface_seen = false;
    let mut bodies: HashMap<u32, BytesMut> = HashMap::new();
    let mut puts = FuturesUnordered::new();
    let mut received: u32 = 0;
    loop {
        tokio::select! {
            read = tcp.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
                if !preface_seen {
                    if input.len() < PREFACE.len() {
                        continue;
                    }
                    input.advance(PREFACE.len());
                    preface_seen = true;
                }
                while input.len() >= 9 {
                    let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
                    if input.len() < 9 + len {
                        break;
                    }
                    let (kind, flags) = (input[3], input[4]);
                    let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    input.advance(9);
                    let mut payload = input.split_to(len);
                    match kind {
                        DATA => {
                            received = received.saturating_add(len as u32);
                            if flags & PADDED != 0 && !payload.is_empty() {
                                let pad = payload[0] as usize;
                                payload.advance(1);
                                payload.truncate(payload.len().saturating_sub(pad));
                            }
                            bodies.entry(stream).or_default().extend_from_slice(&payload);
                            if flags & END_STREAM != 0 {
                                let body = bodies.remove(&stream).unwrap_or_default();
                                let server = server.clone();
                                puts.push(async move {
                                    let req = PutRequest::decode(body.get(5..).unwrap_or(&[]))
                                        .unwrap_or_default();
                                    (stream, server.put(req).await)
                                });
                            }
                        }
                        SETTINGS if flags & ACK == 0 => frame(&mut out, SETTINGS, ACK, 0, &[]),
                        PING if flags & ACK == 0 => frame(&mut out, PING, ACK, 0, &payload),
                        GOAWAY => return Ok(()),
                        _ => {}
                    }
                }
                // Give the connection's window back well before it runs out.
                if received > WINDOW / 2 {
                    frame(&mut out, WINDOW_UPDATE, 0, 0, &received.to_be_bytes());
                    received = 0;
                }
            }
            Some((stream, result)) = puts.next(), if !puts.is_empty() => {
                reply(&mut out, stream, result);
                while let Some(Some((stream, result))) = puts.next().now_or_never() {
                    reply(&mut out, stream, result);
                }
            }
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Appends a unary gRPC reply on `stream`: headers, the message, `grpc-status: 0` trailers. An error
/// is answered with an empty `PutResponse`: this instrument does not report errors.
fn reply(out: &mut BytesMut, stream: u32, result: mini_etcd::Result<PutResponse>) {
    // HPACK: `:status: 200` is static entry 8; `content-type` is static entry 31, sent as a literal
    // without indexing, as is the trailer's new name.
    let mut headers = vec![0x88, 0x0f, 0x10, 16];
    headers.extend_from_slice(b"application/grpc");
    frame(out, HEADERS, END_HEADERS, stream, &headers);
    let message = result.unwrap_or_default().encode_to_vec();
    let mut data = vec![0];
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(&message);
    frame(out, DATA, 0, stream, &data);
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    frame(out, HEADERS, END_HEADERS | END_STREAM, stream, &trailers);
}
