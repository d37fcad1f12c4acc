//! Protobuf decoding of the messages a member receives, and what is done with them.
//!
//! An input is `[kind][message bytes]`. `kind` (modulo the number of kinds) picks the message
//! type. The bytes are decoded with prost; where that succeeds the message goes on:
//!
//! - client requests (etcdserverpb) are sent as gRPC calls through the client port's router in
//!   process, so tonic's framing, our service code and the server's validation all see them; the
//!   five KV requests also go through the KV service's own unary reader, whole and cut in chunks,
//!   which must decode them exactly as prost does;
//! - peer messages (peerpb) are converted to Raft's messages (`peer::convert::from_wire`), and a
//!   converted message must survive `to_wire` and `from_wire` unchanged; entries' data are
//!   decoded as log requests;
//! - log requests (`RaftRequest`, what an entry carries) go through the KV validation the
//!   proposer runs.
//!
//! A last kind feeds the raw bytes, unframed, to the unary reader.

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use mini_etcd::peer::convert;
use mini_etcd::proto::{etcdserverpb as pb, peerpb};
use mini_etcd::server::kv;
use mini_etcd::server::request::{Op, RaftRequest, WalMetadata};
use prost::Message;

use crate::server::{send_and_check, shared};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// gRPC methods fuzzed, with their request types. Membership, leadership and auth-enable calls
/// are left out: on a one-member cluster they stop every later write (see `http.rs`).
pub const KINDS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Auth/Authenticate",
    "peerpb.Message",
    "peerpb.Batch",
    "peerpb.SnapshotChunk",
    "peerpb.ConfChangeContext",
    "peerpb.Members",
    "RaftRequest",
    "WalMetadata",
    "unary reader",
];

/// The index of `name` in [`KINDS`], for the corpus generator.
pub fn kind(name: &str) -> u8 {
    KINDS
        .iter()
        .position(|k| *k == name)
        .unwrap_or_else(|| panic!("no kind {name}")) as u8
}

/// The proto target.
pub fn proto(data: &[u8]) {
    let Some((&k, msg)) = data.split_first() else {
        return;
    };
    let name = KINDS[k as usize % KINDS.len()];
    match name {
        "/etcdserverpb.KV/Range" => kv_call::<pb::RangeRequest>(name, msg, kv::check_range),
        "/etcdserverpb.KV/Put" => kv_call::<pb::PutRequest>(name, msg, kv::check_put),
        "/etcdserverpb.KV/DeleteRange" => {
            kv_call::<pb::DeleteRangeRequest>(name, msg, kv::check_delete)
        }
        "/etcdserverpb.KV/Txn" => kv_call::<pb::TxnRequest>(name, msg, |r| {
            let _ = kv::txn_has_writes(r);
            kv::check_txn(r, MAX_TXN_OPS)
        }),
        "/etcdserverpb.KV/Compact" => kv_call::<pb::CompactionRequest>(name, msg, |_| Ok(())),
        "/etcdserverpb.Watch/Watch" => call::<pb::WatchRequest>(name, msg),
        "/etcdserverpb.Lease/LeaseGrant" => call::<pb::LeaseGrantRequest>(name, msg),
        "/etcdserverpb.Lease/LeaseRevoke" => call::<pb::LeaseRevokeRequest>(name, msg),
        "/etcdserverpb.Lease/LeaseKeepAlive" => call::<pb::LeaseKeepAliveRequest>(name, msg),
        "/etcdserverpb.Lease/LeaseTimeToLive" => call::<pb::LeaseTimeToLiveRequest>(name, msg),
        "/etcdserverpb.Lease/LeaseLeases" => call::<pb::LeaseLeasesRequest>(name, msg),
        "/etcdserverpb.Cluster/MemberList" => call::<pb::MemberListRequest>(name, msg),
        "/etcdserverpb.Maintenance/Alarm" => call::<pb::AlarmRequest>(name, msg),
        "/etcdserverpb.Maintenance/Status" => call::<pb::StatusRequest>(name, msg),
        "/etcdserverpb.Maintenance/HashKV" => call::<pb::HashKvRequest>(name, msg),
        "/etcdserverpb.Auth/Authenticate" => call::<pb::AuthenticateRequest>(name, msg),
        "peerpb.Message" => {
            if let Ok(m) = peerpb::Message::decode(msg) {
                peer_message(m);
            }
        }
        "peerpb.Batch" => {
            if let Ok(b) = peerpb::Batch::decode(msg) {
                b.messages.into_iter().for_each(peer_message);
            }
        }
        "peerpb.SnapshotChunk" => {
            if let Ok(c) = peerpb::SnapshotChunk::decode(msg) {
                if let Some(m) = c.message {
                    peer_message(m);
                }
            }
        }
        "peerpb.ConfChangeContext" => {
            let _ = peerpb::ConfChangeContext::decode(msg);
        }
        "peerpb.Members" => {
            let _ = peerpb::Members::decode(msg);
        }
        "RaftRequest" => raft_request(msg),
        "WalMetadata" => {
            let _ = WalMetadata::decode(msg);
        }
        "unary reader" => {
            let chunks = chunks(msg);
            let s = shared();
            let _ = s
                .runtime
                .block_on(mini_etcd::fuzzing::grpc::read_unary::<pb::TxnRequest>(
                    chunks,
                    1024 * 1024,
                ));
        }
        other => unreachable!("kind {other} has no handler"),
    }
}

/// A Raft message from a peer: converted, and a converted one survives the round trip.
fn peer_message(m: peerpb::Message) {
    for e in &m.entries {
        raft_request(&e.data);
    }
    if let Ok(msg) = convert::from_wire(m) {
        let back =
            convert::from_wire(convert::to_wire(&msg)).expect("a converted message converts again");
        // A snapshot's data does not travel in the message (it has its own call).
        let mut expected = msg.clone();
        if expected.has_snapshot() {
            expected.mut_snapshot().data = Default::default();
        }
        assert_eq!(back, expected, "a peer message changed in a round trip");
    }
}

/// An entry's payload: decoded, and its KV operations validated as the proposer does.
fn raft_request(data: &[u8]) {
    let Ok(req) = RaftRequest::decode(data) else {
        return;
    };
    match req.op {
        Some(Op::Put(p)) => {
            let _ = kv::check_put(&p);
        }
        Some(Op::DeleteRange(d)) => {
            let _ = kv::check_delete(&d);
        }
        Some(Op::Txn(t)) => {
            let _ = kv::txn_has_writes(&t);
            let _ = kv::check_txn(&t, MAX_TXN_OPS);
        }
        _ => {}
    }
}

/// The bytes cut in a few chunks at places that depend on them.
fn chunks(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut step = data.first().copied().unwrap_or(1) as usize % 7 + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
        step = step * 3 + 1;
    }
    out
}

/// A KV request: the unary reader decodes it as prost does, it is validated, then called.
fn kv_call<M>(path: &str, msg: &[u8], check: impl Fn(&M) -> mini_etcd::Result<()>)
where
    M: Message + Default + PartialEq,
{
    let Ok(decoded) = M::decode(msg) else {
        return;
    };
    let _ = check(&decoded);
    let framed = frame(msg);
    let s = shared();
    let whole = s
        .runtime
        .block_on(mini_etcd::fuzzing::grpc::read_unary::<M>(
            vec![Bytes::from(framed.clone())],
            usize::MAX >> 1,
        ));
    assert!(
        whole.ok().as_ref() == Some(&decoded),
        "the unary reader decodes differently"
    );
    let cut = s
        .runtime
        .block_on(mini_etcd::fuzzing::grpc::read_unary::<M>(
            chunks(&framed),
            usize::MAX >> 1,
        ));
    assert!(
        cut.ok().as_ref() == Some(&decoded),
        "the unary reader decodes chunks differently"
    );
    grpc(path, framed);
}

/// A request of another service: sent if it decodes.
fn call<M: Message + Default>(path: &str, msg: &[u8]) {
    if M::decode(msg).is_ok() {
        grpc(path, frame(msg));
    }
}

/// gRPC's length-prefixed message framing.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// One gRPC call through the client router: the response must carry a grpc-status.
fn grpc(path: &str, body: Vec<u8>) {
    let s = shared();
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(body))
        .expect("a valid request");
    let router = mini_etcd::fuzzing::client_router(s.server.clone());
    send_and_check(router, req, check_grpc);
}

async fn check_grpc(resp: Response<Body>) {
    let in_headers = resp.headers().contains_key("grpc-status");
    let header_code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header_msg = resp.headers().get("grpc-message").cloned();
    let status = resp.status();
    let collected = resp.into_body().collect().await;
    let Ok(collected) = collected else {
        return;
    };
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        let t = collected.trailers().cloned().unwrap_or_default();
        let code = t
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(header_code)
            .unwrap_or_default();
        let msg = t.get("grpc-message").cloned().or(header_msg);
        eprintln!("grpc {code}: {msg:?}");
    }
    let in_trailers = collected
        .trailers()
        .is_some_and(|t| t.contains_key("grpc-status"));
    assert!(
        in_headers || in_trailers,
        "a gRPC response (HTTP {status}) without grpc-status"
    );
}
