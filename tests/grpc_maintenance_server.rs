//! End to end: the Maintenance, Cluster and Auth gRPC services of a real `mini-etcd` process, through
//! the generated tonic clients (the etcd-client compatibility suite for the same services is
//! `grpc_maintenance.rs`).
//!
//! Written before the shared harness exposed the client port, this file starts its servers with a
//! small [`Node`] of its own (it could move to `common::Server::client_url`): the same binary, fresh ports, a data directory the test owns, a log that
//! failure messages quote, and SIGKILL on drop. Every wait is bounded.
//!
//! What is held to etcd's behaviour (observed on etcd 3.4.23): Status fields, HashKV's
//! `compact_revision` of -1 before any compaction, the snapshot stream ending in a 32-byte SHA-256
//! chunk, the NOSPACE alarm and its error text, MoveLeader's "bad leader transferee", and the Auth
//! answers with authentication off.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mini_etcd::proto::etcdserverpb::alarm_request::AlarmAction;
use mini_etcd::proto::etcdserverpb::auth_client::AuthClient;
use mini_etcd::proto::etcdserverpb::cluster_client::ClusterClient;
use mini_etcd::proto::etcdserverpb::kv_client::KvClient;
use mini_etcd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mini_etcd::proto::etcdserverpb::{
    request_op, AlarmRequest, AlarmResponse, AlarmType, AuthStatusRequest, AuthUserGetRequest,
    AuthUserListRequest, AuthenticateRequest, CompactionRequest, DefragmentRequest,
    DeleteRangeRequest, HashKvRequest, HashRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, PutRequest, RangeRequest,
    RequestOp, SnapshotRequest, StatusRequest, TxnRequest,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// Safety bound on one call.
const CALL_BOUND: Duration = Duration::from_secs(30);

/// One `mini-etcd` process with a reachable client port.
struct Node {
    /// The child; killed on drop.
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the etcd v3 API.
    client_url: String,
    /// Where its output goes.
    log: PathBuf,
    /// Keeps the log directory alive.
    _logs: tempfile::TempDir,
}

impl Node {
    async fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let ports = common::free_ports(3);
        let logs = tempfile::tempdir().expect("log dir");
        let log = logs.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let client_url = format!("http://127.0.0.1:{}", ports[1]);
        let child = Command::new(common::bin())
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen-rest-url",
                &format!("http://127.0.0.1:{}", ports[0]),
            ])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", ports[2]),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn mini-etcd");
        let mut node = Node {
            child: Some(child),
            client_url,
            log,
            _logs: logs,
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + common::START_BOUND;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().expect("running").try_wait() {
                self.child = None;
                panic!(
                    "mini-etcd exited at start with {status}:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut c) = MaintenanceClient::connect(self.client_url.clone()).await {
                if c.status(StatusRequest {}).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "mini-etcd not ready in time:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        common::tail(&common::read_log(&self.log), 6000)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.client_url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(10))
            .timeout(CALL_BOUND)
            .connect()
            .await
            .expect("connect")
    }

    async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    async fn maint(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("---- mini-etcd log ----\n{}", self.log_tail());
        }
        self.kill();
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e:?}"))
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<Vec<u8>> {
    let r = kv
        .range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    r.kvs.into_iter().next().map(|kv| kv.value)
}

async fn count_prefix(kv: &mut KvClient<Channel>, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    kv.range(RangeRequest {
        key: prefix.into(),
        range_end: end,
        count_only: true,
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
    .count
}

/// Puts `n` keys `prefix{i}` in transactions of 100.
async fn fill(kv: &mut KvClient<Channel>, prefix: &str, n: usize, value: &[u8]) {
    for start in (0..n).step_by(100) {
        let success = (start..(start + 100).min(n))
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("{prefix}{i:06}").into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .expect("txn");
    }
}

async fn delete_prefix(kv: &mut KvClient<Channel>, prefix: &str) {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    kv.delete_range(DeleteRangeRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    })
    .await
    .expect("delete");
}

/// The member's alarms (etcd's Alarm GET).
async fn alarm_list(m: &mut MaintenanceClient<Channel>) -> AlarmResponse {
    m.alarm(AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn compact_now(kv: &mut KvClient<Channel>) {
    let rev = kv
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .expect("compact");
}

#[tokio::test]
async fn status_hash_and_hash_kv() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let mut kv = node.kv().await;
    let mut m = node.maint().await;
    put(&mut kv, "a", b"1").await; // 2
    put(&mut kv, "b", b"2").await; // 3

    let s = m.status(StatusRequest {}).await.unwrap().into_inner();
    let h = s.header.expect("header");
    assert_eq!(h.revision, 3);
    assert_ne!(h.member_id, 0);
    assert_eq!(s.version, mini_etcd::api::rest::ETCD_API_VERSION);
    assert_eq!(s.leader, h.member_id, "a single member leads");
    assert!(s.db_size > 0 && s.db_size_in_use > 0 && s.db_size_in_use <= s.db_size);
    assert!(s.raft_term >= 1);
    assert!(s.raft_index >= 3 && s.raft_applied_index >= 3);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(!s.is_learner);

    let a = m
        .hash_kv(HashKvRequest { revision: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.compact_revision, -1, "etcd: -1 before any compaction");
    assert_eq!(a.hash_revision, 3);
    put(&mut kv, "a", b"3").await; // 4
    let b = m
        .hash_kv(HashKvRequest { revision: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.hash, b.hash, "the hash at 3 ignores later writes");
    let now = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.hash_revision, 4);
    assert_ne!(now.hash, a.hash);
    let future = m.hash_kv(HashKvRequest { revision: 99 }).await.unwrap_err();
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    kv.compact(CompactionRequest {
        revision: 4,
        physical: false,
    })
    .await
    .unwrap();
    let gone = m.hash_kv(HashKvRequest { revision: 2 }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::OutOfRange);
    assert_eq!(
        gone.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let h = m.hash(HashRequest {}).await.unwrap().into_inner();
    assert_eq!(h.header.expect("header").revision, 4);
}

#[tokio::test]
async fn hash_agrees_across_servers_with_the_same_writes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (n1, n2) = (
        Node::start(d1.path(), &[]).await,
        Node::start(d2.path(), &[]).await,
    );
    let (mut kv1, mut kv2) = (n1.kv().await, n2.kv().await);
    for kv in [&mut kv1, &mut kv2] {
        for i in 0..20 {
            put(kv, &format!("k{i}"), format!("v{i}").as_bytes()).await;
        }
        delete_prefix(kv, "k1").await;
    }
    let (mut m1, mut m2) = (n1.maint().await, n2.maint().await);
    let hash = |r: mini_etcd::proto::etcdserverpb::HashResponse| r.hash;
    let h1 = hash(m1.hash(HashRequest {}).await.unwrap().into_inner());
    let h2 = hash(m2.hash(HashRequest {}).await.unwrap().into_inner());
    assert_eq!(h1, h2, "same writes, same backend hash");
    let k1 = m1.hash_kv(HashKvRequest { revision: 0 }).await.unwrap();
    let k2 = m2.hash_kv(HashKvRequest { revision: 0 }).await.unwrap();
    assert_eq!(k1.into_inner().hash, k2.into_inner().hash);

    put(&mut kv2, "extra", b"x").await;
    let h2 = hash(m2.hash(HashRequest {}).await.unwrap().into_inner());
    assert_ne!(h1, h2, "a different write, a different hash");
}

#[tokio::test]
async fn defragment_keeps_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let mut kv = node.kv().await;
    let mut m = node.maint().await;
    fill(&mut kv, "keep/", 2000, &[b'k'; 100]).await;
    fill(&mut kv, "drop/", 5000, &[b'd'; 500]).await;
    delete_prefix(&mut kv, "drop/").await;
    compact_now(&mut kv).await;
    let before = m.status(StatusRequest {}).await.unwrap().into_inner();
    let d = m
        .defragment(DefragmentRequest {})
        .await
        .unwrap()
        .into_inner();
    // As etcd 3.4: an empty answer, no header (tests/compat_fields.rs).
    assert!(d.header.is_none(), "{d:?}");
    let after = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        after.db_size < before.db_size,
        "defragmentation shrinks the file: {} -> {}",
        before.db_size,
        after.db_size
    );
    assert_eq!(count_prefix(&mut kv, "keep/").await, 2000);
    assert_eq!(count_prefix(&mut kv, "drop/").await, 0);
    assert_eq!(get(&mut kv, "keep/001999").await, Some(vec![b'k'; 100]));
    put(&mut kv, "after", b"defrag").await;
    assert_eq!(get(&mut kv, "after").await, Some(b"defrag".to_vec()));
}

#[tokio::test]
async fn snapshot_streams_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    let mut kv = node.kv().await;
    fill(&mut kv, "s/", 1000, &[b'v'; 200]).await;
    let rev = put(&mut kv, "last", b"one").await;
    let mut m = node.maint().await;
    let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(c) = tokio::time::timeout(CALL_BOUND, stream.message())
        .await
        .expect("chunk in time")
        .expect("stream ok")
    {
        chunks.push(c);
    }
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    // remaining_bytes counts down to 0 over the data; then etcd's SHA-256 trailer.
    let (trailer, data) = chunks.split_last().unwrap();
    let total: usize = data.iter().map(|c| c.blob.len()).sum();
    let mut left = total as u64;
    for c in data {
        assert!(c.blob.len() <= 32 * 1024);
        left -= c.blob.len() as u64;
        assert_eq!(c.remaining_bytes, left);
    }
    assert_eq!(data.last().unwrap().remaining_bytes, 0);
    assert_eq!(trailer.remaining_bytes, 0);
    assert_eq!(trailer.blob.len(), 32);
    let mut sha = Sha256::new();
    let mut file = Vec::new();
    for c in data {
        sha.update(&c.blob);
        file.extend_from_slice(&c.blob);
    }
    assert_eq!(
        sha.finalize().to_vec(),
        trailer.blob,
        "trailer is the data's sha256"
    );
    // As `etcdctl snapshot save` stores it: data then checksum.
    file.extend_from_slice(&trailer.blob);
    node.kill();

    // Restore: `mini-etcd snapshot restore` builds a fresh data dir (etcd's format, see
    // tests/snapshot_etcd.rs for etcd and etcdctl on the same files).
    let restored_parent = tempfile::tempdir().unwrap();
    let saved = restored_parent.path().join("snap.db");
    std::fs::write(&saved, &file).unwrap();
    let restored = restored_parent.path().join("data");
    let (status, out) = common::run_cli(
        &[
            "snapshot",
            "restore",
            saved.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        common::EXIT_BOUND,
    )
    .await;
    assert!(status.success(), "snapshot restore: {out}");
    let node = Node::start(&restored, &[]).await;
    let mut kv = node.kv().await;
    assert_eq!(get(&mut kv, "last").await, Some(b"one".to_vec()));
    assert_eq!(count_prefix(&mut kv, "s/").await, 1000);
    let next = put(&mut kv, "new", b"write").await;
    assert_eq!(next, rev + 1, "revisions continue from the snapshot");
    // And the restored member keeps its writes across a restart.
    drop(kv);
    drop(node);
    let node = Node::start(&restored, &[]).await;
    let mut kv = node.kv().await;
    assert_eq!(get(&mut kv, "new").await, Some(b"write".to_vec()));
    assert_eq!(count_prefix(&mut kv, "s/").await, 1000);
}

#[tokio::test]
async fn nospace_alarm_blocks_writes_until_space_is_freed_and_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--quota-backend-bytes", "200000"]).await;
    let mut kv = node.kv().await;
    let mut m = node.maint().await;
    let member = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id;
    let value = vec![b'x'; 5000];
    let mut refused = None;
    for i in 0..500 {
        let r = kv
            .put(PutRequest {
                key: format!("big/{i:04}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })
            .await;
        if let Err(e) = r {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the quota stops writes");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
    // Reads still work; further writes fail the same way; deletes are allowed.
    assert_eq!(get(&mut kv, "big/0000").await, Some(value.clone()));
    let e = kv
        .put(PutRequest {
            key: b"small".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
    let list = alarm_list(&mut m).await;
    assert_eq!(list.alarms.len(), 1);
    assert_eq!(list.alarms[0].member_id, member);
    assert_eq!(list.alarms[0].alarm, AlarmType::Nospace as i32);
    let s = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.errors, vec![format!("memberID:{member} alarm:NOSPACE ")]);

    // Free the space: delete, compact, defragment, then disarm.
    delete_prefix(&mut kv, "big/").await;
    compact_now(&mut kv).await;
    m.defragment(DefragmentRequest {}).await.unwrap();
    let disarmed = m
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: member,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        disarmed.alarms.len(),
        1,
        "etcd answers the alarm it cleared"
    );
    put(&mut kv, "small", b"1").await;
    let list = alarm_list(&mut m).await;
    assert!(list.alarms.is_empty());
}

#[tokio::test]
async fn members_leader_and_auth_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--name", "solo"]).await;
    let mut c = ClusterClient::new(node.channel().await);
    let r = c
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .unwrap()
        .into_inner();
    let h = r.header.expect("header");
    assert_eq!(r.members.len(), 1);
    let me = &r.members[0];
    assert_eq!(me.id, h.member_id);
    assert_eq!(me.name, "solo");
    assert_eq!(me.client_ur_ls, vec![node.client_url.clone()]);
    assert_eq!(me.peer_ur_ls, vec!["http://127.0.0.1:2380".to_string()]);
    assert!(!me.is_learner);
    // Membership changes are checked before they are proposed, with etcd's codes and texts.
    let e = c
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "etcdserver: Peer URLs already exists");
    let e = c
        .member_remove(MemberRemoveRequest { id: 1234 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(e.message(), "etcdserver: member not found");
    let e = c
        .member_promote(MemberPromoteRequest { id: h.member_id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "etcdserver: can only promote a learner member");

    let mut m = node.maint().await;
    m.move_leader(MoveLeaderRequest {
        target_id: h.member_id,
    })
    .await
    .expect("moving leadership to the leader itself is a no-op");
    let e = m
        .move_leader(MoveLeaderRequest { target_id: 1234 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "etcdserver: bad leader transferee");

    let mut a = AuthClient::new(node.channel().await);
    let s = a
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.enabled);
    assert!(a
        .user_list(AuthUserListRequest {})
        .await
        .unwrap()
        .into_inner()
        .users
        .is_empty());
    let e = a
        .user_get(AuthUserGetRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "etcdserver: user name not found");
    let e = a
        .authenticate(AuthenticateRequest {
            name: "u".into(),
            password: "p".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "etcdserver: authentication is not enabled");
}

/// Measures how long writes stall while 100k keys are defragmented. Slow; run with
/// `cargo test --release --test grpc_maintenance_server -- --ignored --nocapture defrag_blocking`.
#[tokio::test]
#[ignore]
async fn defrag_blocking_with_100k_keys() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let mut kv = node.kv().await;
    let t = Instant::now();
    fill(&mut kv, "k/", 100_000, &[b'v'; 100]).await;
    println!("loaded 100k keys in {:?}", t.elapsed());
    // Half the keys go, and compaction frees their records, so there is something to give back.
    for p in ["k/00", "k/01", "k/02", "k/03", "k/04"] {
        delete_prefix(&mut kv, p).await;
    }
    compact_now(&mut kv).await;
    let mut m = node.maint().await;
    let before = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size;

    // Baseline write latency.
    let mut baseline = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        put(&mut kv, &format!("base/{i}"), b"x").await;
        baseline = baseline.max(t.elapsed());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut kv = node.kv().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut worst, mut n) = (Duration::ZERO, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                put(&mut kv, &format!("during/{n}"), b"x").await;
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (worst, n)
        })
    };
    let reader = {
        let mut kv = node.kv().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                get(&mut kv, "k/5").await;
                get(&mut kv, "k/055555").await;
                worst = worst.max(t.elapsed());
            }
            worst
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    m.defragment(DefragmentRequest {}).await.unwrap();
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst_write, writes) = writer.await.unwrap();
    let worst_read = reader.await.unwrap();
    let after = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size;
    let held = common::read_log(&node.log)
        .lines()
        .filter(|l| l.contains("backend defragmented"))
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    println!(
        "defragment took {took:?}; db {before} -> {after} bytes; {writes} writes during it; worst \
         write {worst_write:?} (baseline worst {baseline:?}); worst read pair {worst_read:?}; \
         server: {held:?}"
    );
    assert_eq!(count_prefix(&mut kv, "k/").await, 50_000);
    assert!(after < before, "the file shrank");
}
