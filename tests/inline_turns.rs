//! Raft turns run on the thread of the connection that proposed them (`server::inline`): puts over gRPC
//! are answered from such turns, and durably: a restart and a `kill -9` keep every acknowledged put
//! with its revision. `--experimental-inline-turn-limit 0` keeps every turn on the Raft thread.
//!
//! The limit is set to `10s` where these tests want inline turns, so that the storage under the test's
//! temporary directory (tmpfs or a disk, whose fsync may take longer than the default 100 µs) does not
//! decide which path runs. Every wait is bounded; none is an assertion about speed.

mod common;
mod compat;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use compat::{bounded, connect, ok, start};

/// Concurrent clients, each on a connection of its own.
const CLIENTS: usize = 8;
/// Puts per client in the non-crash tests.
const PUTS_PER_CLIENT: usize = 100;
/// Flags that make every turn that can run inline do so.
const ALWAYS_INLINE: [&str; 2] = ["--experimental-inline-turn-limit", "10s"];

/// One put the server acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    revision: i64,
}

/// The value of `name` in `/metrics`.
async fn metric(server: &Server, name: &str) -> u64 {
    let resp = server
        .rest()
        .call(reqwest::Method::GET, "/metrics", None)
        .await;
    assert_eq!(resp.status, 200, "/metrics: {}", resp.body);
    resp.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", resp.body))
        .trim()
        .parse()
        .expect("metric value")
}

/// Raft turns run on a connection's thread so far.
async fn inline_turns(server: &Server) -> u64 {
    metric(server, "mini_etcd_raft_inline_turns_total").await
}

/// `CLIENTS` clients on connections of their own put `PUTS_PER_CLIENT` keys each, at the same time.
async fn put_concurrently(server: &Server, prefix: &str) -> Vec<Acked> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = connect(server).await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PUTS_PER_CLIENT {
                let (key, value) = (format!("{prefix}/{c}/{i}"), format!("v{c}-{i}"));
                let r = ok(
                    &format!("put {key}"),
                    bounded("put", client.put(key.as_str(), value.as_str(), None)).await,
                );
                let revision = r.header().expect("put header").revision();
                acked.push(Acked {
                    key,
                    value,
                    revision,
                });
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("put task"));
    }
    all
}

/// Every acknowledged put is there, with its value, at the revision its answer named.
async fn assert_present(server: &Server, acked: &[Acked], when: &str) {
    let mut client = connect(server).await;
    for a in acked {
        let r = ok(
            &format!("get {} {when}", a.key),
            bounded("get", client.get(a.key.as_str(), None)).await,
        );
        let kv = r
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("{when}: acknowledged key {} is missing", a.key));
        assert_eq!(kv.value_str().expect("utf-8"), a.value, "{when}: {}", a.key);
        assert_eq!(kv.mod_revision(), a.revision, "{when}: {}", a.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_answered_from_inline_turns_are_ordered_and_survive_a_restart() {
    // A snapshot every 100 entries: the turns that take one go to the Raft thread meanwhile.
    let (mut server, _dir) = start(&[
        ALWAYS_INLINE[0],
        ALWAYS_INLINE[1],
        "--snapshot-count",
        "100",
    ])
    .await;
    let before = inline_turns(&server).await;
    let acked = put_concurrently(&server, "inline").await;
    let ran = inline_turns(&server).await - before;
    assert!(
        ran > 0,
        "no turn ran on a connection's thread during {} puts",
        acked.len()
    );
    // Each put made one revision, and together they made a gap-free run of them.
    let mut revisions: Vec<i64> = acked.iter().map(|a| a.revision).collect();
    revisions.sort_unstable();
    let first = revisions[0];
    let expected: Vec<i64> = (first..first + acked.len() as i64).collect();
    assert_eq!(revisions, expected, "revisions of {} puts", acked.len());
    assert_present(&server, &acked, "before restart").await;
    let snapshot = metric(&server, "mini_etcd_snapshot_index").await;
    assert!(
        snapshot >= 700,
        "{} puts at --snapshot-count 100 left the last snapshot at {snapshot}",
        acked.len()
    );

    server.stop().await;
    server.restart().await;
    assert_present(&server, &acked, "after restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_limit_keeps_every_turn_on_the_raft_thread() {
    let (server, _dir) = start(&["--experimental-inline-turn-limit", "0"]).await;
    let acked = put_concurrently(&server, "thread").await;
    assert_eq!(acked.len(), CLIENTS * PUTS_PER_CLIENT);
    assert_eq!(inline_turns(&server).await, 0, "a turn ran inline");
    assert_present(&server, &acked, "limit 0").await;
}

/// Acknowledged puts to kill at, and a bound on how long the writers run before the kill.
const KILL_AFTER_ACKS: usize = 1500;
const KILL_AFTER: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_inline_turns_loses_no_acknowledged_put() {
    let (mut server, _dir) = start(&ALWAYS_INLINE).await;
    let before = inline_turns(&server).await;
    let killed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..CLIENTS {
        let mut client = connect(&server).await;
        let killed = killed.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut unexpected) = (Vec::new(), Vec::new());
            // Bounded by count; the kill ends it long before.
            for i in 0..20_000 {
                let (key, value) = (format!("crash/{c}/{i}"), format!("v{c}-{i}"));
                match bounded("put", client.put(key.as_str(), value.as_str(), None)).await {
                    Ok(r) => acked.push(Acked {
                        key,
                        value,
                        revision: r.header().expect("put header").revision(),
                    }),
                    Err(e) => {
                        if !killed.load(Ordering::SeqCst) {
                            unexpected.push(format!("{key}: {e:?}"));
                        }
                        break;
                    }
                }
            }
            (acked, unexpected)
        }));
    }
    // Kill once enough puts were answered (counted by the server's revision), or at the bound.
    let deadline = Instant::now() + KILL_AFTER;
    let mut probe = connect(&server).await;
    loop {
        let r = ok("status get", bounded("get", probe.get("probe", None)).await);
        let revision = r.header().expect("get header").revision();
        if revision as usize >= KILL_AFTER_ACKS || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ran = inline_turns(&server).await - before;
    killed.store(true, Ordering::SeqCst);
    server.kill9();

    let mut acked = Vec::new();
    for w in writers {
        let (a, unexpected) = w.await.expect("writer task");
        assert!(
            unexpected.is_empty(),
            "errors before the kill: {unexpected:?}"
        );
        acked.extend(a);
    }
    assert!(
        ran > 0,
        "no turn ran on a connection's thread before the kill"
    );
    assert!(!acked.is_empty(), "no put was acknowledged before the kill");

    server.restart().await;
    assert_present(&server, &acked, "after kill -9").await;
}
