//! Writes the seed corpus into `fuzz/corpus/<target>/`: real WAL segments made by `Wal::create`
//! and `save`, typical REST and gateway requests, and encoded valid protobuf messages. The output
//! is the same on every run, so the committed corpus can be checked against it.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make-corpus`

use std::path::Path;

use mini_etcd::fuzzing::wal::{decode_frame, Frame};
use mini_etcd::proto::{etcdserverpb as pb, peerpb};
use mini_etcd::server::request::{Op, RaftRequest, WalMetadata};
use mini_etcd::wal::{SnapshotMark, Wal, WalOptions};
use mini_etcd_fuzz::harness::corpus_dir;
use mini_etcd_fuzz::targets::proto::kind;
use prost::Message;
use raft::eraftpb::{ConfState, Entry, HardState};

fn main() {
    let wal_one = wal_segments(64 * 1024, 5);
    let wal_two = wal_segments(600, 6);
    assert_eq!(wal_one.len(), 1, "one segment");
    assert!(wal_two.len() >= 2, "a small segment size cuts the log");

    // wal_segment: [flags][split u16 LE][bytes].
    let seg = &wal_one[0];
    write("wal_segment", "one-segment", &segment_input(0, 0, seg));
    write(
        "wal_segment",
        "one-segment-resealed",
        &segment_input(1, 0, seg),
    );
    write(
        "wal_segment",
        "one-segment-retain-from-3",
        &segment_input(8, 0, seg),
    );
    let mut torn = seg.clone();
    torn.truncate(seg.len() - 20);
    write("wal_segment", "torn-tail", &segment_input(0, 0, &torn));
    let mut two = wal_two[0].clone();
    two.extend_from_slice(&wal_two[1]);
    let split = wal_two[0].len() as u16;
    write(
        "wal_segment",
        "two-segments",
        &segment_input(2, split, &two),
    );
    write(
        "wal_segment",
        "two-segments-resealed",
        &segment_input(3, split, &two),
    );

    // wal_record: a segment's start, and each record of it as [type][payload].
    write("wal_record", "segment", &seg[..seg.len().min(1024)]);
    let mut off = 0;
    let mut n = 0;
    while let Some(Frame::Record { ty, data, end, .. }) = decode_frame(seg, off) {
        let mut input = vec![ty];
        input.extend_from_slice(data);
        write("wal_record", &format!("record-{n}-type-{ty}"), &input);
        off = end;
        n += 1;
    }

    for (name, req) in REST {
        write("rest", name, req.as_bytes());
    }
    for (name, req) in GATEWAY {
        write("gateway", name, req.as_bytes());
    }

    let put = pb::PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        prev_kv: true,
        ..Default::default()
    };
    let range = pb::RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        limit: 10,
        ..Default::default()
    };
    let del = pb::DeleteRangeRequest {
        key: b"foo".to_vec(),
        range_end: vec![0],
        ..Default::default()
    };
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Version as i32,
            key: b"foo".to_vec(),
            target_union: Some(pb::compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put.clone())),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(range.clone())),
        }],
    };
    let watch = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"foo".to_vec(),
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    let proto: Vec<(&str, &str, Vec<u8>)> = vec![
        ("range", "/etcdserverpb.KV/Range", range.encode_to_vec()),
        ("put", "/etcdserverpb.KV/Put", put.encode_to_vec()),
        (
            "delete-range",
            "/etcdserverpb.KV/DeleteRange",
            del.encode_to_vec(),
        ),
        ("txn", "/etcdserverpb.KV/Txn", txn.encode_to_vec()),
        (
            "compact",
            "/etcdserverpb.KV/Compact",
            pb::CompactionRequest {
                revision: 1,
                physical: false,
            }
            .encode_to_vec(),
        ),
        ("watch", "/etcdserverpb.Watch/Watch", watch.encode_to_vec()),
        (
            "lease-grant",
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest { ttl: 60, id: 0 }.encode_to_vec(),
        ),
        (
            "lease-revoke",
            "/etcdserverpb.Lease/LeaseRevoke",
            pb::LeaseRevokeRequest { id: 7 }.encode_to_vec(),
        ),
        (
            "lease-keepalive",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            pb::LeaseKeepAliveRequest { id: 7 }.encode_to_vec(),
        ),
        (
            "lease-ttl",
            "/etcdserverpb.Lease/LeaseTimeToLive",
            pb::LeaseTimeToLiveRequest { id: 7, keys: true }.encode_to_vec(),
        ),
        (
            "status",
            "/etcdserverpb.Maintenance/Status",
            pb::StatusRequest {}.encode_to_vec(),
        ),
        (
            "hashkv",
            "/etcdserverpb.Maintenance/HashKV",
            pb::HashKvRequest { revision: 0 }.encode_to_vec(),
        ),
        (
            "alarm-get",
            "/etcdserverpb.Maintenance/Alarm",
            pb::AlarmRequest::default().encode_to_vec(),
        ),
        (
            "peer-message",
            "peerpb.Message",
            peer_message().encode_to_vec(),
        ),
        (
            "peer-batch",
            "peerpb.Batch",
            peerpb::Batch {
                cluster_id: 1,
                messages: vec![peer_message(), peer_message()],
            }
            .encode_to_vec(),
        ),
        (
            "peer-snapshot-chunk",
            "peerpb.SnapshotChunk",
            peerpb::SnapshotChunk {
                cluster_id: 1,
                message: Some(peerpb::Message {
                    msg_type: 7,
                    snapshot: Some(peerpb::SnapshotMetadata {
                        conf_state: Some(peerpb::ConfState {
                            voters: vec![1, 2, 3],
                            ..Default::default()
                        }),
                        index: 10,
                        term: 2,
                    }),
                    ..peer_message()
                }),
                total_bytes: 4,
                data: b"data".to_vec(),
                crc32c: 0,
            }
            .encode_to_vec(),
        ),
        (
            "peer-members",
            "peerpb.Members",
            peerpb::Members {
                cluster_id: 1,
                members: vec![peerpb::Member {
                    id: 1,
                    name: "m1".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    client_urls: vec!["http://127.0.0.1:2379".into()],
                    is_learner: false,
                }],
                removed: vec![9],
            }
            .encode_to_vec(),
        ),
        (
            "raft-request-txn",
            "RaftRequest",
            RaftRequest {
                id: 42,
                op: Some(Op::Txn(txn.clone())),
                auth: None,
            }
            .encode_to_vec(),
        ),
        (
            "wal-metadata",
            "WalMetadata",
            WalMetadata {
                member_id: 1,
                cluster_id: 2,
                name: "default".into(),
            }
            .encode_to_vec(),
        ),
        ("unary-reader", "unary reader", {
            let mut f = vec![0, 0, 0, 0, range.encoded_len() as u8];
            f.extend_from_slice(&range.encode_to_vec());
            f
        }),
    ];
    for (name, k, bytes) in proto {
        let mut input = vec![kind(k)];
        input.extend_from_slice(&bytes);
        write("proto", name, &input);
    }
}

/// A MsgAppend carrying one entry whose data is a put, as a leader sends it.
fn peer_message() -> peerpb::Message {
    let data = RaftRequest {
        id: 1,
        op: Some(Op::Put(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
        auth: None,
    }
    .encode_to_vec();
    peerpb::Message {
        msg_type: 3,
        to: 2,
        from: 1,
        term: 2,
        log_term: 2,
        index: 4,
        entries: vec![peerpb::Entry {
            entry_type: 0,
            term: 2,
            index: 5,
            data,
            context: Vec::new(),
        }],
        commit: 4,
        ..Default::default()
    }
}

const REST: &[(&str, &str)] = &[
    (
        "put",
        "POST /put\nContent-Type: application/x-www-form-urlencoded\n\n{\"key\":\"foo\",\"value\":\"bar\"}",
    ),
    ("get", "GET /get?key=foo"),
    ("get-rev", "GET /get?key=foo&rev=1"),
    ("delete", "DELETE /delete?key=foo"),
    ("delete-post", "POST /delete?key=foo"),
    ("watch", "GET /watch?key=foo&timeout=1"),
    ("watch-prefix-stream", "GET /watch?key=f&prefix=true&rev=1&stream=true"),
    ("compact", "POST /compact\n\n{\"revision\":1}"),
    ("health", "GET /health"),
    ("version", "GET /version"),
    ("metrics", "GET /metrics"),
    ("unknown", "GET /nope"),
    ("wrong-method", "PUT /put\n\n{}"),
];

const GATEWAY: &[(&str, &str)] = &[
    (
        "put",
        "POST /v3/kv/put\n\n{\"key\":\"Zm9v\",\"value\":\"YmFy\",\"prev_kv\":true}",
    ),
    (
        "range",
        "POST /v3/kv/range\n\n{\"key\":\"YQ==\",\"range_end\":\"eg==\",\"limit\":\"10\"}",
    ),
    ("range-empty", "POST /v3/kv/range\n\n"),
    (
        "deleterange",
        "POST /v3/kv/deleterange\n\n{\"key\":\"Zm9v\",\"range_end\":\"AA==\"}",
    ),
    (
        "txn",
        "POST /v3/kv/txn\n\n{\"compare\":[{\"result\":\"EQUAL\",\"target\":\"VERSION\",\"key\":\"Zm9v\",\"version\":\"0\"}],\"success\":[{\"request_put\":{\"key\":\"Zm9v\",\"value\":\"YmFy\"}}],\"failure\":[{\"request_range\":{\"key\":\"Zm9v\"}}]}",
    ),
    ("compaction", "POST /v3/kv/compaction\n\n{\"revision\":\"1\"}"),
    (
        "watch",
        "POST /v3/watch\n\n{\"create_request\":{\"key\":\"Zm9v\",\"start_revision\":\"1\"}}\n{\"progress_request\":{}}",
    ),
    ("lease-grant", "POST /v3/lease/grant\n\n{\"TTL\":\"60\"}"),
    ("lease-keepalive", "POST /v3/lease/keepalive\n\n{\"ID\":\"7\"}"),
    (
        "lease-timetolive",
        "POST /v3/lease/timetolive\n\n{\"ID\":\"7\",\"keys\":true}",
    ),
    ("lease-leases", "POST /v3/lease/leases\n\n{}"),
    ("member-list", "POST /v3/cluster/member/list\n\n{}"),
    ("status", "POST /v3/maintenance/status\n\n{}"),
    ("hashkv", "POST /v3/maintenance/hashkv\n\n{\"revision\":\"0\"}"),
    (
        "authenticate",
        "POST /v3/auth/authenticate\nAuthorization: token\n\n{\"name\":\"root\",\"password\":\"x\"}",
    ),
    ("health", "GET /health"),
    ("unknown", "POST /v3/nope\n\n{}"),
];

fn segment_input(flags: u8, split: u16, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&split.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The segments of a log with a snapshot mark, a hard state and `entries` put entries, each
/// without the zeros preallocation left after its last record.
fn wal_segments(segment_size: u64, entries: u64) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = WalMetadata {
        member_id: 1,
        cluster_id: 2,
        name: "default".into(),
    }
    .encode_to_vec();
    let opts = WalOptions {
        segment_size,
        retain_from: 0,
    };
    let mut wal = Wal::create(dir.path(), &meta, opts).expect("create");
    wal.save_snapshot(&SnapshotMark {
        index: 0,
        term: 0,
        conf_state: ConfState {
            voters: vec![1],
            ..Default::default()
        },
    })
    .expect("snapshot mark");
    for i in 1..=entries {
        let data = RaftRequest {
            id: i,
            op: Some(Op::Put(pb::PutRequest {
                key: format!("key{i}").into_bytes(),
                value: vec![b'v'; 40],
                ..Default::default()
            })),
            auth: None,
        }
        .encode_to_vec();
        let e = Entry {
            index: i,
            term: 1,
            data: data.into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: i,
            ..Default::default()
        };
        wal.save(Some(&hs), &[e]).expect("save");
    }
    drop(wal);
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let mut bytes = std::fs::read(p).expect("read segment");
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            bytes.truncate(used.next_multiple_of(8));
            bytes
        })
        .collect()
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write corpus file");
    println!("{} ({} bytes)", display(&path), data.len());
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
