//! The receiving end of one watch, and what the hub queues for it.
//!
//! The hub queues references ([`Queued`]): an event that reaches a thousand watchers is copied
//! once and shared, so a watcher's queue costs a pointer per event, not a copy of the key and
//! value. The watcher turns them into owned events ([`WatchBatch`]) as it hands them out, dropping
//! `prev_kv` unless the watch asked for it; that copy is the reader's, made only when it reads.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use smallvec::SmallVec;
use tokio::sync::mpsc;

use super::{Event, WatchBatch, WatchHub, WatchId};

/// The events of one queued batch, shared with the other watchers that got them (one inline: a
/// live revision of one event, the common case, needs no allocation).
pub(super) type SharedEvents = SmallVec<[Arc<Event>; 1]>;

/// One batch in a watcher's channel.
pub(super) struct Queued {
    /// The events, in revision order; empty for a compaction notice.
    pub(super) events: SharedEvents,
    /// Non-zero for a compaction notice (see [`WatchBatch::compact_revision`]).
    pub(super) compact_revision: i64,
    /// See [`WatchBatch::revision`].
    pub(super) revision: i64,
}

/// State the hub and a watcher share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// True while the hub has this watcher in its unsynced set: after each read there is room in
    /// the channel, so catch-up is worth waking.
    pub(super) slow: AtomicBool,
    /// Events in the channel: added by the hub before it sends, subtracted here on receipt.
    pub(super) queued: AtomicUsize,
    /// True from the moment a batch leaves the channel (set before `queued` drops) until the reader
    /// says it has passed everything it was handed on ([`Watcher::forwarded`]).
    pub(super) outstanding: AtomicBool,
    /// Every event of this watch up to this revision has been passed on by the reader (at start,
    /// the revision before the watch's first).
    pub(super) forwarded: AtomicI64,
}

/// What a client of this watch can be told about progress, readable by other tasks than the one
/// that reads the [`Watcher`] (a stream answering a progress request for all its watches).
#[derive(Clone)]
pub struct Progress {
    id: WatchId,
    hub: Arc<WatchHub>,
    shared: Arc<Shared>,
}

impl Progress {
    /// The revision up to which every event of this watch has been passed on by its reader: a
    /// client told this revision and resuming from the next one misses nothing. Never ahead of what
    /// was delivered: while events are in the channel, or were handed out and not yet reported
    /// [`Watcher::forwarded`], it is the last revision reported forwarded; otherwise the hub's
    /// (everything notified for a synced watcher, everything below its next revision for one being
    /// caught up).
    pub fn revision(&self) -> i64 {
        let forwarded = self.shared.forwarded.load(Ordering::SeqCst);
        self.hub
            .progress(self.id, &self.shared)
            .map_or(forwarded, |hub| hub.max(forwarded))
    }
}

/// One watch, as handed to a client stream. Read it with [`recv`](Self::recv); drop it to cancel the
/// watch (the hub forgets it at once).
pub struct Watcher {
    /// The hub-wide id, for logs and for the stream layer to map to its own watch ids.
    id: WatchId,
    /// The hub, to unregister on drop, to see `close`, and to wake catch-up.
    hub: Arc<WatchHub>,
    /// Batches from `notify` (live) and from catch-up (history), never both at once for one watcher.
    rx: mpsc::Receiver<Queued>,
    /// The slow flag and the queued-event count, shared with the hub.
    shared: Arc<Shared>,
    /// Hand out each event's `prev_kv` (the watch asked for it).
    prev_kv: bool,
    /// A batch read while merging that did not fit (or a compaction notice), handed out next.
    held: Option<WatchBatch>,
}

impl Watcher {
    /// Wraps the receiving side of a watcher the hub has registered (or, once closed, not).
    pub(super) fn new(
        id: WatchId,
        hub: Arc<WatchHub>,
        rx: mpsc::Receiver<Queued>,
        shared: Arc<Shared>,
        prev_kv: bool,
    ) -> Watcher {
        Watcher {
            id,
            hub,
            rx,
            shared,
            prev_kv,
            held: None,
        }
    }

    /// The hub-wide id of this watch.
    pub fn id(&self) -> WatchId {
        self.id
    }

    /// A handle on this watch's progress ([`Progress::revision`]).
    pub fn progress(&self) -> Progress {
        Progress {
            id: self.id,
            hub: Arc::clone(&self.hub),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Reports that every event handed out so far, up to `revision`, has been passed on to the
    /// client (written into its response stream, in order before anything sent later). Until then
    /// progress does not count the batches handed out.
    pub fn forwarded(&mut self, revision: i64) {
        self.shared.forwarded.fetch_max(revision, Ordering::SeqCst);
        if self.held.is_none() {
            self.shared.outstanding.store(false, Ordering::SeqCst);
        }
    }

    /// The events waiting in this watcher's channel (at most `WatchConfig::max_queued_events`,
    /// or one batch); a gauge for tests and metrics.
    pub fn queued_events(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// The next batch of events, in revision order. `None` once the watch has ended: the hub was
    /// closed, or a batch with a non-zero `compact_revision` was delivered.
    pub async fn recv(&mut self) -> Option<WatchBatch> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv), merged as [`poll_recv_merged`](Self::poll_recv_merged) does.
    pub async fn recv_merged(&mut self, max_events: usize, max_bytes: usize) -> Option<WatchBatch> {
        std::future::poll_fn(|cx| self.poll_recv_merged(cx, max_events, max_bytes)).await
    }

    /// [`poll_recv`](Self::poll_recv), merged: the next batch together with the batches already
    /// waiting behind it, as long as the result stays within `max_events` events and `max_bytes`
    /// bytes of keys and values (a batch is never split, so a single batch may exceed either). A
    /// watcher that fell behind by many small live revisions then gets them in one response, as etcd
    /// sends a catch-up, instead of one response per revision. A compaction notice is never merged:
    /// the events before it come first, and the notice on the next call. A batch that would overflow
    /// the limits is kept for the next call, as the notice is.
    pub fn poll_recv_merged(
        &mut self,
        cx: &mut Context<'_>,
        max_events: usize,
        max_bytes: usize,
    ) -> Poll<Option<WatchBatch>> {
        let mut merged = match self.held.take() {
            Some(batch) => batch,
            None => match ready!(self.poll_recv(cx)) {
                Some(batch) => batch,
                None => return Poll::Ready(None),
            },
        };
        if merged.compact_revision != 0 {
            return Poll::Ready(Some(merged));
        }
        let mut bytes = batch_bytes(&merged);
        while merged.events.len() < max_events && bytes < max_bytes {
            match self.poll_recv(cx) {
                Poll::Ready(Some(next)) => {
                    let next_bytes = batch_bytes(&next);
                    if next.compact_revision != 0
                        || merged.events.len() + next.events.len() > max_events
                        || bytes + next_bytes > max_bytes
                    {
                        self.held = Some(next);
                        break;
                    }
                    bytes += next_bytes;
                    merged.events.extend(next.events);
                    merged.revision = merged.revision.max(next.revision);
                }
                // Ended, or nothing more yet: what is merged goes now.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(Some(merged))
    }

    /// [`recv`](Self::recv) as a poll: lets one task serve many watchers, each with its own waker,
    /// instead of one task per watcher.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<WatchBatch>> {
        if self.hub.is_closed() {
            return Poll::Ready(None);
        }
        let batch = ready!(self.rx.poll_recv(cx));
        // `close` drops the senders; batches still buffered are not delivered after it.
        if self.hub.is_closed() {
            return Poll::Ready(None);
        }
        let Some(queued) = batch else {
            return Poll::Ready(None);
        };
        // Outstanding before the count drops: a progress check that sees the channel empty then
        // sees the batch handed out (`WatchHub::progress`).
        self.shared.outstanding.store(true, Ordering::SeqCst);
        self.shared
            .queued
            .fetch_sub(queued.events.len(), Ordering::SeqCst);
        if self.shared.slow.load(Ordering::Acquire) {
            self.hub.wake_catch_up();
        }
        let events = queued
            .events
            .iter()
            .map(|e| Event {
                kind: e.kind,
                kv: e.kv.clone(),
                // etcd sends prev_kv only to watchers that asked for it.
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect();
        Poll::Ready(Some(WatchBatch {
            events,
            compact_revision: queued.compact_revision,
            revision: queued.revision,
        }))
    }
}

/// The bytes of keys and values a batch carries (its `prev_kv`s included), the bulk of its encoding.
fn batch_bytes(batch: &WatchBatch) -> usize {
    let kv_bytes = |kv: &crate::mvcc::KeyValue| kv.key.len() + kv.value.len();
    batch
        .events
        .iter()
        .map(|e| kv_bytes(&e.kv) + e.prev_kv.as_ref().map_or(0, kv_bytes))
        .sum()
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("id", &self.id).finish()
    }
}
