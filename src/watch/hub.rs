//! The hub itself: the watcher table, live fan-out (`notify`) and history catch-up. The design and its
//! invariant are described in the parent module.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use super::index::SyncedIndex;
use super::watcher::{Queued, Shared, SharedEvents};
use super::{Event, EventKind, History, WatchId, WatchRequest, Watcher};
use crate::error::Error;

/// Tuning knobs of the hub. The defaults suit a server; tests shrink them to provoke slow watchers.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Batches a watcher's channel holds before the watcher counts as slow and falls back to history.
    pub channel_capacity: usize,
    /// Events a watcher may have queued (in all its batches together) before it counts as slow. An
    /// empty channel always takes one batch, so a single revision larger than this still arrives.
    /// The events themselves are shared between watchers; this bounds the references and, with
    /// the stream layer's byte budget, how much a slow reader can hold up.
    pub max_queued_events: usize,
    /// How often the catch-up task runs when nothing wakes it (etcd syncs unsynced watchers every
    /// 100 ms).
    pub catch_up_interval: Duration,
    /// The most revisions one catch-up round reads from history for one watcher, so a watcher far
    /// behind does not pull its whole backlog into memory at once.
    pub max_catch_up_revisions: i64,
    /// The most events in one catch-up batch. Batches are cut only between revisions, so a single
    /// revision with more events than this still arrives whole.
    pub max_batch_events: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            channel_capacity: 128,
            max_queued_events: 1024,
            catch_up_interval: Duration::from_millis(100),
            max_catch_up_revisions: 1000,
            max_batch_events: 1000,
        }
    }
}

/// Fans out the store's changes to watchers. Shared as `Arc<WatchHub>`; see the module docs for the
/// design and invariant.
pub struct WatchHub {
    /// Where unsynced watchers read the events they missed.
    history: Arc<dyn History>,
    /// Channel sizes and catch-up pacing.
    config: WatchConfig,
    /// The watcher table. A std mutex: every critical section is short (map look-ups, `try_send`,
    /// moving ids between sets) and never `.await`s, and `notify` is called from a non-async apply
    /// thread; history reads happen outside it.
    state: Mutex<State>,
    /// Set once by `close`; read without the lock by `Watcher::recv`.
    closed: AtomicBool,
    /// Wakes the catch-up task early: a watcher fell behind, a new watcher needs replay, a slow
    /// watcher drained its channel, or the hub closed.
    wake: Arc<Notify>,
    /// Source of hub-wide watcher ids.
    next_id: AtomicU64,
}

/// Everything the hub lock protects.
#[derive(Default)]
struct State {
    /// Set by `close`; no watcher is registered and `notify` does nothing afterwards.
    closed: bool,
    /// The highest revision `notify` has fanned out: the hand-over test (module docs, rule 3).
    notified_revision: i64,
    /// Every live watcher, synced or not.
    watchers: HashMap<WatchId, Entry>,
    /// Synced watchers, by the keys they cover: an event finds the watchers of its key without a
    /// check per watcher (`index.rs`).
    synced: SyncedIndex,
    /// Watchers behind the live stream, to be caught up from history. Ordered so rounds are
    /// deterministic.
    unsynced: BTreeSet<WatchId>,
}

/// The hub's side of one watcher.
struct Entry {
    /// The key or start of the range.
    key: Vec<u8>,
    /// The end of the range (etcd conventions, see [`in_range`]).
    range_end: Vec<u8>,
    /// Drop put events.
    filter_put: bool,
    /// Drop delete events.
    filter_delete: bool,
    /// Every matching event below this revision is in the channel, none at or above it.
    next_revision: i64,
    /// Where batches go; bounded (in batches, and in events by `shared.queued`) so a slow reader
    /// cannot grow memory without limit.
    tx: mpsc::Sender<Queued>,
    /// Shared with the `Watcher`: `slow` is true while unsynced, so its `recv` can wake the catch-up
    /// task once there is room again; `queued` counts the events in the channel.
    shared: Arc<Shared>,
}

impl Entry {
    /// Whether this watcher's filters keep `event`. (`prev_kv` is dropped by the `Watcher` when it
    /// hands the event out, so the hub queues the shared event as it is.)
    fn accepts(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::Put => !self.filter_put,
            EventKind::Delete => !self.filter_delete,
        }
    }

    /// Whether `n` more events may be queued: always into an empty channel, else within `max`.
    fn has_room(&self, n: usize, max: usize) -> bool {
        let queued = self.shared.queued.load(Ordering::Acquire);
        queued == 0 || queued + n <= max
    }

    /// Whether the queue can take at least one more batch now (a free slot, and room for an event
    /// within `max_queued`): a batch built otherwise would only be refused.
    fn can_take_more(&self, max_queued: usize) -> bool {
        self.tx.capacity() > 0 && self.has_room(1, max_queued)
    }

    /// Queues `events`, which bring the watch up to `revision` (counted first, so the reader's
    /// decrement can never run ahead of it).
    fn try_send(&self, events: SharedEvents, revision: i64) -> Result<(), TrySendError<Queued>> {
        let n = events.len();
        self.shared.queued.fetch_add(n, Ordering::AcqRel);
        let sent = self.tx.try_send(Queued {
            events,
            compact_revision: 0,
            revision,
        });
        if sent.is_err() {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        }
        sent
    }
}

impl State {
    /// Puts a registered watcher into the synced index.
    fn make_synced(&mut self, id: WatchId) {
        let Some(entry) = self.watchers.get(&id) else {
            return;
        };
        self.unsynced.remove(&id);
        entry.shared.slow.store(false, Ordering::Release);
        self.synced.insert(id, &entry.key, &entry.range_end);
    }

    /// Takes a watcher out of the synced index and queues it for catch-up.
    fn make_unsynced(&mut self, id: WatchId) {
        let Some(entry) = self.watchers.get(&id) else {
            return;
        };
        entry.shared.slow.store(true, Ordering::Release);
        self.synced.remove(id, &entry.key, &entry.range_end);
        self.unsynced.insert(id);
    }

    /// Forgets a watcher entirely; dropping its sender ends its stream.
    fn remove(&mut self, id: WatchId) {
        if let Some(entry) = self.watchers.remove(&id) {
            self.synced.remove(id, &entry.key, &entry.range_end);
        }
        self.unsynced.remove(&id);
    }
}

/// One unsynced watcher's work for a catch-up round, taken under the lock.
struct Job {
    /// Which watcher.
    id: WatchId,
    /// Its range, to read history with.
    key: Vec<u8>,
    /// Its range end.
    range_end: Vec<u8>,
    /// Its `next_revision` when the job was taken: the first revision to read.
    from: i64,
}

/// Catch-up jobs sharing one history read: key, range end, lowest `from`, job indexes.
type Cluster<'a> = (&'a [u8], &'a [u8], i64, Vec<usize>);

/// What a catch-up round read from history for one job.
enum Read {
    /// Every event on the watcher's range in `[job.from, to]` (and maybe earlier ones, which are
    /// skipped): one read shared by every job on the same range.
    Events {
        events: Arc<Vec<Arc<Event>>>,
        to: i64,
    },
    /// `job.from` has been compacted away; the value is the store's compact revision.
    Compacted(i64),
    /// History failed; retry on a later round.
    Failed,
}

impl WatchHub {
    /// A hub over `history` with the default configuration.
    ///
    /// # Panics
    /// Outside a Tokio runtime, because it spawns the catch-up task.
    pub fn new(history: Arc<dyn History>) -> Arc<WatchHub> {
        Self::with_config(history, WatchConfig::default())
    }

    /// A hub over `history` with explicit tuning.
    ///
    /// # Panics
    /// Outside a Tokio runtime, because it spawns the catch-up task.
    pub fn with_config(history: Arc<dyn History>, config: WatchConfig) -> Arc<WatchHub> {
        let config = WatchConfig {
            // A zero-capacity channel would panic in tokio and could never deliver anything.
            channel_capacity: config.channel_capacity.max(1),
            max_catch_up_revisions: config.max_catch_up_revisions.max(1),
            max_batch_events: config.max_batch_events.max(1),
            max_queued_events: config.max_queued_events.max(1),
            ..config
        };
        let hub = Arc::new(WatchHub {
            history,
            config,
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            next_id: AtomicU64::new(1),
        });
        spawn_catch_up(&hub);
        hub
    }

    /// Starts a watch. Events at or after the request's start revision arrive through the returned
    /// [`Watcher`]; dropping it ends the watch. After [`close`](Self::close) the watcher is born ended.
    pub fn watch(self: &Arc<Self>, req: WatchRequest) -> Watcher {
        let (tx, rx) = mpsc::channel(self.config.channel_capacity);
        let id = WatchId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(Shared::default());
        let watcher = Watcher::new(id, Arc::clone(self), rx, Arc::clone(&shared), req.prev_kv);

        // Read before taking the lock: the hub never calls into the store while holding its lock.
        // Race-free because the decision below also takes `notified_revision` into account (module
        // docs, "New watchers").
        let current = self.history.current_revision();
        let mut st = self.lock();
        if st.closed {
            return watcher; // `tx` is dropped: recv answers None.
        }
        let head = current.max(st.notified_revision);
        let (next_revision, synced) = if req.start_revision <= 0 {
            (head + 1, true)
        } else {
            // A future start is synced at once; `next_revision` holds back the revisions below it.
            (req.start_revision, req.start_revision > head)
        };
        shared
            .forwarded
            .store(next_revision.min(head + 1) - 1, Ordering::SeqCst);
        st.watchers.insert(
            id,
            Entry {
                key: req.key,
                range_end: req.range_end,
                filter_put: req.filter_put,
                filter_delete: req.filter_delete,
                next_revision,
                tx,
                shared,
            },
        );
        if synced {
            st.make_synced(id);
        } else {
            st.make_unsynced(id);
        }
        drop(st);
        if !synced {
            self.wake.notify_one();
        }
        tracing::debug!(watch_id = %id, rev = next_revision, synced, "watch created");
        watcher
    }

    /// Fans out the events of one write transaction at `revision` to the synced watchers.
    ///
    /// Called by the apply step once per revision, in increasing order, after the store shows
    /// `revision`. Never blocks on a watcher: a watcher whose channel is full is moved to the unsynced
    /// set and later caught up from history.
    pub fn notify(&self, revision: i64, events: &[Event]) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.notified_revision = st.notified_revision.max(revision);

        let mut fell_behind = Vec::new();
        let mut gone = Vec::new();
        let max_queued = self.config.max_queued_events;
        // Each event is copied once, for the first watcher that wants it; every other watcher
        // queues a reference to that copy.
        let mut shared: Vec<Option<Arc<Event>>> = vec![None; events.len()];
        let State {
            watchers, synced, ..
        } = &mut *st;
        if let [event] = events {
            // One event, the common case: each matching watcher gets just it, so no grouping map.
            let copy = &mut shared[0];
            synced.for_each_match(&event.kv.key, |id| {
                let Some(entry) = watchers.get_mut(&id) else {
                    return;
                };
                let event = copy.get_or_insert_with(|| Arc::new(event.clone()));
                match deliver(entry, revision, std::iter::once(&*event), max_queued) {
                    Delivery::Done => {}
                    Delivery::Full => fell_behind.push(id),
                    Delivery::Closed => gone.push(id),
                }
            });
        } else {
            // Collect each matching synced watcher's events of this revision, in transaction order.
            let mut matched: HashMap<WatchId, Vec<Arc<Event>>> = HashMap::new();
            for (event, copy) in events.iter().zip(shared.iter_mut()) {
                synced.for_each_match(&event.kv.key, |id| {
                    let copy = Arc::clone(copy.get_or_insert_with(|| Arc::new(event.clone())));
                    matched.entry(id).or_default().push(copy);
                });
            }
            for (id, matched_events) in matched {
                let Some(entry) = watchers.get_mut(&id) else {
                    continue;
                };
                match deliver(entry, revision, matched_events.iter(), max_queued) {
                    Delivery::Done => {}
                    Delivery::Full => fell_behind.push(id),
                    Delivery::Closed => gone.push(id),
                }
            }
        }
        let woke = !fell_behind.is_empty();
        for id in fell_behind {
            tracing::debug!(watch_id = %id, rev = revision, "watcher fell behind");
            st.make_unsynced(id);
        }
        for id in gone {
            st.remove(id);
        }
        drop(st);
        if woke {
            self.wake.notify_one();
        }
    }

    /// Moves every watcher to the unsynced set, to be caught up from history: the store was replaced
    /// by a snapshot, so what each has been sent says nothing about what the new history holds
    /// beyond it.
    pub fn resync(&self) {
        let mut st = self.lock();
        let ids: Vec<WatchId> = st.watchers.keys().copied().collect();
        for id in ids {
            st.make_unsynced(id);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Ends every watcher (their `recv` answers `None`, dropping anything still buffered) and stops
    /// the catch-up task. Later watches are born ended and `notify` does nothing.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        self.closed.store(true, Ordering::Release);
        // Dropping the entries drops their senders, which wakes every waiting `recv`.
        st.watchers.clear();
        st.synced.clear();
        st.unsynced.clear();
        drop(st);
        self.wake.notify_one();
        tracing::info!("watch hub closed");
    }

    /// The number of live watchers (synced or not); a gauge for metrics and tests.
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// The number of watchers behind the live stream, waiting for catch-up (etcd's slow watcher
    /// gauge).
    pub fn slow_watcher_count(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Whether [`close`](Self::close) has run.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The hub's part of [`super::Progress::revision`]: if nothing of watcher `id` is in its
    /// channel or handed out and unreported, the revision up to which it has been sent everything
    /// (`notified_revision` when synced, the revision before `next_revision` when being caught up);
    /// `None` otherwise, or when the watcher is gone. Under the lock, so no batch is queued meanwhile.
    pub(super) fn progress(&self, id: WatchId, shared: &Shared) -> Option<i64> {
        let st = self.lock();
        let entry = st.watchers.get(&id)?;
        // `queued` first: the reader marks a batch outstanding before it lowers the count.
        if shared.queued.load(Ordering::SeqCst) != 0 || shared.outstanding.load(Ordering::SeqCst) {
            return None;
        }
        Some(if st.unsynced.contains(&id) {
            entry.next_revision - 1
        } else {
            st.notified_revision
        })
    }

    /// Forgets a watcher; called when its [`Watcher`] is dropped.
    pub(super) fn unregister(&self, id: WatchId) {
        self.lock().remove(id);
        tracing::debug!(watch_id = %id, "watch cancelled");
    }

    /// Asks the catch-up task to run a round soon (a slow watcher made room in its channel).
    pub(super) fn wake_catch_up(&self) {
        self.wake.notify_one();
    }

    /// The hub lock. A poisoned lock (a panic inside a critical section, which holds no invariant
    /// half-done across a call that can panic) is taken over rather than propagated to every caller.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One catch-up round over every unsynced watcher. Blocking (reads history); run it on a blocking
    /// thread. Returns true when another round should follow at once: some watcher made progress but
    /// is not yet synced and is not waiting for its reader.
    fn catch_up_round(&self) -> bool {
        // 1. Under the lock: what each unsynced watcher needs.
        let jobs: Vec<Job> = {
            let st = self.lock();
            if st.closed {
                return false;
            }
            let max_queued = self.config.max_queued_events;
            st.unsynced
                .iter()
                .filter_map(|id| st.watchers.get(id).map(|e| (id, e)))
                // A watcher whose queue is full gets nothing this round (its reader wakes the next
                // one when it makes room): reading history for it would be wasted.
                .filter(|(_, e)| e.can_take_more(max_queued))
                .map(|(id, e)| Job {
                    id: *id,
                    key: e.key.clone(),
                    range_end: e.range_end.clone(),
                    from: e.next_revision,
                })
                .collect()
        };
        if jobs.is_empty() {
            return false;
        }

        // 2. Without the lock: read history. `current` is read first; every revision up to it is
        // in the store (rule 2).
        let current = self.history.current_revision();
        let reads = self.read_all(&jobs, current);

        // 3. Under the lock: send, advance, hand over.
        let mut again = false;
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        for (job, read) in jobs.into_iter().zip(reads) {
            // Only catch-up moves an unsynced watcher, so this holds unless the watcher was dropped;
            // checked so that no change elsewhere can make us send from a stale read.
            if !st.unsynced.contains(&job.id) {
                continue;
            }
            let Some(entry) = st.watchers.get_mut(&job.id) else {
                continue;
            };
            if entry.next_revision != job.from {
                continue;
            }
            match read {
                Read::Failed => {}
                Read::Compacted(compact_revision) => {
                    let batch = Queued {
                        events: SharedEvents::new(),
                        compact_revision,
                        revision: 0,
                    };
                    match entry.tx.try_send(batch) {
                        // etcd cancels a watch on a compacted revision; dropping the sender after the
                        // notice makes `recv` answer None next.
                        Ok(()) | Err(TrySendError::Closed(_)) => {
                            tracing::debug!(watch_id = %job.id, compact_revision, "watch compacted");
                            st.remove(job.id);
                        }
                        Err(TrySendError::Full(_)) => {} // the reader wakes us when there is room
                    }
                }
                Read::Events { events, to } => {
                    let (max_events, max_queued) =
                        (self.config.max_batch_events, self.config.max_queued_events);
                    match send_batches(entry, &events, to, max_events, max_queued) {
                        Sent::All => {
                            entry.next_revision = to + 1;
                            // Rule 3: every revision above `to` is still to be notified.
                            if to >= st.notified_revision {
                                st.make_synced(job.id);
                                tracing::debug!(watch_id = %job.id, rev = to + 1, "watcher synced");
                            } else {
                                again = true;
                            }
                        }
                        Sent::Full => {}
                        Sent::Closed => st.remove(job.id),
                    }
                }
            }
        }
        again
    }

    /// Reads every job's events from history, at most up to `current`. Jobs on the same range
    /// share reads: sorted by `from`, they form clusters whose `from`s all lie within one window of
    /// `max_catch_up_revisions` starting at the cluster's lowest, and each cluster is read once
    /// (a thousand watchers of one key that fell behind together cost one read and one copy of each
    /// event, not a thousand). Every job's window holds at least its own `from`, so each makes
    /// progress.
    fn read_all(&self, jobs: &[Job], current: i64) -> Vec<Read> {
        let compact = self.history.compact_revision();
        let window = self.config.max_catch_up_revisions;
        let mut reads: Vec<Option<Read>> = jobs.iter().map(|_| None).collect();
        // Jobs needing a read, grouped by range.
        let mut ranges: HashMap<(&[u8], &[u8]), Vec<usize>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.from < compact {
                // etcd: a watch may start at the compact revision itself, not below it.
                reads[i] = Some(Read::Compacted(compact));
            } else if job.from > current {
                // Nothing new in the store yet; an empty read lets the watcher hand over.
                reads[i] = Some(Read::Events {
                    events: Arc::default(),
                    to: job.from - 1,
                });
            } else {
                ranges
                    .entry((&job.key, &job.range_end))
                    .or_default()
                    .push(i);
            }
        }
        let mut clusters: Vec<Cluster<'_>> = Vec::new();
        for ((key, range_end), mut members) in ranges {
            members.sort_by_key(|&i| jobs[i].from);
            for i in members {
                match clusters.last_mut() {
                    Some((k, r, from, cluster))
                        if *k == key
                            && *r == range_end
                            && jobs[i].from <= from.saturating_add(window - 1) =>
                    {
                        cluster.push(i)
                    }
                    _ => clusters.push((key, range_end, jobs[i].from, vec![i])),
                }
            }
        }
        for (key, range_end, from, members) in clusters {
            let to = current.min(from.saturating_add(window - 1));
            let read = match self.history.events(key, range_end, from, to) {
                Ok(events) => Ok(Arc::new(events.into_iter().map(Arc::new).collect())),
                Err(Error::Compacted) => Err(Some(self.history.compact_revision())),
                Err(e) => {
                    tracing::warn!(rev = from, error = %e, "watch catch-up failed");
                    Err(None)
                }
            };
            for i in members {
                let job = &jobs[i];
                reads[i] = Some(match &read {
                    Ok(events) => Read::Events {
                        events: Arc::clone(events),
                        to,
                    },
                    Err(Some(compact)) if job.from < *compact => Read::Compacted(*compact),
                    Err(_) => Read::Failed,
                });
            }
        }
        reads
            .into_iter()
            .map(|r| r.unwrap_or(Read::Failed))
            .collect()
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        // Let the catch-up task notice at once that the hub is gone.
        self.wake.notify_one();
    }
}

/// What `deliver` did with one watcher's events of a live revision.
enum Delivery {
    /// Sent, or nothing to send (already sent from history, or all filtered out).
    Done,
    /// The channel is full: `next_revision` is the revision, and the watcher must become unsynced.
    Full,
    /// The reader is gone: the watcher must be removed.
    Closed,
}

/// Sends a synced watcher its (filtered) events of live `revision`, keeping rule 1 of the module
/// docs: below `next_revision` nothing is sent, and `next_revision` ends past what was sent, or at
/// `revision` when the channel was full (in batches, or in events: `max_queued`).
fn deliver<'a>(
    entry: &mut Entry,
    revision: i64,
    matched: impl IntoIterator<Item = &'a Arc<Event>>,
    max_queued: usize,
) -> Delivery {
    // Rule 1: already sent from history (or below a future start revision).
    if revision < entry.next_revision {
        return Delivery::Done;
    }
    let out: SharedEvents = matched
        .into_iter()
        .filter(|e| entry.accepts(e))
        .cloned()
        .collect();
    if out.is_empty() {
        entry.next_revision = revision + 1;
        return Delivery::Done;
    }
    if !entry.has_room(out.len(), max_queued) {
        entry.next_revision = revision;
        return Delivery::Full;
    }
    match entry.try_send(out, revision) {
        Ok(()) => {
            entry.next_revision = revision + 1;
            Delivery::Done
        }
        Err(TrySendError::Full(_)) => {
            // This revision was not sent: catch-up starts from it.
            entry.next_revision = revision;
            Delivery::Full
        }
        Err(TrySendError::Closed(_)) => Delivery::Closed,
    }
}

/// How far `send_batches` got.
enum Sent {
    /// Every batch is in the channel.
    All,
    /// The channel filled up; `next_revision` points at the first revision not sent.
    Full,
    /// The reader is gone.
    Closed,
}

/// Filters `events` (all on the watcher's range, in revision order; those below `next_revision`
/// are skipped) for `entry` and sends them in batches of at most `max_events`, cut only between
/// revisions, while the watcher has room for them (`max_queued` events in all). Advances
/// `entry.next_revision` past each batch sent.
fn send_batches(
    entry: &mut Entry,
    events: &[Arc<Event>],
    to: i64,
    max_events: usize,
    max_queued: usize,
) -> Sent {
    let (from, filter_put, filter_delete) =
        (entry.next_revision, entry.filter_put, entry.filter_delete);
    // Events are in revision order: skip what this watcher already has without walking it.
    let start = events.partition_point(|e| e.revision() < from);
    let mut iter = events[start..]
        .iter()
        .filter(|e| match e.kind {
            EventKind::Put => !filter_put,
            EventKind::Delete => !filter_delete,
        })
        .peekable();
    while iter.peek().is_some() {
        // Build only what the queue can take now: a batch that would be refused is work thrown
        // away, and with many slow watchers that waste is most of a catch-up round.
        if !entry.can_take_more(max_queued) {
            return Sent::Full;
        }
        let queued = entry.shared.queued.load(Ordering::Acquire);
        let limit = if queued == 0 {
            max_events
        } else {
            max_events.min(max_queued.saturating_sub(queued)).max(1)
        };
        let mut batch = SharedEvents::new();
        let mut revision = 0;
        while let Some(event) = iter.next() {
            revision = event.revision();
            batch.push(Arc::clone(event));
            // A batch ends only where a revision ends.
            if batch.len() >= limit && iter.peek().is_none_or(|next| next.revision() != revision) {
                break;
            }
        }
        // One revision may hold more events than the limit: re-check the whole batch.
        if !entry.has_room(batch.len(), max_queued) {
            return Sent::Full;
        }
        // The last batch of the read covers every revision up to `to`, filtered ones included.
        let covered = if iter.peek().is_none() { to } else { revision };
        match entry.try_send(batch, covered) {
            Ok(()) => entry.next_revision = revision + 1,
            Err(TrySendError::Full(_)) => return Sent::Full,
            Err(TrySendError::Closed(_)) => return Sent::Closed,
        }
    }
    Sent::All
}

/// Spawns the catch-up task. It holds the hub weakly, so it ends when the hub is dropped or closed.
fn spawn_catch_up(hub: &Arc<WatchHub>) {
    let weak = Arc::downgrade(hub);
    let wake = Arc::clone(&hub.wake);
    let period = hub.config.catch_up_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tick.tick() => {}
            }
            loop {
                let Some(hub) = weak.upgrade() else {
                    return;
                };
                if hub.is_closed() {
                    return;
                }
                // History reads may touch disk: keep them off the async workers.
                let again = match tokio::task::spawn_blocking(move || hub.catch_up_round()).await {
                    Ok(again) => again,
                    Err(e) => {
                        tracing::error!(error = %e, "watch catch-up round failed");
                        false
                    }
                };
                if !again {
                    break;
                }
            }
        }
    });
}
