//! The peer port under hostile input: whatever arrives there, a member stays up and keeps serving.
//! Nothing received from a peer is decoded by rust-protobuf (RUSTSEC-2024-0437: a deeply nested
//! message overflows its stack); these calls send raw bytes the way an attacker could.

mod common;

use bytes::{Buf, BufMut};
use common::cluster::Cluster;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A gRPC codec that sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An unknown field nested `depth` groups deep: the shape that overflows a recursive decoder.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        varint((100 << 3) | 3, &mut out);
    }
    for _ in 0..depth {
        varint((100 << 3) | 4, &mut out);
    }
    out
}

/// A length-delimited field 2 (`Batch.messages`) nested in itself `depth` times.
fn nested_messages(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = Vec::new();
        varint((2 << 3) | 2, &mut outer);
        varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

async fn send(peer_url: &str, method: &'static str, payloads: Vec<Vec<u8>>) -> Result<(), Status> {
    let ch = tonic::transport::Endpoint::from_shared(peer_url.to_string())
        .expect("url")
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(method);
    g.client_streaming(tonic::Request::new(tokio_stream::iter(payloads)), path, Raw)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_messages_do_not_bring_a_member_down() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let target = (leader + 1) % 3;
    let url = c.members[target].peer_url();
    let cluster_id = {
        let v = c
            .gateway(target, "/v3/cluster/member/list", serde_json::json!({}))
            .await
            .expect("list");
        v["header"]["cluster_id"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .expect("cluster id")
    };
    let local_hup = mini_etcd::proto::peerpb::Batch {
        cluster_id,
        messages: vec![mini_etcd::proto::peerpb::Message {
            msg_type: 0, // MsgHup: Raft's local "start an election"
            to: c.member_id(target).await,
            from: c.member_id(leader).await,
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let other_cluster = mini_etcd::proto::peerpb::Batch {
        cluster_id: cluster_id ^ 1,
        messages: vec![mini_etcd::proto::peerpb::Message {
            msg_type: 3,
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let attacks: Vec<(&str, &'static str, Vec<u8>)> = vec![
        (
            "nested groups",
            "/peerpb.Peer/Stream",
            nested_groups(200_000),
        ),
        (
            "nested messages",
            "/peerpb.Peer/Stream",
            nested_messages(5_000),
        ),
        ("garbage", "/peerpb.Peer/Stream", vec![0xff; 4096]),
        ("a local message", "/peerpb.Peer/Stream", local_hup),
        ("another cluster", "/peerpb.Peer/Stream", other_cluster),
        (
            "nested snapshot",
            "/peerpb.Peer/Snapshot",
            nested_groups(200_000),
        ),
        (
            "garbage snapshot",
            "/peerpb.Peer/Snapshot",
            vec![0x0a; 1000],
        ),
    ];
    for (what, method, payload) in attacks {
        let res = send(&url, method, vec![payload]).await;
        assert!(res.is_err(), "{what}: accepted");
        let (_, leader_seen, _, _) = c
            .status(target)
            .await
            .unwrap_or_else(|e| panic!("{what}: the member stopped answering: {e}"));
        assert_ne!(leader_seen, 0, "{what}: the member lost its leader");
    }
    assert!(c.members[target].running(), "the member exited");
    // The same member still replicates and serves.
    c.put(leader, "after-attacks", "fine").await.expect("put");
    assert_eq!(
        c.get(target, "after-attacks").await.expect("get"),
        Some("fine".into())
    );
    assert_eq!(c.wait_leader().await, leader, "no election was forced");
}
