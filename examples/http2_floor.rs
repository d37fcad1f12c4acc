//! A measuring instrument, not a server: what a put costs when the HTTP/2 layer (h2, hyper, http)
//! is taken away, so that the one large lever left on the put path can be weighed before anyone
//! builds it (docs/performance-archive.md, "put-64c, session 7").
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
//! The same loop on h2's own frame codec (`h2::Codec`, which decodes HPACK into header maps) is here
//! too, for the measurement in docs/performance-archive.md ("put-64c, session 8"): build with `--features
//! floor-codec` and run with `FLOOR_FRAMING=h2codec`. That API sits behind h2's `unstable`
//! feature, which has no semver promise, so the feature is off by default and nothing else uses it.
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

/// Whether connections are served by the loop on h2's codec (`FLOOR_FRAMING=h2codec`) rather than
/// the plain floor. Asking for the codec from a build without `--features floor-codec` is an error,
/// not a silent fall-back to the floor: a measurement must not run the wrong loop.
fn codec_wanted() -> Result<bool, String> {
    match std::env::var("FLOOR_FRAMING").as_deref() {
        Err(_) | Ok("") | Ok("floor") => Ok(false),
        Ok("h2codec") if cfg!(feature = "floor-codec") => Ok(true),
        Ok("h2codec") => {
            Err("FLOOR_FRAMING=h2codec needs a build with --features floor-codec".into())
        }
        Ok(other) => Err(format!("unknown FLOOR_FRAMING {other:?}: floor or h2codec")),
    }
}

fn main() -> ExitCode {
    let codec = match codec_wanted() {
        Ok(codec) => codec,
        Err(e) => {
            eprintln!("http2_floor: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "http2_floor: serving with the {} loop",
        if codec { "h2 codec" } else { "plain floor" }
    );
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
    match runtime.block_on(run(config, codec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http2_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, codec: bool) -> mini_etcd::Result<()> {
    #[cfg(not(feature = "floor-codec"))]
    let _ = codec; // always false here: `codec_wanted` refuses the codec without the feature
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
            #[cfg(feature = "floor-codec")]
            if codec {
                let _ = codec_connection(tcp, server).await;
                return;
            }
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
                                puts.push(put(server.clone(), body).map(move |r| (stream, r)));
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

/// Decodes a Put request body (after its 5-byte gRPC prefix) and runs it through the real server. A
/// body that does not decode is run as an empty Put: this instrument reports no errors.
async fn put(server: Server, body: BytesMut) -> mini_etcd::Result<PutResponse> {
    let req = PutRequest::decode(body.get(5..).unwrap_or(&[])).unwrap_or_default();
    server.put(req).await
}

/// A reply's gRPC message: the 5-byte prefix (not compressed, then the length) and the response.
fn grpc_message(result: mini_etcd::Result<PutResponse>) -> Vec<u8> {
    let message = result.unwrap_or_default().encode_to_vec();
    let mut data = Vec::with_capacity(5 + message.len());
    data.push(0);
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(&message);
    data
}

/// Appends a unary gRPC reply on `stream`: headers, the message, `grpc-status: 0` trailers. An error
/// is answered with an empty `PutResponse`: this instrument does not report errors.
fn reply(out: &mut BytesMut, stream: u32, result: mini_etcd::Result<PutResponse>) {
    // HPACK: `:status: 200` is static entry 8; `content-type` is static entry 31, sent as a literal
    // without indexing, as is the trailer's new name.
    let mut headers = vec![0x88, 0x0f, 0x10, 16];
    headers.extend_from_slice(b"application/grpc");
    frame(out, HEADERS, END_HEADERS, stream, &headers);
    frame(out, DATA, 0, stream, &grpc_message(result));
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    frame(out, HEADERS, END_HEADERS | END_STREAM, stream, &trailers);
}

/// The same loop on h2's own frame codec (`FLOOR_FRAMING=h2codec`, built with `--features
/// floor-codec`): h2 parses the frames, decodes the request headers' HPACK into a `HeaderMap` and
/// encodes the replies; the loop does the rest as [`connection`] does, except that it writes the
/// replies of each wake-up through the codec instead of one buffer.
#[cfg(feature = "floor-codec")]
async fn codec_connection(
    mut tcp: TcpStream,
    server: Server,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::SinkExt;
    use h2::frame::{self, Frame, Headers, Pseudo, StreamId};
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await?;
    let mut codec: h2::Codec<TcpStream, bytes::Bytes> = h2::Codec::new(tcp);
    let mut settings = frame::Settings::default();
    settings.set_initial_window_size(Some(WINDOW));
    codec.feed(settings.into()).await?;
    codec
        .feed(frame::WindowUpdate::new(StreamId::zero(), WINDOW - 65_535).into())
        .await?;
    SinkExt::flush(&mut codec).await?;
    let mut bodies: HashMap<StreamId, BytesMut> = HashMap::new();
    let mut puts = FuturesUnordered::new();
    let mut received: u32 = 0;
    let ctype = http::HeaderValue::from_static("application/grpc");
    let ok = http::HeaderValue::from_static("0");
    loop {
        let mut ready = Vec::new();
        tokio::select! {
            f = codec.next() => {
                let Some(f) = f else { return Ok(()) };
                match f.map_err(|e| format!("{e:?}"))? {
                    Frame::Data(d) => {
                        let end = d.is_end_stream();
                        let id = d.stream_id();
                        let payload = d.into_payload();
                        received = received.saturating_add(payload.len() as u32);
                        bodies.entry(id).or_default().extend_from_slice(&payload);
                        if end {
                            let body = bodies.remove(&id).unwrap_or_default();
                            puts.push(put(server.clone(), body).map(move |r| (id, r)));
                        }
                    }
                    Frame::Settings(s) if !s.is_ack() => codec.feed(frame::Settings::ack().into()).await?,
                    Frame::Ping(p) if !p.is_ack() => codec.feed(frame::Ping::pong(p.into_payload()).into()).await?,
                    Frame::GoAway(_) => return Ok(()),
                    _ => {}
                }
                if received > WINDOW / 2 {
                    codec.feed(frame::WindowUpdate::new(StreamId::zero(), received).into()).await?;
                    received = 0;
                }
            }
            Some(r) = puts.next(), if !puts.is_empty() => {
                ready.push(r);
                while let Some(Some(r)) = puts.next().now_or_never() {
                    ready.push(r);
                }
            }
        }
        for (id, result) in ready {
            let mut fields = http::HeaderMap::new();
            fields.insert(http::header::CONTENT_TYPE, ctype.clone());
            codec
                .feed(Headers::new(id, Pseudo::response(http::StatusCode::OK), fields).into())
                .await?;
            codec
                .feed(frame::Data::new(id, bytes::Bytes::from(grpc_message(result))).into())
                .await?;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", ok.clone());
            let mut t = Headers::trailers(id, trailers);
            t.set_end_stream();
            codec.feed(t.into()).await?;
        }
        SinkExt::flush(&mut codec).await?;
    }
}
