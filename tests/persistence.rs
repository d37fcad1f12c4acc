//! Durability across clean restarts: what a server acknowledged before SIGTERM is there, with the same
//! revisions, after it starts again on the same data directory; the data directory is exclusive to one
//! process; with frequent snapshots the WAL does not grow without bound; and the in-memory Raft log
//! holds only the catch-up window while the WAL still replays everything.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{wal_files, Kv, Rest, Server};
use futures::stream::{self, StreamExt};

/// Writes `n` keys `{prefix}{i:05}` with `concurrency` requests in flight; returns each key's put revision.
async fn write_keys(
    rest: &Rest,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<String, (String, i64)> {
    let rest = Arc::new(rest.clone());
    stream::iter(0..n)
        .map(|i| {
            let rest = rest.clone();
            let key = format!("{prefix}{i:05}");
            let value = format!("value-{i}-{}", "v".repeat(i % 37));
            async move {
                let rev = rest.put(&key, &value).await;
                (key, (value, rev))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Reads every key back (concurrently) and returns what the server has.
async fn read_keys(
    rest: &Rest,
    keys: impl Iterator<Item = String>,
) -> BTreeMap<String, Option<Kv>> {
    let rest = Arc::new(rest.clone());
    stream::iter(keys)
        .map(|key| {
            let rest = rest.clone();
            async move {
                let kv = rest.get(&key).await;
                (key, kv)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Asserts that every key of `written` is there with its value and put revision; `when` names the
/// event it survived.
async fn assert_all_present(rest: &Rest, written: &BTreeMap<String, (String, i64)>, when: &str) {
    let after = read_keys(rest, written.keys().cloned()).await;
    for (key, (value, rev)) in written {
        let kv = after[key]
            .as_ref()
            .unwrap_or_else(|| panic!("{key} lost after {when}"));
        assert_eq!((&kv.value, kv.mod_revision), (value, *rev), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restart_keeps_every_key_and_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();

    let written = write_keys(&rest, "p/", 300, 8).await;
    // Overwrite a few and delete a few, so versions and tombstones are part of what must survive.
    for i in 0..20 {
        rest.put(&format!("p/{i:05}"), "overwritten").await;
    }
    for i in 20..30 {
        assert_eq!(rest.delete(&format!("p/{i:05}")).await.status, 200);
    }
    let before = read_keys(&rest, written.keys().cloned()).await;
    let last_rev = rest.put("last", "x").await;

    server.stop().await;
    server.restart().await;
    let rest = server.rest();

    let after = read_keys(&rest, written.keys().cloned()).await;
    for (key, kv) in &before {
        assert_eq!(after.get(key), Some(kv), "key {key} differs after restart");
    }
    for (i, (key, (value, rev))) in written.iter().enumerate() {
        let kv = &after[key];
        match i {
            0..20 => {
                let kv = kv.as_ref().expect("overwritten key present");
                assert_eq!(
                    (kv.value.as_str(), kv.create_revision, kv.version),
                    ("overwritten", *rev, 2)
                );
            }
            20..30 => assert_eq!(kv, &None, "deleted key {key} came back"),
            _ => {
                let kv = kv.as_ref().unwrap_or_else(|| panic!("{key} lost"));
                assert_eq!(
                    (&kv.value, kv.mod_revision, kv.version),
                    (value, *rev, 1),
                    "{key}"
                );
            }
        }
    }

    // The revision counter continues where it stopped.
    assert_eq!(rest.put("after-restart", "y").await, last_rev + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_locked_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let rest = server.rest();
    rest.put("owner", "first").await;

    let (status, output) = server.start_competitor().await;
    assert!(
        !status.success(),
        "a second server on the same data dir must fail, exited with {status}; output:\n{output}"
    );
    assert!(
        output.to_lowercase().contains("lock"),
        "the failure should mention the lock; output:\n{output}"
    );

    // The first server is untouched.
    assert_eq!(rest.get("owner").await.expect("owner").value, "first");
    rest.put("owner", "still-first").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_wal_and_restart_restores_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &["--snapshot-count", "100"]).await;
    let rest = server.rest();

    let written = write_keys(&rest, "s/", 1000, 8).await;
    let last_rev = written.values().map(|(_, rev)| *rev).max().expect("writes");

    server.stop().await;
    let wals = wal_files(dir.path());
    assert!(
        wals.len() <= 3,
        "with --snapshot-count 100, 1000 writes should leave few WAL segments, found {}: {wals:?}",
        wals.len()
    );

    server.restart().await;
    let rest = server.rest();
    assert_all_present(&rest, &written, "snapshot + restart").await;
    assert_eq!(rest.put("after", "x").await, last_rev + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_log_keeps_only_the_catch_up_window_and_the_wal_replays_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No snapshot during the test: every entry stays in the WAL, only the last ones in memory.
    let args = ["--experimental-snapshot-catchup-entries", "50"];
    let mut server = Server::start(dir.path(), &args).await;
    let rest = server.rest();

    let written = write_keys(&rest, "w/", 600, 8).await;
    let applied = rest.gauge("etcd_server_proposals_applied_total").await;
    let first = rest.gauge("mini_etcd_raft_log_first_index").await;
    assert!(applied >= 600, "applied index {applied} after 600 writes");
    // Trimmed a window at a time: between one and two windows stay behind the applied index.
    assert!(
        first > applied - 2 * 50 && first <= applied - 50 + 1,
        "in-memory log starts at {first} with {applied} applied and a window of 50"
    );
    assert_eq!(rest.gauge("mini_etcd_snapshot_index").await, 0);

    // A crash: what the backend had not committed yet comes back from the WAL, whose entries the
    // in-memory trimming never touched.
    server.kill9();
    server.restart().await;
    let rest = server.rest();
    assert_all_present(&rest, &written, "restart").await;
    let first = rest.gauge("mini_etcd_raft_log_first_index").await;
    let applied = rest.gauge("etcd_server_proposals_applied_total").await;
    assert!(
        first > 1 && first + 2 * 50 > applied && first <= applied,
        "after restart the in-memory log starts at {first}: only the window behind {applied} is loaded"
    );
    server.stop().await;
}
