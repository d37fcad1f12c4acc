//! Snapshots in etcd's format, both ways, against real etcd 3.4 and etcdctl 3.4.
//!
//! - etcd -> `etcdctl snapshot save` -> `mini-etcd snapshot restore` -> mini-etcd serves the same
//!   keys, values, revisions, versions, history (a deleted key's), compaction and lease.
//! - mini-etcd -> `etcdctl snapshot save` -> `etcdctl snapshot status` -> `etcdctl snapshot
//!   restore` -> real etcd serves the same.
//! - A snapshot with one byte flipped, or cut short, is refused by both restores, and neither
//!   leaves a data directory behind.
//! - `mini-etcd snapshot status` prints what `etcdctl snapshot status` prints, in every format.
//! - A snapshot taken while transactions go on restores, by either tool, to exactly its revision.
//!
//! Each test starts etcd (`/usr/bin/etcd`, or `COMPAT_REFERENCE_ETCD`) with the shared starter
//! (`compat/etcd.rs`) on free loopback ports; a missing etcd or etcdctl fails the test, it is never
//! skipped. Every wait is bounded.

mod common;
mod compat;

use std::path::Path;
use std::process::{Command, Stdio};

use compat::etcd::{Etcd, EtcdOptions};
use compat::{connect_url, etcdctl_path, ok};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};

/// A free loopback peer URL.
fn peer_url() -> String {
    format!("http://127.0.0.1:{}", common::free_ports(1)[0])
}

/// Runs a program to completion (bounded by the caller's test timeout): (success, stdout, stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn etcdctl(args: &[&str]) -> (bool, String, String) {
    run(&etcdctl_path(), args)
}

fn mini(args: &[&str]) -> (bool, String, String) {
    run(Path::new(&common::bin()), args)
}

/// `etcdctl snapshot restore FILE` into `data` as a one-member cluster `dst`, and etcd started on it.
async fn etcd_restored_from(file: &Path, data: &Path) -> Etcd {
    let peer = peer_url();
    let (restored, out, err) = etcdctl(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--name",
        "dst",
        "--initial-cluster",
        &format!("dst={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(restored, "etcdctl snapshot restore: {out} {err}");
    Etcd::start_opts(EtcdOptions {
        data_dir: Some(data.to_path_buf()),
        name: Some("dst".into()),
        peer_url: Some(peer),
        ..EtcdOptions::default()
    })
    .await
}

/// `etcdctl --endpoints=URL snapshot save FILE`.
fn save(url: &str, file: &Path) {
    let (ok, out, err) = etcdctl(&[
        &format!("--endpoints={url}"),
        "--dial-timeout=10s",
        "--command-timeout=30s",
        "snapshot",
        "save",
        &file.display().to_string(),
    ]);
    assert!(ok, "snapshot save: {out} {err}");
}

/// The history every test writes: revisions 2..=7 with an update, a delete, a compaction at 3
/// and a key on a lease. Returns the lease id.
async fn write_history(c: &mut Client) -> i64 {
    ok("put a", c.put("a", "1", None).await); // 2
    ok("put b", c.put("b", "2", None).await); // 3
    ok("put a", c.put("a", "3", None).await); // 4
    ok("delete b", c.delete("b", None).await); // 5
    let lease = ok("grant", c.lease_grant(600, None).await).id();
    let put = etcd_client::PutOptions::new().with_lease(lease);
    ok("put c", c.put("c", "4", Some(put)).await); // 6
    ok("put d", c.put("d", "x".repeat(10_000), None).await); // 7: spans overflow pages
    let physical = etcd_client::CompactionOptions::new().with_physical();
    ok("compact", c.compact(3, Some(physical)).await);
    lease
}

/// Every live key as (key, value, create, mod, version, lease), and the current revision.
type Keys = Vec<(String, String, i64, i64, i64, i64)>;

async fn keys(c: &mut Client) -> (Keys, i64) {
    let resp = ok(
        "get all",
        c.get("", Some(GetOptions::new().with_from_key())).await,
    );
    let rev = resp.header().expect("header").revision();
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_string(),
                kv.value_str().unwrap_or_default().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (kvs, rev)
}

/// Checks what a restored server serves against what the source served.
async fn check_restored(what: &str, c: &mut Client, expect: &(Keys, i64), lease: i64) {
    assert_eq!(&keys(c).await, expect, "{what}: live keys and revision");
    // The deleted key's history: it existed at 4, not at 5.
    let at4 = ok(
        "get b@4",
        c.get("b", Some(GetOptions::new().with_revision(4))).await,
    );
    assert_eq!(at4.kvs().len(), 1, "{what}: b at revision 4");
    assert_eq!(at4.kvs()[0].value_str().unwrap_or_default(), "2");
    let at5 = ok(
        "get b@5",
        c.get("b", Some(GetOptions::new().with_revision(5))).await,
    );
    assert!(at5.kvs().is_empty(), "{what}: b deleted at 5");
    // Below the compaction: refused.
    let err = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .expect_err("revision 2 is compacted");
    assert!(err.to_string().contains("compacted"), "{what}: {err}");
    // The lease, with its key.
    let ttl = ok(
        "lease ttl",
        c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
    );
    assert!(ttl.ttl() > 0, "{what}: lease alive after restore");
    assert_eq!(ttl.keys(), [b"c".to_vec()], "{what}: lease keys");
}

/// `status` of a file as (etcdctl's, ours), for each format.
fn statuses_agree(file: &Path) {
    let f = file.display().to_string();
    for w in ["simple", "json", "table"] {
        let (ok1, theirs, e1) = etcdctl(&["snapshot", "status", &f, "-w", w]);
        let (ok2, ours, e2) = mini(&["snapshot", "status", &f, "-w", w]);
        assert!(ok1, "etcdctl snapshot status: {e1}");
        assert!(ok2, "mini-etcd snapshot status: {e2}");
        assert_eq!(ours, theirs, "snapshot status -w {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_restores_into_mini_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let lease = write_history(&mut c).await;
    let expect = keys(&mut c).await;
    let file = dir.path().join("etcd.db");
    save(&etcd.url, &file);
    drop(etcd);
    statuses_agree(&file);

    let data = dir.path().join("restored");
    let (ok_restore, out, err) = mini(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert!(ok_restore, "mini-etcd snapshot restore: {out} {err}");
    let server = common::Server::start(&data, &[]).await;
    let mut m = compat::connect(&server).await;
    check_restored("mini-etcd from etcd's snapshot", &mut m, &expect, lease).await;
    // And it goes on from there: the next write is the next revision.
    let put = ok("put after restore", m.put("e", "5", None).await);
    assert_eq!(put.header().expect("header").revision(), expect.1 + 1);
}

/// etcd's snapshot restored into three members, as `etcdctl snapshot restore` is run once per
/// member with its `--name` and the shared `--initial-cluster`: they form one cluster, each serves
/// the snapshot's data at its revision, and the next write is the next revision on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_restores_into_a_three_member_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let lease = write_history(&mut c).await;
    let expect = keys(&mut c).await;
    let file = dir.path().join("etcd.db");
    save(&etcd.url, &file);
    drop(etcd);

    let cluster = common::cluster::Cluster::start_prepared(3, &[], |cl, i| {
        let m = &cl.members[i];
        let (restored, out, err) = mini(&[
            "snapshot",
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--name",
            &m.name,
            "--initial-cluster",
            &m.initial_cluster,
            "--initial-cluster-token",
            &cl.token,
            "--initial-advertise-peer-urls",
            &m.peer_url(),
        ]);
        assert!(restored, "restore for {}: {out} {err}", m.name);
    })
    .await;
    for m in &cluster.members {
        let mut client = connect_url(&m.client_url(), || m.log_tail()).await;
        check_restored(&format!("member {}", m.name), &mut client, &expect, lease).await;
    }
    let rev = cluster.put(1, "e", "5").await.expect("put after restore");
    assert_eq!(rev, expect.1 + 1, "the next write is the next revision");
    for (i, m) in cluster.members.iter().enumerate() {
        let mut client = connect_url(&m.client_url(), || m.log_tail()).await;
        let got = ok("get e", client.get("e", None).await);
        assert_eq!(got.kvs().len(), 1, "member {i} has e");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_etcd_snapshot_restores_into_etcd() {
    let (server, dir) = compat::start(&[]).await;
    let mut m = compat::connect(&server).await;
    let lease = write_history(&mut m).await;
    let expect = keys(&mut m).await;
    let file = dir.path().join("mini.db");
    save(&server.client_url(), &file);
    statuses_agree(&file);

    let etcd = etcd_restored_from(&file, &dir.path().join("etcd-restored")).await;
    let mut c = etcd.client().await;
    check_restored("etcd from mini-etcd's snapshot", &mut c, &expect, lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_truncated_snapshots_are_refused() {
    let (server, dir) = compat::start(&[]).await;
    let mut m = compat::connect(&server).await;
    write_history(&mut m).await;
    let file = dir.path().join("good.db");
    save(&server.client_url(), &file);
    let good = std::fs::read(&file).expect("read snapshot");

    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x01;
    let flipped_file = dir.path().join("flipped.db");
    std::fs::write(&flipped_file, &flipped).expect("write");
    let truncated_file = dir.path().join("truncated.db");
    std::fs::write(&truncated_file, &good[..good.len() - 1000]).expect("write");

    for bad in [&flipped_file, &truncated_file] {
        let b = bad.display().to_string();
        let ours = dir.path().join("ours");
        let (ok1, _, err) = mini(&[
            "snapshot",
            "restore",
            &b,
            "--data-dir",
            &ours.display().to_string(),
        ]);
        assert!(!ok1, "mini-etcd restored {b}");
        assert!(err.contains("hash") || err.contains("sha256"), "{err}");
        assert!(!ours.exists(), "mini-etcd left {} behind", ours.display());

        let theirs = dir.path().join("theirs");
        let peer = peer_url();
        let (ok2, _, _) = etcdctl(&[
            "snapshot",
            "restore",
            &b,
            "--data-dir",
            &theirs.display().to_string(),
            "--name",
            "x",
            "--initial-cluster",
            &format!("x={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ]);
        assert!(!ok2, "etcdctl restored {b}");
    }
    // Nothing was half-restored beside the target either.
    let strays: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

/// Every live key of a restored server as (key, value, mod revision), with its revision.
async fn pairs(c: &mut Client) -> (Vec<(String, String, i64)>, i64) {
    let resp = ok(
        "get all",
        c.get("", Some(GetOptions::new().with_from_key())).await,
    );
    let rev = resp.header().expect("header").revision();
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_string(),
                kv.value_str().unwrap_or_default().to_string(),
                kv.mod_revision(),
            )
        })
        .collect();
    (kvs, rev)
}

/// What a restore of the snapshot at `snap_rev` must serve: that revision, no key written after it,
/// and every writer's three keys, which it only ever writes together in one transaction, equal.
fn assert_one_revision(what: &str, (kvs, rev): &(Vec<(String, String, i64)>, i64), snap_rev: i64) {
    assert_eq!(*rev, snap_rev, "{what}: the restored revision");
    let mut writers = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (key, value, mod_rev) in kvs {
        assert!(
            *mod_rev <= snap_rev,
            "{what}: {key} at {mod_rev} > {snap_rev}"
        );
        if let Some((writer, _)) = key.strip_prefix("w/").and_then(|k| k.split_once('/')) {
            writers
                .entry(writer.to_string())
                .or_default()
                .push(value.clone());
        }
    }
    assert!(!writers.is_empty(), "{what}: no writer's keys");
    for (writer, values) in &writers {
        assert_eq!(values.len(), 3, "{what}: writer {writer}: {values:?}");
        assert!(
            values.iter().all(|v| v == &values[0]),
            "{what}: writer {writer} half-applied: {values:?}"
        );
    }
}

/// A snapshot taken while transactions go on is one revision's state: restored by
/// `mini-etcd snapshot restore` and by `etcdctl snapshot restore` (into real etcd), the store is at
/// the snapshot's revision, holds nothing written after it, and no transaction is half in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_writes_restores_to_one_revision() {
    let (server, dir) = compat::start(&[]).await;
    let mut m = compat::connect(&server).await;
    // A few MiB, so that the snapshot takes long enough for writes to land while it is written.
    let big = "x".repeat(4096);
    for i in 0..1000 {
        ok(
            "fill",
            m.put(format!("fill/{i:04}"), big.as_str(), None).await,
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = compat::connect(&server).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let value = n.to_string();
                let ops: Vec<etcd_client::TxnOp> = ["a", "b", "c"]
                    .iter()
                    .map(|k| etcd_client::TxnOp::put(format!("w/{w}/{k}"), value.as_str(), None))
                    .collect();
                ok("txn", c.txn(etcd_client::Txn::new().and_then(ops)).await);
            }
            n
        }));
    }
    // Let every writer land a few transactions first.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let file = dir.path().join("under-writes.db");
    let (url, at) = (server.client_url(), file.clone());
    tokio::task::spawn_blocking(move || save(&url, &at))
        .await
        .expect("save");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(w.await.expect("writer") > 0);
    }
    let after = keys(&mut m).await.1;
    let (done, out, err) = mini(&[
        "snapshot",
        "status",
        &file.display().to_string(),
        "-w",
        "json",
    ]);
    assert!(done, "snapshot status: {out} {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let snap_rev = status["revision"].as_i64().expect("revision");
    assert!(
        snap_rev < after,
        "writes went on: snapshot at {snap_rev}, store at {after}"
    );

    let ours = dir.path().join("ours");
    let (restored, out, err) = mini(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &ours.display().to_string(),
    ]);
    assert!(restored, "mini-etcd snapshot restore: {out} {err}");
    let restored = common::Server::start(&ours, &[]).await;
    let mut r = compat::connect(&restored).await;
    assert_one_revision("mini-etcd", &pairs(&mut r).await, snap_rev);

    let etcd = etcd_restored_from(&file, &dir.path().join("theirs")).await;
    let mut c = etcd.client().await;
    assert_one_revision("etcd", &pairs(&mut c).await, snap_rev);
}
