//! The receiving end of one watch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::mpsc;

use super::{WatchBatch, WatchHub, WatchId};

/// One watch, as handed to a client stream. Read it with [`recv`](Self::recv); drop it to cancel the
/// watch (the hub forgets it at once).
pub struct Watcher {
    /// The hub-wide id, for logs and for the stream layer to map to its own watch ids.
    id: WatchId,
    /// The hub, to unregister on drop, to see `close`, and to wake catch-up.
    hub: Arc<WatchHub>,
    /// Batches from `notify` (live) and from catch-up (history), never both at once for one watcher.
    rx: mpsc::Receiver<WatchBatch>,
    /// True while the hub has this watcher in its unsynced set: after each read there is room in the
    /// channel, so catch-up is worth waking.
    slow: Arc<AtomicBool>,
}

impl Watcher {
    /// Wraps the receiving side of a watcher the hub has registered (or, once closed, not).
    pub(super) fn new(
        id: WatchId,
        hub: Arc<WatchHub>,
        rx: mpsc::Receiver<WatchBatch>,
        slow: Arc<AtomicBool>,
    ) -> Watcher {
        Watcher { id, hub, rx, slow }
    }

    /// The hub-wide id of this watch.
    pub fn id(&self) -> WatchId {
        self.id
    }

    /// The next batch of events, in revision order. `None` once the watch has ended: the hub was
    /// closed, or a batch with a non-zero `compact_revision` was delivered.
    pub async fn recv(&mut self) -> Option<WatchBatch> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
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
        if self.slow.load(Ordering::Acquire) {
            self.hub.wake_catch_up();
        }
        Poll::Ready(batch)
    }
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
