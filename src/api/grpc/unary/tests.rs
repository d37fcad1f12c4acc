//! The lean unary path: its reading of request bodies (unit), and its replies on the wire, against a
//! real server over HTTP/2 with hyper's client: the gRPC framing, trailers, etcd's errors as
//! trailers-only replies, tonic's errors for bad framing, and the hand-over to tonic of a compressed
//! call. Every wait is bounded by [`BOUND`]; nothing depends on timing.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use prost::Message;
use tonic::Code;

use super::*;
use crate::api::conn::tests::h2_client;
use crate::api::conn::{serve_connection, Routes};
use crate::config::Config;
use crate::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

/// Safety bound on any single wait; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(30);

/// A gRPC message: flag 0, big-endian length, the encoded message.
fn framed(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A test body: its frames, one after another.
type Chunks =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A body that yields `chunks` as separate data frames.
fn chunked(chunks: Vec<Vec<u8>>) -> Chunks {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .into_iter()
        .map(|c| Ok(Frame::data(Bytes::from(c))))
        .collect();
    StreamBody::new(futures::stream::iter(frames))
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_message_split_over_frames_is_joined() {
    let whole = framed(&put("k", &"v".repeat(100)));
    let (a, b) = whole.split_at(3);
    let (b, c) = b.split_at(40);
    let got: PutRequest = read_message(chunked(vec![a.to_vec(), b.to_vec(), c.to_vec()]), 1024)
        .await
        .expect("decoded");
    assert_eq!(got, put("k", &"v".repeat(100)));
}

#[tokio::test]
async fn bad_bodies_get_tonics_errors() {
    let cases: Vec<(Vec<Vec<u8>>, Code, &str)> = vec![
        (vec![], Code::Internal, "Missing request message."),
        (vec![vec![0, 0, 0]], Code::Internal, "Unexpected EOF decoding stream."),
        (
            vec![vec![0, 0, 0, 0, 9, 1, 2]],
            Code::Internal,
            "Unexpected EOF decoding stream.",
        ),
        (
            vec![vec![1, 0, 0, 0, 1, 0]],
            Code::Internal,
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ),
        (
            vec![vec![7, 0, 0, 0, 1, 0]],
            Code::Internal,
            "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request",
        ),
        (
            vec![vec![0, 0, 0, 4, 1]],
            Code::OutOfRange,
            "Error, decoded message length too large: found 1025 bytes, the limit is: 1024 bytes",
        ),
        (
            vec![framed(&put("a", "1")), framed(&put("b", "2"))],
            Code::Internal,
            "protocol error: more than one message in a unary request",
        ),
    ];
    for (chunks, code, text) in cases {
        let shown = format!("{chunks:?}");
        let err = read_message::<PutRequest, _>(chunked(chunks), 1024)
            .await
            .expect_err(&shown);
        assert_eq!((err.code(), err.message()), (code, text), "{shown}");
    }
    // Not a PutRequest at all: prost's error, as tonic reports it.
    let err = read_message::<PutRequest, _>(chunked(vec![vec![0, 0, 0, 0, 2, 0x0a, 0x05]]), 1024)
        .await
        .expect_err("truncated field");
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("failed to decode"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_reply_is_one_data_frame_then_status_trailers() {
    let resp = reply(&PutResponse::default()).expect("a small message fits");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        &collected.to_bytes()[..],
        &framed(&PutResponse::default())[..]
    );
}

/// A server with its client port served by [`serve_connection`] on a fresh loopback port, and an
/// HTTP/2 client connected to it.
struct Served {
    _dir: tempfile::TempDir,
    server: Server,
    client: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

async fn served() -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::with_data_dir(dir.path()).expect("config");
    let server = Server::start(config).await.expect("server starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes = Routes {
        router: crate::api::grpc::router(server.clone()),
        kv: Some(KvCalls::new(server.clone())),
        max_concurrent_streams: u32::MAX,
        round: server.call_round(),
        remote: None,
        liveness: crate::api::conn::Liveness::NONE,
        client_cert: None,
    };
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        serve_connection(tcp, routes, std::future::pending()).await;
    });
    Served {
        _dir: dir,
        server,
        client: h2_client(addr).await,
    }
}

/// What came back for one call: the gRPC status (from the trailers, or from the headers of a
/// trailers-only reply), its message, and the body's bytes.
struct Reply {
    code: String,
    message: String,
    body: Bytes,
}

async fn send(s: &Served, path: &str, body: Vec<u8>, encoding: Option<&str>) -> Reply {
    let mut req = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        req = req.header("grpc-encoding", e);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let mut client = s.client.clone();
    let resp = tokio::time::timeout(BOUND, client.send_request(req))
        .await
        .expect("reply within the bound")
        .expect("reply");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    // Like tonic and grpc-go: no content-length, which Go clients would file into metadata.
    assert_eq!(resp.headers().get("content-length"), None);
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.expect("body");
    let status_from = collected.trailers().cloned().unwrap_or(headers);
    let code = status_from
        .get("grpc-status")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    // `grpc-message` is percent-encoded on the wire; tonic decodes it as clients do.
    let message = Status::from_header_map(&status_from)
        .map(|s| s.message().to_string())
        .unwrap_or_default();
    Reply {
        code,
        message,
        body: collected.to_bytes(),
    }
}

fn unframe<M: Message + Default>(body: &Bytes) -> M {
    assert!(body.len() >= PREFIX, "no message in {body:?}");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(
        (body[0], body.len()),
        (0, PREFIX + len),
        "one uncompressed message"
    );
    M::decode(&body[PREFIX..]).expect("decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_range_on_the_wire() {
    let s = served().await;
    let r = send(&s, "/etcdserverpb.KV/Put", framed(&put("k1", "v1")), None).await;
    assert_eq!(r.code, "0");
    let put_resp: PutResponse = unframe(&r.body);
    let revision = put_resp.header.expect("header").revision;
    assert!(revision >= 2, "{revision}");

    let range = RangeRequest {
        key: b"k1".to_vec(),
        ..Default::default()
    };
    let r = send(&s, "/etcdserverpb.KV/Range", framed(&range), None).await;
    assert_eq!(r.code, "0");
    let got: RangeResponse = unframe(&r.body);
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(
        (&got.kvs[0].key[..], &got.kvs[0].value[..]),
        (&b"k1"[..], &b"v1"[..])
    );
    assert_eq!(got.kvs[0].mod_revision, revision);
    s.server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_trailers_only_with_etcds_and_tonics_texts() {
    let s = served().await;
    // etcd's own error, from the service.
    let r = send(&s, "/etcdserverpb.KV/Put", framed(&put("", "v")), None).await;
    assert_eq!(
        (r.code.as_str(), r.message.as_str(), r.body.len()),
        ("3", "etcdserver: key is not provided", 0)
    );
    // Bad framing: tonic's text, before the service is called.
    let r = send(&s, "/etcdserverpb.KV/Put", vec![1, 0, 0, 0, 1, 0], None).await;
    assert_eq!(r.code, "13");
    assert!(r.message.contains("compressed-flag"), "{}", r.message);
    // A compressed call goes to tonic, which refuses the encoding it was not built with.
    let r = send(
        &s,
        "/etcdserverpb.KV/Put",
        framed(&put("k", "v")),
        Some("gzip"),
    )
    .await;
    assert_eq!(r.code, "12", "{}", r.message);
    assert!(r.message.contains("gzip"), "{}", r.message);
    // Nothing was written by any of them.
    let range = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    let r = send(&s, "/etcdserverpb.KV/Range", framed(&range), None).await;
    let got: RangeResponse = unframe(&r.body);
    assert_eq!(got.count, 0);
    s.server.shutdown().await.expect("shutdown");
}

/// A Range answered from the stored records (`Server::range_frame`) decodes to exactly what the
/// decoding path answers, for every shape that takes it, and shapes that do not take it still get
/// the decoding path's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_from_stored_records_answer_as_decoded_ones_do() {
    let s = served().await;
    for (k, v) in [
        ("a", "1"),
        ("b/1", "2"),
        ("b/2", "3"),
        ("b/3", ""),
        ("c", "4"),
    ] {
        s.server
            .put(put(k, v))
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    s.server.put(put("b/2", "changed")).await.expect("put");
    let req = |key: &str, end: &str| RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        ..Default::default()
    };
    let cases = vec![
        req("a", ""),
        req("zzz", ""),
        req("b/", "b0"),
        req("a", "\0"),
        RangeRequest {
            limit: 2,
            ..req("b/", "b0")
        },
        RangeRequest {
            revision: 3,
            ..req("a", "\0")
        },
        RangeRequest {
            serializable: true,
            ..req("b/", "b0")
        },
        RangeRequest {
            sort_order: 1, // ascending by key: the stored order
            ..req("a", "\0")
        },
        // Shapes the decoding path answers.
        RangeRequest {
            keys_only: true,
            ..req("a", "\0")
        },
        RangeRequest {
            sort_order: 2,
            ..req("a", "\0")
        },
        RangeRequest {
            count_only: true,
            ..req("a", "\0")
        },
        RangeRequest {
            min_mod_revision: 4,
            ..req("a", "\0")
        },
    ];
    for case in cases {
        let want = s.server.range(&case).await.expect("decoded range");
        let r = send(&s, "/etcdserverpb.KV/Range", framed(&case), None).await;
        assert_eq!(r.code, "0", "{case:?}: {}", r.message);
        let got: RangeResponse = unframe(&r.body);
        assert_eq!(got, want, "{case:?}");
        let framed = s.server.range_frame(&case).await.expect("frame");
        assert_eq!(
            framed.is_some(),
            crate::server::kv::answers_as_stored(&case)
        );
    }
    // Errors are etcd's either way.
    let r = send(
        &s,
        "/etcdserverpb.KV/Range",
        framed(&RangeRequest {
            revision: 1_000,
            ..req("a", "")
        }),
        None,
    )
    .await;
    assert_eq!(
        r.message,
        "etcdserver: mvcc: required revision is a future revision"
    );
    s.server.shutdown().await.expect("shutdown");
}
