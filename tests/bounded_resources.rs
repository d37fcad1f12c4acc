//! Bounded resources (issue 17): snapshot copies are one file per transfer, bounded, accounted by
//! the quota, removed at start and when a client stops reading; a full disk stops the member without
//! losing anything it acknowledged; a flood of compaction requests costs no thread each.
//!
//! The disk-full cases use the server's test-only switch (`MINI_ETCD_TEST_DISK_FULL_FILE`): a file
//! naming `wal` or `backend` makes the next WAL append or backend commit fail with `ENOSPC`, as a full
//! disk would, without needing a small filesystem (mounting one needs privileges CI may not have).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_acked_present, start_switched, Server, Switched};
use mini_etcd::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mini_etcd::proto::etcdserverpb::{SnapshotRequest, SnapshotResponse};
use tonic::transport::{Channel, Endpoint};

/// How long the server may take to notice what a test did (a bound, not a measurement).
const BOUND: Duration = Duration::from_secs(15);

/// A Maintenance client whose HTTP/2 windows are the protocol's minimum (64 KiB): a stream it does
/// not read stops the server's sending after 64 KiB, however large the snapshot.
async fn small_window_client(server: &Server) -> MaintenanceClient<Channel> {
    let channel = Endpoint::from_shared(server.client_url())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    MaintenanceClient::new(channel).max_decoding_message_size(64 << 20)
}

/// The temporary client snapshot copies in the data directory.
fn snapshot_copies(data_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data_dir.join("member"))
        .expect("member dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("db.snapshot.") && n.ends_with(".tmp"))
        })
        .collect();
    found.sort();
    found
}

/// Puts `n` values of `size` bytes (through the REST API, 8 at a time); returns the last revision.
async fn fill(server: &Server, prefix: &str, n: usize, size: usize) -> i64 {
    let value = "x".repeat(size);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let rest = server.rest();
        let value = value.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in (t..n).step_by(8) {
                last = last.max(rest.put(&format!("{prefix}{i:05}"), &value).await);
            }
            last
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.expect("put task"));
    }
    last
}

/// Reads a whole snapshot stream; returns its bytes (trailer included).
async fn read_snapshot(m: &mut MaintenanceClient<Channel>) -> Vec<u8> {
    try_read_snapshot(m).await.expect("snapshot")
}

/// [`read_snapshot`], or the status the call was refused with.
async fn try_read_snapshot(m: &mut MaintenanceClient<Channel>) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = m.snapshot(SnapshotRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("snapshot chunk") {
        bytes.extend_from_slice(&chunk.blob);
    }
    Ok(bytes)
}

async fn wait_until(what: &str, server: &Server, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {BOUND:?}; log:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_snapshot_files_are_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]).await;
    server.rest().put("k", "v").await;
    server.stop().await;

    let member = data.join("member");
    let stale = [
        member.join("db.snapshot.4242.0.tmp"),
        member.join("db.defrag"),
        member.join("snap").join("send-0000000000000010-0.db"),
        member.join("snap").join("recv-0000000000000010-4242.db"),
    ];
    for f in &stale {
        std::fs::write(f, vec![7u8; 4096]).expect("plant a stale file");
    }
    let unrelated = member.join("snap").join("notes.txt");
    std::fs::write(&unrelated, "mine").expect("plant an unrelated file");

    server.restart().await;
    for f in &stale {
        assert!(!f.exists(), "{} survived the start", f.display());
    }
    assert!(
        unrelated.exists(),
        "a file that is not a snapshot copy was removed"
    );
    assert_eq!(server.rest().get("k").await.expect("k").value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_calls_beyond_max_snapshot_copies_are_refused_and_slots_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--max-snapshot-copies", "1"]).await;
    fill(&server, "k/", 200, 10_000).await;

    let mut holder = small_window_client(&server).await;
    let mut held = holder
        .snapshot(SnapshotRequest {})
        .await
        .expect("first snapshot")
        .into_inner();
    let first: SnapshotResponse = held.message().await.expect("chunk").expect("a chunk");
    assert!(first.remaining_bytes > 0);
    assert_eq!(snapshot_copies(&data).len(), 1);

    let mut other = small_window_client(&server).await;
    let refused = other
        .snapshot(SnapshotRequest {})
        .await
        .expect_err("a second copy beyond --max-snapshot-copies 1");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(refused.message(), "etcdserver: too many requests");
    assert_eq!(snapshot_copies(&data).len(), 1, "no second copy was made");

    // The client goes away: its copy is removed and its slot comes back.
    drop(held);
    drop(holder);
    wait_until("the abandoned copy removed", &server, || {
        snapshot_copies(&data).is_empty()
    })
    .await;
    let bytes = read_snapshot(&mut other).await;
    assert!(bytes.len() > 1_000_000, "{} bytes", bytes.len());
    assert!(snapshot_copies(&data).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_client_that_stops_reading_is_given_up_after_the_send_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--snapshot-send-timeout",
            "1s",
            "--max-snapshot-copies",
            "1",
        ],
    )
    .await;
    fill(&server, "k/", 300, 10_000).await;

    let mut stalled_client = small_window_client(&server).await;
    let mut stalled = stalled_client
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let first = stalled.message().await.expect("chunk").expect("a chunk");
    let total = first.remaining_bytes + first.blob.len() as u64;
    assert_eq!(snapshot_copies(&data).len(), 1);

    // The client reads nothing more; the connection stays open. The server gives up: the copy goes.
    wait_until("the stalled transfer's copy removed", &server, || {
        snapshot_copies(&data).is_empty()
    })
    .await;
    assert!(
        server.log_tail().contains("--snapshot-send-timeout"),
        "the log does not say why the transfer ended:\n{}",
        server.log_tail()
    );
    // Its slot is free again: a client that reads gets a whole snapshot. (The copy's file goes
    // just before its slot does, so a call at that instant may still be told `too many requests`:
    // it is asked again, within the bound.)
    let mut reader = small_window_client(&server).await;
    let deadline = Instant::now() + BOUND;
    let bytes = loop {
        match try_read_snapshot(&mut reader).await {
            Ok(bytes) => break bytes,
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("snapshot after the slot came back: {status:?}"),
        }
    };
    assert!(
        bytes.len() as u64 >= total,
        "{} of {total} bytes",
        bytes.len()
    );

    // The stalled client, reading again, gets what was in flight and then an error: never a stream
    // that ends as if it were complete.
    let mut got = first.blob.len() as u64;
    let ended = loop {
        match stalled.message().await {
            Ok(Some(chunk)) => got += chunk.blob.len() as u64,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = ended.unwrap_or_else(|| {
        panic!("the abandoned stream ended cleanly after {got} of {total} bytes")
    });
    assert!(got < total, "{got} of {total}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// While a client's Snapshot call writes its copy and while its stream is held open, the member
/// directory holds one file beside what it held before: the copy the stream is sent from, never
/// larger than what the stream sends. No intermediate copy is made on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_writes_one_file_beside_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]).await;
    fill(&server, "k/", 400, 10_000).await;

    let member = data.join("member");
    let names = |dir: &Path| -> Vec<(String, u64)> {
        std::fs::read_dir(dir)
            .expect("member dir")
            .filter_map(|e| e.ok())
            .map(|e| {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().into_owned(), size)
            })
            .collect()
    };
    let before: BTreeSet<String> = names(&member).into_iter().map(|(n, _)| n).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, member) = (stop.clone(), member.clone());
        std::thread::spawn(move || {
            // Every new name seen, with the largest size seen for it.
            let mut seen = BTreeMap::<String, u64>::new();
            loop {
                let last = stop.load(Ordering::Acquire);
                for (name, size) in names(&member) {
                    if !before.contains(&name) {
                        let peak = seen.entry(name).or_default();
                        *peak = (*peak).max(size);
                    }
                }
                if last {
                    return seen;
                }
            }
        })
    };
    let mut holder = small_window_client(&server).await;
    let mut held = holder
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let first = held.message().await.expect("chunk").expect("a chunk");
    let total = first.remaining_bytes + first.blob.len() as u64;
    // Held open, unread: the transfer waits for its reader with its copy on disk.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let seen = watcher.join().expect("watcher");
    assert_eq!(seen.len(), 1, "files beside the backend: {seen:?}");
    let (name, peak) = seen.into_iter().next().expect("one file");
    assert!(
        name.starts_with("db.snapshot.") && name.ends_with(".tmp"),
        "{name}"
    );
    assert!(total > 3_000_000, "{total} bytes");
    assert_eq!(peak, total, "the copy is the bytes the stream sends");
    assert_eq!(snapshot_copies(&data).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_copies_count_against_the_space_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]).await;
    fill(&server, "k/", 200, 10_000).await;
    let mut m = small_window_client(&server).await;
    let copy_bytes = read_snapshot(&mut m).await.len() as u64;
    drop(m);
    server.stop().await;
    let db_bytes = std::fs::metadata(data.join("member").join("db"))
        .expect("db")
        .len();

    // Room for the database and writes, not for the database plus a copy of it.
    let quota = (db_bytes + copy_bytes / 2).to_string();
    let server = Server::start(&data, &["--quota-backend-bytes", &quota]).await;
    server.rest().put("fits", "1").await;

    let mut holder = small_window_client(&server).await;
    let mut held = holder
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    held.message().await.expect("chunk").expect("a chunk");
    let refused = server.rest().try_put("over", "1").await.expect("an answer");
    refused.assert_error(503, "database space exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_with_less_free_space_than_the_reserve_raises_nospace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // More than any test machine's disk holds free: every growing write leaves less than this.
    let server = Server::start(&data, &["--disk-reserve-bytes", "1152921504606846976"]).await;
    let refused = server.rest().try_put("k", "v").await.expect("an answer");
    refused.assert_error(503, "a write with the disk below its reserve");
    assert!(
        refused.body.contains("database space exceeded"),
        "{}",
        refused.body
    );
    assert!(
        server.log_tail().contains("--disk-reserve-bytes"),
        "the log does not say why:\n{}",
        server.log_tail()
    );
    let alarms = reqwest::Client::new()
        .post(format!("{}/v3/maintenance/alarm", server.client_url()))
        .body(r#"{"action": "GET"}"#)
        .send()
        .await
        .expect("alarm list")
        .text()
        .await
        .expect("alarm body");
    assert!(alarms.contains("NOSPACE"), "{alarms}");

    // Reads and deletes still go through, so an operator can free space.
    assert!(server.rest().get("k").await.is_none());
    server.rest().delete("k").await;
}

/// Sets the disk-full switch to `what` while writes go on; checks that the member stops (non-zero
/// exit, the reason in the log), then that after the switch is cleared it starts again with every
/// acknowledged write and serves writes.
async fn a_full_disk_stops_the_member(what: &str) {
    let Switched {
        dir: _dir,
        switch,
        mut server,
        mut acked,
    } = start_switched("MINI_ETCD_TEST_DISK_FULL_FILE").await;
    let rest = server.rest();

    std::fs::write(&switch, what).expect("set the switch");
    // Writes go on until the member stops; every one acknowledged must survive.
    let deadline = Instant::now() + BOUND;
    let mut i = 0;
    loop {
        let key = format!("during/{i}");
        i += 1;
        match rest.try_put(&key, "v").await {
            Ok(r) if r.status == 200 => {
                acked.push((key, common::as_i64(&r.json(), "revision")));
            }
            _ => break,
        }
        assert!(
            Instant::now() < deadline,
            "{what}: writes still acknowledged {BOUND:?} after the disk filled; log:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, log) = server.wait_for_exit().await;
    assert!(
        !status.success(),
        "{what}: exited with {status}; log:\n{log}"
    );
    assert!(
        log.contains("No space left on device") && log.contains("fatal"),
        "{what}: the log does not say the disk is full:\n{log}"
    );

    std::fs::remove_file(&switch).expect("clear the switch");
    server.restart().await;
    let rest = server.rest();
    assert_acked_present(&rest, &acked, what).await;
    rest.put("after", "v").await;
    assert_eq!(rest.get("after").await.expect("after").value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_wal_write_stops_the_member_and_loses_nothing_acknowledged() {
    a_full_disk_stops_the_member("wal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_backend_commit_stops_the_member_and_loses_nothing_acknowledged() {
    a_full_disk_stops_the_member("backend").await;
}

/// `Threads:` of `/proc/PID/status`.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_compaction_requests_costs_no_thread_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]).await;
    // Several revisions per key, so that every prune has work to do.
    let mut last = 0;
    for _ in 0..5 {
        last = fill(&server, "c/", 2000, 100).await;
    }
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = threads_of(pid);

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(threads_of(pid));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let client = reqwest::Client::new();
    let url = format!("{}/v3/kv/compaction", server.client_url());
    let mut requests = Vec::new();
    for i in 0..500i64 {
        // Rising revisions, sent all at once: most arrive above the last one compacted and prune.
        let revision = 2 + i * (last - 2) / 500;
        let (client, url) = (client.clone(), url.clone());
        requests.push(tokio::spawn(async move {
            let r = client
                .post(&url)
                .body(format!("{{\"revision\": \"{revision}\"}}"))
                .send()
                .await
                .expect("compaction request");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (status, body)
        }));
    }
    for r in requests {
        let (status, body) = r.await.expect("request task");
        assert!(
            status == 200 || body.contains("required revision has been compacted"),
            "{status} {body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.expect("sampler");
    assert!(
        most < baseline + 16,
        "threads rose from {baseline} to {most} under 500 compaction requests"
    );
    eprintln!("threads: {baseline} before, at most {most} during 500 compaction requests");
    // It still serves, and the compaction took effect.
    let rest = server.rest();
    rest.put("after", "v").await;
    assert_eq!(rest.get("after").await.expect("after").value, "v");
}
