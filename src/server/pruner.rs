//! The one thread that drops compacted revisions.
//!
//! Applying a compaction only marks it (`Store::mark_compacted`); removing the old revisions from
//! the key index and the backend ([`Store::prune`]) runs here, beside the apply step, so that writes
//! never wait for it. Requests do not queue one by one: a prune at revision `r` removes everything a
//! prune at a lower revision would, so only the highest revision asked for since the last prune is
//! kept. A flood of compaction requests therefore costs one pending number, not a thread each.
//!
//! A prune that fails is logged and left to the next start (`Store::open` finishes it); reads are
//! unaffected meanwhile.

use std::sync::{Arc, Condvar, Mutex};

use crate::mvcc::Store;

/// What the thread is asked to do next.
#[derive(Default)]
struct Pending {
    /// The highest revision asked for and not yet pruned.
    rev: Option<i64>,
    /// Set at shutdown.
    stop: bool,
}

/// Hands compactions to the pruning thread.
#[derive(Default)]
pub struct Pruner {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Pruner {
    /// Asks for the revisions below `rev` to be pruned; returns at once.
    pub fn request(&self, rev: i64) {
        let mut p = self.lock();
        p.rev = Some(p.rev.map_or(rev, |r| r.max(rev)));
        self.wake.notify_one();
    }

    /// Ends [`Pruner::run`] once the prune in progress, if any, is done; pending ones are left to
    /// the next start.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    /// The pruning thread: prunes what is asked until [`Pruner::stop`].
    pub fn run(self: Arc<Self>, store: Arc<Store>) {
        loop {
            let rev = {
                let mut p = self.lock();
                loop {
                    if p.stop {
                        return;
                    }
                    if let Some(rev) = p.rev.take() {
                        break rev;
                    }
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            };
            crate::fault::panic_point("compaction");
            if let Err(e) = store.prune(rev) {
                tracing::error!(rev, error = %e, "compaction prune failed");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_coalesce_to_the_highest_revision() {
        let p = Pruner::default();
        p.request(5);
        p.request(9);
        p.request(7);
        assert_eq!(p.lock().rev, Some(9));
    }
}
