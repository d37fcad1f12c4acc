//! The watch hub: streams every change on a key or key range to its watchers, in revision order,
//! with nothing lost and nothing repeated.
//!
//! # Where events come from
//!
//! Two sources feed a watcher, and the whole design is about handing a watcher from one to the other
//! without a gap or a duplicate:
//!
//! * **Live:** the single apply step calls [`WatchHub::notify`] after each write transaction, *after*
//!   the store shows that revision. `notify` fans the transaction's events out to the *synced*
//!   watchers with a non-blocking `try_send` into each watcher's bounded channel. It never waits: a
//!   writer must not be slowed down by a client that reads slowly.
//! * **History:** a watcher that is behind (it asked for a past `start_revision`, or its channel was
//!   full when `notify` came by) is *unsynced*. A background catch-up task reads its missing events
//!   from [`History::events`] (the MVCC store) and sends them, then moves the watcher back to the
//!   synced set. The task runs when woken (a watcher fell behind, a new watcher needs replay, a slow
//!   reader drained its channel) and otherwise every [`WatchConfig::catch_up_interval`].
//!
//! This is etcd's synced / unsynced split. etcd's third group, *victims* (watchers whose catch-up
//! batch did not fit), is folded into unsynced here: a catch-up that finds the channel full simply
//! stops at the first batch that did not fit and retries from there next round.
//!
//! # The invariant
//!
//! Every watcher has a `next_revision`: every matching event below it has been put into its channel,
//! none at or above it has. Under the hub's lock the hub also records `notified_revision`, the highest
//! revision [`WatchHub::notify`] has fanned out; `notify` is called once per revision, in increasing
//! order.
//!
//! 1. **Synced watchers** get every event `notify` brings with `revision >= next_revision`; events
//!    below it are dropped (they were already sent from history). When a `try_send` fails because the
//!    channel is full, the watcher's `next_revision` becomes that revision and it moves to unsynced,
//!    all under the lock in the same `notify` call, so that revision is neither sent twice nor lost.
//! 2. **Unsynced watchers** are skipped by `notify`. Catch-up reads, *outside* the lock, the store's
//!    current revision and then the events in `[next_revision, R]`, where `R` is that revision or,
//!    for a watcher far behind, [`WatchConfig::max_catch_up_revisions`] past `next_revision` (it
//!    then takes several rounds). It then takes the lock, sends what fits, and sets `next_revision`
//!    past what it sent.
//! 3. **The hand-over.** Still under that lock, a watcher that has been sent everything up to `R`
//!    moves to synced only if `notified_revision <= R`. Why that suffices: every `notify` for a
//!    revision `<= notified_revision` has already run (and anything it carried is also in history
//!    up to `R`); a `notify` for revision `> R` that has not run yet must take the lock after us and
//!    finds the watcher synced with `next_revision = R + 1`, so it delivers; a late `notify` for a
//!    revision `<= R` (the store already showed it, the apply step had not yet called us) is
//!    dropped by rule 1. If instead `notified_revision > R`, events in `(R, notified_revision]` were
//!    fanned out while the watcher was unsynced; it stays unsynced and the next round (run at once)
//!    reads them from history.
//!
//! The check uses the hub's own `notified_revision` rather than re-reading the store's current
//! revision: it is never ahead of the store (the store shows a revision before `notify` is called), so
//! the condition holds at least as often and hand-over converges under a steady write load; and it
//! stays correct even if a caller were to notify before the store shows the revision.
//!
//! New watchers follow the same rule. The hub reads the store's current revision `C`, then under the
//! lock takes `head = max(C, notified_revision)`: every revision up to `head` is in the store, and
//! every revision above it is still to be notified (a notify that ran after the read raised
//! `notified_revision`). With `start_revision` 0 the watcher starts synced at `head + 1`; with a
//! `start_revision` above `head` it starts synced there and rule 1 holds back the revisions below
//! it; otherwise it starts unsynced and replays from history.
//!
//! Compaction: if catch-up finds `next_revision < compact_revision` the watcher gets one batch whose
//! `compact_revision` is set, and is then cancelled (its channel is closed, `recv` answers `None`), as
//! etcd cancels a watch on a compacted revision.
//!
//! # Memory
//!
//! What a watcher has queued is bounded twice: in batches (the channel's capacity) and in events
//! ([`WatchConfig::max_queued_events`]; an empty channel always takes one batch, so a revision
//! larger than that still arrives). A watcher over either bound is slow and goes to catch-up. The
//! queued events are shared: `notify` copies each event once for all the watchers it reaches, and
//! catch-up reads history once for every unsynced watcher of a range whose `next_revision`s lie
//! within one window, so a thousand watchers of a key that fell behind together cost one read and
//! one copy, not a thousand (before, one round could hold several hundred thousand copies). The
//! [`Watcher`] makes the reader's own copy as it hands a batch out.
//!
//! # Locking
//!
//! One `std::sync::Mutex` guards the watcher table. Its critical sections are short (index look-ups,
//! `try_send`, set moves) and never `.await`, so a std mutex is cheaper than an async one. The hub
//! never calls [`History`] while holding it: history reads, which may touch disk, run on a blocking
//! thread with the lock released, and there is no lock-order cycle even if the store calls `notify`
//! while holding locks of its own.
//!
//! # Matching
//!
//! Synced exact-key watchers (empty `range_end`) sit in a `HashMap` from key to watcher ids, so a put
//! on one key reaches a thousand watchers of that key with one look-up. A single-event revision
//! (the common case) goes straight to each matching watcher; only a multi-event transaction first
//! groups its events per watcher. Range watchers are checked one
//! by one against each event. Ranges follow etcd: an empty `range_end` means exactly `key`,
//! `range_end == [0]` means every key `>= key`, otherwise `key <= k < range_end`.
//!
//! # Left out
//!
//! A cap on watchers per catch-up round (etcd syncs at most 512 at a time); an interval tree for
//! range watchers (a linear scan is fine for a handful of range watchers);
//! progress notifications; fragmenting huge batches; watch ids per gRPC stream (the stream
//! layer assigns those; [`WatchId`] here is hub-wide); and the response header, which the API layer
//! fills in.

mod hub;
mod index;
mod watcher;

#[cfg(test)]
mod tests;

pub use hub::{WatchConfig, WatchHub};
pub use index::prefix_end;
pub use watcher::{Progress, Watcher};

pub use crate::mvcc::{Event, EventKind, History, KeyValue};

/// A request to watch a key or range (the fields of etcd's `WatchCreateRequest` the hub cares about).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// The key, or the start of the range.
    pub key: Vec<u8>,
    /// The end of the range: empty for exactly `key`, `[0]` for every key `>= key`, else exclusive end.
    pub range_end: Vec<u8>,
    /// The first revision to report; 0 means "from the next revision on".
    pub start_revision: i64,
    /// Send each event's previous key-value.
    pub prev_kv: bool,
    /// Do not send put events (etcd's `NOPUT` filter).
    pub filter_put: bool,
    /// Do not send delete events (etcd's `NODELETE` filter).
    pub filter_delete: bool,
}

/// What a watcher receives: the events of one or more revisions, or a cancellation by compaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchBatch {
    /// The events, in revision order; empty for a compaction notice.
    pub events: Vec<Event>,
    /// Non-zero when the watch asked for a revision compaction has removed: the watch is cancelled,
    /// and this is the store's compact revision (etcd's `WatchResponse.compact_revision`).
    pub compact_revision: i64,
    /// The revision up to which this batch brings the watch, events its filters dropped included:
    /// a live batch's revision; for a catch-up, the last event's, except that the last batch of a
    /// read of history carries the revision the read went to (etcd reports the store's revision
    /// in a catch-up response). 0 for a compaction notice.
    pub revision: i64,
}

/// A hub-wide identifier for a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchId(pub u64);

impl std::fmt::Display for WatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `k` lies in the range `[key, range_end)` with etcd's conventions for an empty `range_end`
/// (exactly `key`) and `range_end == [0]` (every key from `key` on).
pub fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}
