//! Hub tests over an in-memory history.
//!
//! Timing is never asserted: every wait is on a delivered batch, and the timeouts only turn a hang
//! (a lost event) into a failure. Races are provoked deterministically with a hook that runs inside a
//! history read, i.e. between the catch-up's read of the current revision and its hand-over. (The
//! crate's tokio has no `test-util` feature, so `time::pause` is not available; no test needs it.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::error::Error;
use crate::error::Result;

/// A hook run at the start of the next `History::events` call.
type Hook = Box<dyn FnOnce() + Send>;

/// A transaction applied to the store whose notify is held back.
type Pending = Arc<Mutex<Option<(i64, Vec<Event>)>>>;

/// An in-memory store: a list of events, a current and a compact revision.
#[derive(Default)]
struct FakeHistory {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    events: Vec<Event>,
    current: i64,
    compact: i64,
    latest: HashMap<Vec<u8>, KeyValue>,
    hook: Option<Hook>,
}

/// One write of a transaction.
enum Op {
    Put(&'static str, &'static str),
    Del(&'static str),
}

impl FakeHistory {
    /// Applies one transaction at the next revision; returns it and its events.
    fn apply(&self, ops: &[Op]) -> (i64, Vec<Event>) {
        let mut st = self.state.lock().unwrap();
        let rev = st.current + 1;
        let mut out = Vec::new();
        for op in ops {
            let (kind, key, value) = match op {
                Op::Put(k, v) => (EventKind::Put, k.as_bytes().to_vec(), v.as_bytes().to_vec()),
                Op::Del(k) => (EventKind::Delete, k.as_bytes().to_vec(), Vec::new()),
            };
            let prev = st.latest.get(&key).cloned();
            let kv = match kind {
                EventKind::Put => KeyValue {
                    key: key.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    value,
                    lease: 0,
                },
                EventKind::Delete => KeyValue {
                    key: key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
            };
            match kind {
                EventKind::Put => st.latest.insert(key, kv.clone()),
                EventKind::Delete => st.latest.remove(&key),
            };
            out.push(Event {
                kind,
                kv,
                prev_kv: prev,
            });
        }
        st.events.extend(out.iter().cloned());
        st.current = rev;
        (rev, out)
    }

    fn compact(&self, rev: i64) {
        self.state.lock().unwrap().compact = rev;
    }

    fn on_next_read(&self, hook: Hook) {
        self.state.lock().unwrap().hook = Some(hook);
    }
}

impl History for FakeHistory {
    fn current_revision(&self) -> i64 {
        self.state.lock().unwrap().current
    }

    fn compact_revision(&self) -> i64 {
        self.state.lock().unwrap().compact
    }

    fn events(&self, key: &[u8], range_end: &[u8], from: i64, to: i64) -> Result<Vec<Event>> {
        let hook = self.state.lock().unwrap().hook.take();
        if let Some(hook) = hook {
            hook();
        }
        let st = self.state.lock().unwrap();
        if from < st.compact {
            return Err(Error::Compacted);
        }
        Ok(st
            .events
            .iter()
            .filter(|e| e.revision() >= from && e.revision() <= to)
            .filter(|e| in_range(&e.kv.key, key, range_end))
            .cloned()
            .collect())
    }
}

/// A store and its hub, wired like the apply step: write, then notify.
struct Fixture {
    history: Arc<FakeHistory>,
    hub: Arc<WatchHub>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_config(WatchConfig::default())
    }

    fn with_config(config: WatchConfig) -> Fixture {
        let history = Arc::new(FakeHistory::default());
        let hub = WatchHub::with_config(history.clone(), config);
        Fixture { history, hub }
    }

    /// Applies a transaction and notifies the hub, as the apply step does.
    fn commit(&self, ops: &[Op]) -> i64 {
        let (rev, events) = self.history.apply(ops);
        self.hub.notify(rev, &events);
        rev
    }

    /// Applies a transaction without notifying (the apply step has not got to it yet).
    fn apply_only(&self, ops: &[Op]) -> (i64, Vec<Event>) {
        self.history.apply(ops)
    }

    fn watch(&self, key: &str, range_end: &[u8], start_revision: i64) -> Watcher {
        self.hub.watch(WatchRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
            start_revision,
            ..WatchRequest::default()
        })
    }
}

/// Generous: only a lost event makes a test wait this long.
const STALL: Duration = Duration::from_secs(10);

async fn next_batch(w: &mut Watcher) -> Option<WatchBatch> {
    tokio::time::timeout(STALL, w.recv())
        .await
        .expect("watcher stalled: an event was lost")
}

/// Receives batches until `n` events have arrived (no more), asserting nothing ends the watch first.
async fn take(w: &mut Watcher, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = next_batch(w).await.expect("watch ended early");
        assert_eq!(batch.compact_revision, 0);
        assert!(!batch.events.is_empty(), "empty batch");
        out.extend(batch.events);
    }
    assert_eq!(out.len(), n, "more events than expected");
    out
}

fn revs(events: &[Event]) -> Vec<i64> {
    events.iter().map(Event::revision).collect()
}

fn keys(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
        .collect()
}

#[test]
fn range_semantics_follow_etcd() {
    assert!(in_range(b"a", b"a", b""));
    assert!(!in_range(b"ab", b"a", b""));
    assert!(in_range(b"foo/1", b"foo/", b"foo0"));
    assert!(!in_range(b"foo0", b"foo/", b"foo0"));
    assert!(!in_range(b"fo", b"foo/", b"foo0"));
    assert!(in_range(b"zzz", b"b", &[0]));
    assert!(!in_range(b"a", b"b", &[0]));
    assert!(in_range(b"a", &[0], &[0]));
}

#[tokio::test]
async fn single_key() {
    let f = Fixture::new();
    let mut w = f.watch("a", b"", 0);
    f.commit(&[Op::Put("a", "1")]);
    f.commit(&[Op::Put("b", "1")]);
    f.commit(&[Op::Del("a")]);
    f.commit(&[Op::Put("ab", "1")]);
    f.commit(&[Op::Put("a", "2")]);
    let events = take(&mut w, 3).await;
    assert_eq!(revs(&events), [1, 3, 5]);
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[2].kv.value, b"2");
    assert!(
        events.iter().all(|e| e.prev_kv.is_none()),
        "prev_kv not asked for"
    );
}

#[tokio::test]
async fn prefix_range() {
    let f = Fixture::new();
    let mut w = f.watch("foo/", b"foo0", 0);
    f.commit(&[Op::Put("foo/1", "x"), Op::Put("bar", "x")]);
    f.commit(&[Op::Put("foo0", "x")]);
    f.commit(&[
        Op::Put("fo", "x"),
        Op::Put("foo/2", "x"),
        Op::Put("foo/3", "x"),
    ]);
    f.commit(&[Op::Del("foo/1")]);
    let events = take(&mut w, 4).await;
    assert_eq!(keys(&events), ["foo/1", "foo/2", "foo/3", "foo/1"]);
    assert_eq!(revs(&events), [1, 3, 3, 4]);
}

#[tokio::test]
async fn all_keys_and_open_ended_range() {
    let f = Fixture::new();
    let mut all = f.watch("\0", &[0], 0);
    let mut from_b = f.watch("b", &[0], 0);
    f.commit(&[Op::Put("a", "1")]);
    f.commit(&[Op::Put("b", "1"), Op::Put("z", "1")]);
    f.commit(&[Op::Del("a")]);
    f.commit(&[Op::Put("c", "1")]);
    assert_eq!(keys(&take(&mut all, 5).await), ["a", "b", "z", "a", "c"]);
    assert_eq!(keys(&take(&mut from_b, 3).await), ["b", "z", "c"]);
}

#[tokio::test]
async fn replay_from_history_then_live() {
    let f = Fixture::new();
    for i in 0..5 {
        f.commit(&[Op::Put("k", ["0", "1", "2", "3", "4"][i])]);
    }
    let mut w = f.watch("k", b"", 2);
    assert_eq!(revs(&take(&mut w, 4).await), [2, 3, 4, 5]);
    f.commit(&[Op::Put("k", "5")]);
    f.commit(&[Op::Put("k", "6")]);
    assert_eq!(revs(&take(&mut w, 2).await), [6, 7]);
    assert_eq!(f.hub.slow_watcher_count(), 0);
}

#[tokio::test]
async fn replay_with_writes_landing_during_catch_up() {
    let f = Fixture::new();
    for _ in 0..3 {
        f.commit(&[Op::Put("k", "v")]);
    }
    // Inside the catch-up's history read (it has already read current = 3), the apply step writes
    // and notifies revision 4 while the watcher is still unsynced: hand-over must not happen at 3.
    let hook_history = f.history.clone();
    let hook_hub = f.hub.clone();
    f.history.on_next_read(Box::new(move || {
        let (rev, events) = hook_history.apply(&[Op::Put("k", "during")]);
        hook_hub.notify(rev, &events);
    }));
    let mut w = f.watch("k", b"", 1);
    let events = take(&mut w, 4).await;
    assert_eq!(revs(&events), [1, 2, 3, 4]);
    assert_eq!(events[3].kv.value, b"during");
    f.commit(&[Op::Put("k", "after")]);
    assert_eq!(revs(&take(&mut w, 1).await), [5]);
}

#[tokio::test]
async fn store_ahead_of_notify_during_catch_up() {
    let f = Fixture::new();
    f.commit(&[Op::Put("k", "1")]);
    // During the catch-up read, revision 2 reaches the store but is not yet notified: the watcher may
    // hand over at 1 and must then get 2 live, once.
    let hook_history = f.history.clone();
    let pending: Pending = Arc::default();
    let hook_pending = pending.clone();
    f.history.on_next_read(Box::new(move || {
        *hook_pending.lock().unwrap() = Some(hook_history.apply(&[Op::Put("k", "2")]));
    }));
    let mut w = f.watch("k", b"", 1);
    assert_eq!(revs(&take(&mut w, 1).await), [1]);
    let (rev, events) = pending.lock().unwrap().take().expect("hook ran");
    f.hub.notify(rev, &events);
    f.commit(&[Op::Put("k", "3")]);
    assert_eq!(revs(&take(&mut w, 2).await), [2, 3]);
}

#[tokio::test]
async fn late_notify_after_hand_over_is_not_duplicated() {
    let f = Fixture::new();
    f.commit(&[Op::Put("k", "1")]);
    f.commit(&[Op::Put("k", "2")]);
    // Revision 3 is in the store, but the apply step has not called notify yet.
    let (rev3, events3) = f.apply_only(&[Op::Put("k", "3")]);
    let mut w = f.watch("k", b"", 1);
    assert_eq!(revs(&take(&mut w, 3).await), [1, 2, 3]);
    // Now the late notify: whether or not hand-over has happened yet, 3 must not come twice.
    f.hub.notify(rev3, &events3);
    f.commit(&[Op::Put("k", "4")]);
    assert_eq!(revs(&take(&mut w, 1).await), [4]);
}

#[tokio::test]
async fn start_zero_skips_revision_not_yet_notified() {
    let f = Fixture::new();
    f.commit(&[Op::Put("k", "1")]);
    let (rev2, events2) = f.apply_only(&[Op::Put("k", "2")]);
    // The store shows 2, so "from now on" means from 3.
    let mut w = f.watch("k", b"", 0);
    f.hub.notify(rev2, &events2);
    f.commit(&[Op::Put("k", "3")]);
    assert_eq!(revs(&take(&mut w, 1).await), [3]);
}

#[tokio::test]
async fn future_start_revision() {
    let f = Fixture::new();
    f.commit(&[Op::Put("k", "1")]);
    let mut w = f.watch("k", b"", 4);
    for _ in 0..4 {
        f.commit(&[Op::Put("k", "x")]);
    }
    assert_eq!(revs(&take(&mut w, 2).await), [4, 5]);
}

#[tokio::test]
async fn slow_watcher_does_not_block_notify_and_gets_everything() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 4,
        max_catch_up_revisions: 50,
        max_batch_events: 7,
        ..WatchConfig::default()
    });
    let mut slow = f.watch("k", b"", 0);
    let mut other = f.watch("other", b"", 0);
    // The slow watcher reads nothing while 500 revisions are notified; notify is synchronous, so
    // were it to wait on the watcher this loop would never finish.
    for i in 0..500 {
        f.commit(&[Op::Put("k", "v")]);
        if i % 200 == 0 {
            f.commit(&[Op::Put("other", "v")]);
        }
    }
    assert_eq!(f.hub.slow_watcher_count(), 1);
    assert_eq!(revs(&take(&mut other, 3).await), [2, 203, 404]);

    let events = take(&mut slow, 500).await;
    let expected: Vec<i64> = (1..=503).filter(|r| ![2, 203, 404].contains(r)).collect();
    assert_eq!(revs(&events), expected);

    // Caught up: live events flow again.
    let rev = f.commit(&[Op::Put("k", "live")]);
    assert_eq!(revs(&take(&mut slow, 1).await), [rev]);
}

#[tokio::test]
async fn filters() {
    let f = Fixture::new();
    let mut no_put = f.hub.watch(WatchRequest {
        key: b"k".to_vec(),
        filter_put: true,
        ..WatchRequest::default()
    });
    let mut no_delete = f.hub.watch(WatchRequest {
        key: b"k".to_vec(),
        filter_delete: true,
        ..WatchRequest::default()
    });
    f.commit(&[Op::Put("k", "1")]);
    f.commit(&[Op::Del("k")]);
    f.commit(&[Op::Put("k", "2")]);
    f.commit(&[Op::Del("k")]);
    let deletes = take(&mut no_put, 2).await;
    assert_eq!(revs(&deletes), [2, 4]);
    assert!(deletes.iter().all(|e| e.kind == EventKind::Delete));
    let puts = take(&mut no_delete, 2).await;
    assert_eq!(revs(&puts), [1, 3]);
    assert!(puts.iter().all(|e| e.kind == EventKind::Put));

    // The same filters apply to replay from history.
    let mut replay = f.hub.watch(WatchRequest {
        key: b"k".to_vec(),
        start_revision: 1,
        filter_delete: true,
        ..WatchRequest::default()
    });
    assert_eq!(revs(&take(&mut replay, 2).await), [1, 3]);
}

#[tokio::test]
async fn prev_kv_only_when_asked() {
    let f = Fixture::new();
    let with = |start_revision| WatchRequest {
        key: b"k".to_vec(),
        start_revision,
        prev_kv: true,
        ..WatchRequest::default()
    };
    let mut live_with = f.hub.watch(with(0));
    let mut live_without = f.watch("k", b"", 0);
    f.commit(&[Op::Put("k", "1")]);
    f.commit(&[Op::Put("k", "2")]);
    f.commit(&[Op::Del("k")]);

    let events = take(&mut live_with, 3).await;
    assert_eq!(events[0].prev_kv, None);
    assert_eq!(
        events[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
    assert_eq!(
        events[2].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"2".to_vec())
    );
    assert!(take(&mut live_without, 3)
        .await
        .iter()
        .all(|e| e.prev_kv.is_none()));

    let mut replay_with = f.hub.watch(with(2));
    let mut replay_without = f.watch("k", b"", 2);
    assert_eq!(take(&mut replay_with, 2).await, events[1..]);
    assert!(take(&mut replay_without, 2)
        .await
        .iter()
        .all(|e| e.prev_kv.is_none()));
}

#[tokio::test]
async fn compacted_start_gets_notice_then_ends() {
    let f = Fixture::new();
    for _ in 0..5 {
        f.commit(&[Op::Put("k", "v")]);
    }
    f.history.compact(3);
    let mut w = f.watch("k", b"", 2);
    let batch = next_batch(&mut w).await.expect("compaction notice");
    assert_eq!(
        batch,
        WatchBatch {
            events: Vec::new(),
            compact_revision: 3,
            revision: 0,
        }
    );
    assert!(next_batch(&mut w).await.is_none());
    assert_eq!(f.hub.watcher_count(), 0, "a compacted watch is cancelled");

    // At the compaction revision itself is fine (etcd), and so is above it.
    let mut ok = f.watch("k", b"", 3);
    assert_eq!(revs(&take(&mut ok, 3).await), [3, 4, 5]);
}

#[tokio::test]
async fn watchers_that_stop_reading_hold_a_bounded_queue_and_still_get_everything() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 128,
        max_queued_events: 10,
        max_catch_up_revisions: 50,
        max_batch_events: 4,
        ..WatchConfig::default()
    });
    let mut watchers: Vec<Watcher> = (0..20).map(|_| f.watch("k", b"", 0)).collect();
    for _ in 0..300 {
        f.commit(&[Op::Put("k", "v")]);
    }
    // Nobody read: live fan-out stopped at the event budget, not at the channel's 128 batches.
    for w in &watchers {
        assert!(w.queued_events() <= 10, "{} queued", w.queued_events());
    }
    assert_eq!(f.hub.slow_watcher_count(), 20);
    // Reading again, every watcher gets every revision in order, catch-up never exceeding the
    // budget either (a batch of at most 4 goes into an empty channel, else within 10).
    for w in &mut watchers {
        let mut seen = Vec::new();
        while seen.len() < 300 {
            assert!(w.queued_events() <= 10, "{} queued", w.queued_events());
            let batch = next_batch(w).await.expect("watch ended early");
            seen.extend(revs(&batch.events));
        }
        assert_eq!(seen, (1..=300).collect::<Vec<i64>>());
    }
    let rev = f.commit(&[Op::Put("k", "live")]);
    for w in &mut watchers {
        assert_eq!(revs(&take(w, 1).await), [rev]);
    }
}

#[tokio::test]
async fn slow_watcher_overtaken_by_compaction() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 2,
        ..WatchConfig::default()
    });
    let mut w = f.watch("k", b"", 0);
    for _ in 0..10 {
        f.commit(&[Op::Put("k", "v")]);
    }
    f.history.compact(8);
    // What was buffered before falling behind still arrives, then the notice, then the end.
    assert_eq!(revs(&take(&mut w, 2).await), [1, 2]);
    let batch = next_batch(&mut w).await.expect("compaction notice");
    assert_eq!(batch.compact_revision, 8);
    assert!(batch.events.is_empty());
    assert!(next_batch(&mut w).await.is_none());
}

#[tokio::test]
async fn dropping_watchers_unregisters_them() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 1,
        ..WatchConfig::default()
    });
    let mut watchers: Vec<Watcher> = (0..1000).map(|_| f.watch("hot", b"", 0)).collect();
    watchers.push(f.watch("h", b"i", 0));
    assert_eq!(f.hub.watcher_count(), 1001);

    f.commit(&[Op::Put("hot", "v")]);
    for w in watchers.iter_mut().take(1001) {
        assert_eq!(revs(&take(w, 1).await), [1]);
    }
    watchers.push(f.watch("hot", b"", 1)); // unsynced: replays from history
    assert_eq!(f.hub.watcher_count(), 1002);
    // A second write finds some channels full (capacity 1, not read): they go unsynced.
    f.commit(&[Op::Put("hot", "v")]);
    f.commit(&[Op::Put("hot", "v")]);
    assert!(f.hub.slow_watcher_count() > 0);

    watchers.truncate(500);
    assert_eq!(f.hub.watcher_count(), 500);
    drop(watchers);
    assert_eq!(f.hub.watcher_count(), 0);
    assert_eq!(f.hub.slow_watcher_count(), 0);
}

#[tokio::test]
async fn close_ends_every_watcher() {
    let f = Fixture::new();
    let mut buffered = f.watch("k", b"", 0);
    let waiting = f.watch("other", b"", 0);
    let mut future = f.watch("k", b"", 5);
    f.commit(&[Op::Put("k", "v")]);
    let waiter = tokio::spawn(async move {
        let mut waiting = waiting;
        waiting.recv().await
    });
    // Let the waiter reach its `recv`.
    tokio::task::yield_now().await;

    f.hub.close();
    assert!(f.hub.is_closed());
    assert!(tokio::time::timeout(STALL, waiter)
        .await
        .expect("waiting watcher not woken")
        .expect("waiter task")
        .is_none());
    assert!(next_batch(&mut buffered).await.is_none());
    assert!(next_batch(&mut future).await.is_none());
    assert_eq!(f.hub.watcher_count(), 0);

    // After close: no new watches, notify is a no-op.
    let mut late = f.watch("k", b"", 0);
    f.commit(&[Op::Put("k", "v")]);
    assert!(next_batch(&mut late).await.is_none());
    assert_eq!(f.hub.watcher_count(), 0);
}

/// The apply step writes continuously while watchers join with past start revisions and read at
/// different speeds through tiny channels: every watcher must see exactly its revisions, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_and_catch_up_keep_every_stream_exact() {
    const WRITES: i64 = 3000;
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 2,
        max_catch_up_revisions: 64,
        max_batch_events: 16,
        ..WatchConfig::default()
    });
    let (history, hub) = (f.history.clone(), f.hub.clone());
    let writer = std::thread::spawn(move || {
        for i in 0..WRITES {
            let (rev, events) = history.apply(&[Op::Put(["a", "b", "c"][(i % 3) as usize], "v")]);
            hub.notify(rev, &events);
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
    });

    let mut readers = Vec::new();
    for n in 0..24 {
        let start = (f.history.current_revision() - 40).max(1);
        let w = f.hub.watch(WatchRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: start,
            ..WatchRequest::default()
        });
        readers.push(tokio::spawn(async move {
            let mut w = w;
            let mut seen = Vec::new();
            while seen.last() != Some(&WRITES) {
                let batch = w.recv().await.expect("watch ended early");
                seen.extend(revs(&batch.events));
                // Readers of different speeds: some yield after every batch.
                if n % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (start, seen)
        }));
        tokio::task::yield_now().await;
    }

    for reader in readers {
        let (start, seen) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("reader stalled: an event was lost")
            .expect("reader task");
        assert_eq!(seen, (start..=WRITES).collect::<Vec<_>>());
    }
    writer.join().expect("writer thread");
}

/// A merged read. `commit` queues live batches before it returns, so it takes what was waiting.
async fn next_merged(w: &mut Watcher, max_events: usize) -> Option<WatchBatch> {
    next_merged_within(w, max_events, usize::MAX).await
}

async fn next_merged_within(
    w: &mut Watcher,
    max_events: usize,
    max_bytes: usize,
) -> Option<WatchBatch> {
    tokio::time::timeout(STALL, w.recv_merged(max_events, max_bytes))
        .await
        .expect("watcher stalled: an event was lost")
}

#[tokio::test]
async fn waiting_live_batches_merge_into_one_response_but_never_past_a_compaction_notice() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 4,
        ..WatchConfig::default()
    });
    let mut w = f.watch("k", b"", 0);
    // Three live revisions queue as three batches; one merged read takes them all, in order.
    for _ in 0..3 {
        f.commit(&[Op::Put("k", "v")]);
    }
    let merged = next_merged(&mut w, 1000).await.expect("events");
    assert_eq!(revs(&merged.events), [1, 2, 3]);
    assert_eq!(merged.compact_revision, 0);
    // The limit counts events and never splits a batch: two by two, then the rest (a batch that
    // would go past it waits for the next read).
    for _ in 0..3 {
        f.commit(&[Op::Put("k", "v")]);
    }
    assert_eq!(
        revs(&next_merged(&mut w, 2).await.expect("events").events),
        [4, 5]
    );
    assert_eq!(
        revs(&next_merged(&mut w, 2).await.expect("events").events),
        [6]
    );
    // Falling behind past a compaction: the events buffered before it come merged, then the notice
    // on its own, then the end.
    for _ in 0..10 {
        f.commit(&[Op::Put("k", "v")]);
    }
    f.history.compact(14);
    let merged = next_merged(&mut w, 1000).await.expect("events");
    assert_eq!(revs(&merged.events), [7, 8, 9, 10]);
    let notice = next_merged(&mut w, 1000).await.expect("compaction notice");
    assert_eq!(notice.compact_revision, 14);
    assert!(notice.events.is_empty());
    assert!(next_merged(&mut w, 1000).await.is_none());
}

#[tokio::test]
async fn merging_stops_at_the_byte_limit_and_never_splits_or_overruns() {
    let f = Fixture::with_config(WatchConfig {
        channel_capacity: 16,
        ..WatchConfig::default()
    });
    let mut w = f.watch("", b"\0", 0);
    // Key "k" (1 byte) and a 9-byte value: 10 bytes an event.
    for _ in 0..5 {
        f.commit(&[Op::Put("k", "123456789")]);
    }
    // 25 bytes take two events (20); the third would make 30.
    let first = next_merged_within(&mut w, 1000, 25).await.expect("events");
    assert_eq!(revs(&first.events), [1, 2]);
    let second = next_merged_within(&mut w, 1000, 25).await.expect("events");
    assert_eq!(revs(&second.events), [3, 4]);
    // One batch above the limit goes out whole, alone.
    let third = next_merged_within(&mut w, 1000, 5).await.expect("events");
    assert_eq!(revs(&third.events), [5]);
    // A two-event revision after two single ones, with a limit of 3 events: the pair does not fit
    // beside them, so it comes next, whole.
    f.commit(&[Op::Put("a", "1")]);
    f.commit(&[Op::Put("b", "1")]);
    f.commit(&[Op::Put("c", "1"), Op::Put("d", "1")]);
    let ones = next_merged(&mut w, 3).await.expect("events");
    assert_eq!(keys(&ones.events), ["a", "b"]);
    let pair = next_merged(&mut w, 3).await.expect("events");
    assert_eq!(keys(&pair.events), ["c", "d"]);
    assert_eq!(revs(&pair.events), [8, 8]);
}

/// Progress is never ahead of what was delivered: a watch being caught up from history reports
/// where its catch-up stands, not the store's head (a client resuming after it would skip events).
#[tokio::test]
async fn progress_of_a_watch_behind_stays_below_its_undelivered_events() {
    let f = Fixture::with_config(WatchConfig {
        max_catch_up_revisions: 10,
        ..WatchConfig::default()
    });
    for i in 0..100 {
        f.commit(&[Op::Put("other", if i % 2 == 0 { "a" } else { "b" })]);
    }
    let status = f.commit(&[Op::Put("status", "up")]);
    let mut w = f.watch("status", b"", 3);
    let progress = w.progress();
    // Nothing delivered yet: at most the revision before the watch's start.
    assert!(progress.revision() < status, "{}", progress.revision());
    assert_eq!(progress.revision(), 2);

    let got = take(&mut w, 1).await;
    assert_eq!(revs(&got), vec![status]);
    // Handed out but not yet reported passed on: still below it.
    assert!(progress.revision() < status, "{}", progress.revision());
    w.forwarded(status);
    assert_eq!(progress.revision(), status);

    // Live: a queued batch is not counted until it is handed out and reported.
    let other = f.commit(&[Op::Put("other", "c")]);
    assert_eq!(progress.revision(), other, "synced with nothing queued");
    let next = f.commit(&[Op::Put("status", "down")]);
    assert_eq!(progress.revision(), status, "an event is queued");
    assert_eq!(revs(&take(&mut w, 1).await), vec![next]);
    assert_eq!(progress.revision(), status, "handed out, not reported");
    w.forwarded(next);
    assert_eq!(progress.revision(), next);
}

/// A watch from the future reports no more than the hub has notified, and a new watch from now
/// reports the head.
#[tokio::test]
async fn progress_of_new_watches() {
    let f = Fixture::new();
    let head = f.commit(&[Op::Put("k", "v")]);
    assert_eq!(f.watch("k", b"", 0).progress().revision(), head);
    assert_eq!(f.watch("k", b"", head + 5).progress().revision(), head);
    assert_eq!(f.watch("k", b"", head).progress().revision(), head - 1);
}
