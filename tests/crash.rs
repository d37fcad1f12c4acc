//! Crash safety: an acknowledged write survives `kill -9`; a torn WAL tail (what a crash mid-append leaves)
//! is cut on recovery; damage in the middle of the WAL is never silently skipped but reported, naming the
//! file and the `repair` command, and `mini-etcd repair` brings the member back.
//!
//! The kill point is whatever moment the writers happen to be at; the assertions hold for every such moment:
//! each write that got a 200 is present with its value and revision, writes that got no answer may or may not
//! be present.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{as_i64, as_str, bin, run_cli, wal_files, Rest, Server};
use futures::stream::{self, StreamExt};

/// One write the server answered with 200.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    revision: i64,
}

/// What one writer task saw.
#[derive(Debug, Default)]
struct WriterReport {
    acked: Vec<Acked>,
    /// Failures seen while the server was supposed to be up (non-200 answers, transport errors): a bug.
    unexpected: Vec<String>,
}

const WRITERS: usize = 8;
/// Per writer per cycle; large enough that the kill, not the cap, ends every cycle.
const WRITES_PER_WRITER_CAP: usize = 20_000;
/// Kill once this many writes were acknowledged in the cycle (`CRASH_KILL_AFTER_ACKS` overrides it for
/// a longer run by hand)...
fn kill_after_acks() -> usize {
    std::env::var("CRASH_KILL_AFTER_ACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(WRITERS * WRITES_PER_WRITER_CAP / 2)
}
/// ...or once this much time passed, whichever comes first (a bound on test time, not an assertion).
const KILL_AFTER: Duration = Duration::from_secs(30);

async fn writer(
    rest: Rest,
    cycle: usize,
    id: usize,
    acks: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) -> WriterReport {
    let mut report = WriterReport::default();
    for i in 0..WRITES_PER_WRITER_CAP {
        let key = format!("crash/c{cycle}/w{id}/{i:05}");
        let value = format!("v-{cycle}-{id}-{i}");
        match rest.try_put(&key, &value).await {
            Ok(resp) if resp.status == 200 => {
                let v = resp.json();
                assert_eq!(as_str(&v, "key"), key);
                report.acked.push(Acked {
                    key,
                    value,
                    revision: as_i64(&v, "revision"),
                });
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) => {
                if !killed.load(Ordering::SeqCst) {
                    report.unexpected.push(format!(
                        "put {key}: status {} body {:?}",
                        resp.status, resp.body
                    ));
                }
                break;
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    report.unexpected.push(format!("put {key}: {e:?}"));
                }
                break;
            }
        }
        if killed.load(Ordering::SeqCst) {
            break;
        }
    }
    report
}

/// Checks every acknowledged write against the server, concurrently.
async fn verify(rest: &Rest, acked: &[Acked], when: &str) {
    let failures: Vec<String> = stream::iter(acked.iter().cloned())
        .map(|a| {
            let rest = rest.clone();
            async move {
                match rest.get(&a.key).await {
                    Some(kv)
                        if kv.value == a.value
                            && kv.mod_revision == a.revision
                            && kv.version == 1 =>
                    {
                        None
                    }
                    other => Some(format!("{a:?} read back as {other:?}")),
                }
            }
        })
        .buffer_unordered(16)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{when}: {} of {} acknowledged writes are wrong, first: {:?}",
        failures.len(),
        acked.len(),
        &failures[..failures.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_three_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]).await;
    let mut all_acked: Vec<Acked> = Vec::new();

    for cycle in 0..3 {
        let rest = server.rest();
        let acks = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    rest.clone(),
                    cycle,
                    id,
                    acks.clone(),
                    killed.clone(),
                ))
            })
            .collect();

        let started = Instant::now();
        while acks.load(Ordering::SeqCst) < kill_after_acks() && started.elapsed() < KILL_AFTER {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        killed.store(true, Ordering::SeqCst);
        server.kill9();

        let mut cycle_acked = Vec::new();
        for task in tasks {
            let report = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("writer did not finish after the kill")
                .expect("writer panicked");
            assert!(
                report.unexpected.is_empty(),
                "cycle {cycle}: writes failed while the server was up: {:?}",
                report.unexpected
            );
            cycle_acked.extend(report.acked);
        }
        assert!(
            !cycle_acked.is_empty(),
            "cycle {cycle}: no write was acknowledged before the kill"
        );
        eprintln!(
            "cycle {cycle}: {} writes acknowledged before kill -9",
            cycle_acked.len()
        );
        all_acked.extend(cycle_acked);

        let revisions: HashSet<i64> = all_acked.iter().map(|a| a.revision).collect();
        assert_eq!(
            revisions.len(),
            all_acked.len(),
            "two acknowledged puts share a revision"
        );

        server.restart().await;
        let rest = server.rest();
        verify(&rest, &all_acked, &format!("after kill -9 #{}", cycle + 1)).await;

        // The restarted server takes new writes, numbered after everything acknowledged.
        let max_acked = all_acked.iter().map(|a| a.revision).max().expect("acked");
        let rev = rest.put(&format!("crash/probe/{cycle}"), "alive").await;
        assert!(
            rev > max_acked,
            "new revision {rev} must follow acknowledged revision {max_acked}"
        );
        assert_eq!(
            rest.get(&format!("crash/probe/{cycle}"))
                .await
                .expect("probe")
                .value,
            "alive"
        );
    }
    server.stop().await;
}

/// A put acknowledged just before `kill -9` is in the WAL, but the commit index the WAL holds may not
/// say so yet (it is written with the next Raft turn). The restarted member must not answer reads
/// before it has applied that put; reads served a moment too early once missed it. Five cycles,
/// each killing right after the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_a_crash_restart_sees_the_last_acknowledged_put() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]).await;
    for i in 0..5 {
        let key = format!("last/{i}");
        let revision = server.rest().put(&key, "acked").await;
        server.kill9();
        server.restart().await;
        let kv =
            server.rest().get(&key).await.unwrap_or_else(|| {
                panic!("cycle {i}: {key}, acknowledged at {revision}, is missing")
            });
        assert_eq!(kv.value, "acked", "cycle {i}");
        assert_eq!(kv.mod_revision, revision, "cycle {i}");
    }
}

/// The metrics gauge `name` of `server`.
async fn gauge(server: &Server, name: &str) -> i64 {
    let text = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    common::parse_gauge(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Each run writes fewer entries than `--snapshot-count`, then is killed: the snapshot count must
/// carry over from the WAL's last snapshot mark, or the log is never truncated and every start reads
/// all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_count_from_the_last_snapshot_across_kill_9_restarts() {
    const SNAPSHOT_COUNT: i64 = 50;
    const PUTS_PER_RUN: i64 = 30;
    const RUNS: i64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let count = SNAPSHOT_COUNT.to_string();
    let mut server = Server::start(dir.path(), &["--snapshot-count", &count]).await;
    for run in 0..RUNS {
        let rest = server.rest();
        for i in 0..PUTS_PER_RUN {
            rest.put(&format!("k{}", i % 5), &format!("r{run}-{i}"))
                .await;
        }
        // Let the backend commit (every 100 ms) catch up with the log, as it does in a long run:
        // a start must not count from the backend's index.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill9();
        server.restart().await;
        let applied = gauge(&server, "etcd_server_proposals_applied_total").await;
        let snapshot = gauge(&server, "mini_etcd_snapshot_index").await;
        // Every run before this one wrote fewer than SNAPSHOT_COUNT entries; at most one
        // snapshot's worth plus one run's entries (and the leaders' empty entries) are above the mark.
        assert!(
            applied - snapshot <= SNAPSHOT_COUNT + PUTS_PER_RUN + run + 2,
            "run {run}: the log holds {} entries above the snapshot at {snapshot} (applied \
             {applied}); snapshots did not count across restarts. Log:\n{}",
            applied - snapshot,
            server.log_tail()
        );
    }
    let snapshot = gauge(&server, "mini_etcd_snapshot_index").await;
    assert!(
        snapshot >= RUNS * PUTS_PER_RUN - SNAPSHOT_COUNT - PUTS_PER_RUN,
        "the last snapshot is at {snapshot}"
    );
    // Nothing was lost on the way: the last run's values are there.
    let rest = server.rest();
    for k in 0..5 {
        let kv = rest.get(&format!("k{k}")).await.expect("key present");
        assert!(
            kv.value.starts_with(&format!("r{}-", RUNS - 1)),
            "{}",
            kv.value
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_cut_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();
    let mut written = Vec::new();
    for i in 0..50 {
        let key = format!("torn/{i:03}");
        let value = format!("value-{i}");
        let rev = rest.put(&key, &value).await;
        written.push((key, value, rev));
    }
    server.stop().await;

    let wals = wal_files(dir.path());
    let newest = wals
        .last()
        .unwrap_or_else(|| panic!("no *.wal files under {}/member/wal", dir.path().display()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .expect("open newest wal");
    f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0x42])
        .expect("append junk");
    f.sync_all().expect("sync");
    drop(f);

    server.restart().await;
    let rest = server.rest();
    for (key, value, rev) in &written {
        let kv = rest
            .get(key)
            .await
            .unwrap_or_else(|| panic!("{key} lost after torn-tail recovery"));
        assert_eq!((&kv.value, kv.mod_revision), (value, *rev), "{key}");
    }
    let after = rest.put("torn/after", "appended").await;
    assert_eq!(after, written.last().expect("writes").2 + 1);

    // Appends after the cut are themselves durable.
    server.stop().await;
    server.restart().await;
    let kv = server
        .rest()
        .get("torn/after")
        .await
        .expect("write after recovery survives a restart");
    assert_eq!((kv.value.as_str(), kv.mod_revision), ("appended", after));
    server.stop().await;
}

/// Marker inside every value of the corrupt test, so the flipped byte is certainly inside a record payload
/// (covered by a checksum), not in padding or preallocated space.
const MARKER: &[u8] = b"CORRUPTME";

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    // First-byte filter first: segments can be tens of megabytes and this runs in a debug build.
    (0..haystack.len().saturating_sub(needle.len() - 1))
        .filter(|&i| haystack[i] == needle[0] && &haystack[i..i + needle.len()] == needle)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_record_refuses_to_start_until_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();
    for i in 0..200 {
        let value = format!("CORRUPTME{i:04}{}", "Q".repeat(48));
        rest.put(&format!("corrupt/{i:04}"), &value).await;
    }
    server.stop().await;

    // Pick the segment holding most records and flip a byte inside the middle record's value.
    let wals = wal_files(dir.path());
    assert!(
        !wals.is_empty(),
        "no *.wal files under {}/member/wal",
        dir.path().display()
    );
    let (path, bytes, hits) = wals
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("read wal");
            let hits = find_all(&bytes, MARKER);
            (p.clone(), bytes, hits)
        })
        .max_by_key(|(_, _, hits)| hits.len())
        .expect("wal files");
    assert!(
        hits.len() >= 100,
        "expected the 200 values in the WAL as plain bytes, found {} in {}",
        hits.len(),
        path.display()
    );
    let at = hits[hits.len() / 2] + MARKER.len() + 10; // inside the run of 'Q's
    let mut bytes = bytes;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write corrupted wal");

    let (status, output) = server.start_expecting_failure().await;
    assert!(
        !status.success(),
        "a corrupt WAL must stop startup, got {status}; output:\n{output}"
    );
    let file_name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        output.contains(&file_name),
        "the error should name the damaged file {file_name}; output:\n{output}"
    );
    assert!(
        output.to_lowercase().contains("repair"),
        "the error should point to `repair`; output:\n{output}"
    );

    let data_dir = dir.path().display().to_string();
    let (status, output) = run_cli(
        &["repair", "--data-dir", &data_dir],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        status.success(),
        "`{} repair` failed with {status}; output:\n{output}",
        bin()
    );

    server.restart().await;
    let rest = server.rest();
    // The damage was in the middle: everything before it is intact.
    let first = rest
        .get("corrupt/0000")
        .await
        .expect("records before the damage survive repair");
    assert!(first.value.starts_with("CORRUPTME0000"));
    rest.put("corrupt/after-repair", "ok").await;
    assert_eq!(
        rest.get("corrupt/after-repair")
            .await
            .expect("new write")
            .value,
        "ok"
    );
    server.stop().await;
}
