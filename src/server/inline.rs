//! Proposals from a connection's task: held back while its calls run, then proposed together, in a
//! Raft turn on the same thread when that is cheap.
//!
//! Sent to the Raft thread, a put crosses two threads: the connection's task wakes the Raft thread
//! to run the turn, which wakes the task again with the answer. On two vCPUs shared with the
//! clients those two wake-ups are the dearest part of a put (measured in
//! docs/performance-archive.md); a turn run on the connection's own thread
//! needs neither.
//!
//! So [`with_deferred_proposals`] wraps the part of a connection's poll that runs its calls
//! (`api::conn`): the proposals they make are held on the thread ([`submit`]), and when the calls
//! have had their turn the whole batch goes to [`RaftLoop::try_turn`]. If the Raft state is free and
//! its turns are short (`raft_loop`), the turn runs right there: the batch is appended, fsynced and
//! applied, the calls' waiters are answered, and the connection's next round sends the replies,
//! with no thread in between. Otherwise the batch is sent to the Raft thread in one message, as
//! every proposal made outside such a scope is (leases, the REST API, spawned calls).
//!
//! Nothing here changes what a reply means: a turn is the same code on either thread, and an entry
//! is acknowledged only after its fsync. A batch whose turn fails stops the node, as a failure on the
//! Raft thread does.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Error;
use crate::proto::etcdserverpb::request_op;
use crate::server::raft_loop::{Inline, Proposal, RaftLoop, RaftMsg};
use crate::server::request::Op;
use crate::server::Inner;

thread_local! {
    /// Whether proposals made on this thread are being held (inside [`with_deferred_proposals`]).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// The proposals held so far, and the server they are for.
    static HELD: RefCell<Option<(Arc<Inner>, Vec<Proposal>)>> = const { RefCell::new(None) };
}

/// Runs `f` (a connection's calls) with the proposals it makes held back, then proposes them
/// together: in a turn on this thread if the Raft loop allows it, else through the Raft thread.
pub fn with_deferred_proposals<R>(f: impl FnOnce() -> R) -> R {
    if HOLDING.with(|h| h.replace(true)) {
        return f(); // already inside a scope: its end proposes
    }
    let guard = Release;
    let result = f();
    drop(guard);
    result
}

/// [`with_deferred_proposals`] for one round of a connection's calls (`Server::call_round`).
pub fn round(calls: &mut dyn FnMut()) {
    with_deferred_proposals(calls)
}

/// Ends a holding scope, including when its calls panic: the flag is cleared, so later proposals on
/// this thread are not held forever, and what is held is proposed. After a panic the batch goes to
/// the Raft thread rather than running a turn during the unwind.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
        if let Some((inner, batch)) = HELD.with(|h| h.borrow_mut().take()) {
            if std::thread::panicking() {
                send(&inner, batch);
            } else {
                propose(&inner, batch);
            }
        }
    }
}

/// Proposes `p` for `inner`: held if this thread is in a holding scope, else sent to the Raft
/// thread at once. False when it could not be sent (the Raft loop is gone); a held proposal that
/// later cannot be proposed has its waiter answered `Stopped` instead.
pub(super) fn submit(inner: &Arc<Inner>, p: Proposal) -> bool {
    // A limit of zero runs no turn inline: nothing is held either, as before inline turns existed.
    // With peers every turn is the Raft thread's (`raft_loop`): nothing is held either.
    if !HOLDING.with(Cell::get)
        || inner.config.inline_turn_limit.is_zero()
        || !inner.shared.solo.load(Ordering::Acquire)
    {
        return try_send(inner, vec![p]).is_ok();
    }
    let other = HELD.with(|h| {
        let mut held = h.borrow_mut();
        match held.as_mut() {
            Some((i, batch)) if Arc::ptr_eq(i, inner) => {
                batch.push(p);
                None
            }
            // Nothing held, or held for another server (tests run several in one process).
            _ => held.replace((inner.clone(), vec![p])),
        }
    });
    if let Some((other, batch)) = other {
        propose(&other, batch);
    }
    true
}

/// Proposes a held batch: a turn here if the Raft loop takes it, else the Raft thread's.
fn propose(inner: &Inner, batch: Vec<Proposal>) {
    match RaftLoop::try_turn(&inner.core, batch) {
        Inline::Ran => {}
        Inline::Failed(e) => {
            // No proposal may reach the Raft thread from now on: later ones are answered
            // `Stopped` at once, and the thread wakes to find the loop ended.
            inner
                .shared
                .raft_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            inner.shared.fail("raft (inline turn)", &e);
        }
        Inline::Declined(batch) => send(inner, batch),
    }
}

/// Sends `batch` to the Raft thread; if it is gone, answers every waiter `Stopped`.
fn send(inner: &Inner, batch: Vec<Proposal>) {
    if let Err(batch) = try_send(inner, batch) {
        for p in batch {
            inner.shared.wait.trigger(p.id, Err(Error::Stopped));
        }
    }
}

/// Sends `batch` to the Raft thread, or gives it back if the thread is gone. Counted in
/// `raft_queued` until the thread takes it, so that no turn on a connection's task overtakes it.
fn try_send(inner: &Inner, batch: Vec<Proposal>) -> Result<(), Vec<Proposal>> {
    let tx = inner
        .shared
        .raft_tx
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(tx) = tx.as_ref() else {
        return Err(batch);
    };
    let queued = &inner.shared.raft_queued;
    queued.fetch_add(1, Ordering::AcqRel);
    tx.send(RaftMsg::Propose(batch)).map_err(|e| {
        queued.fetch_sub(1, Ordering::AcqRel);
        match e.0 {
            RaftMsg::Propose(batch) => batch,
            _ => Vec::new(), // only a Propose was sent
        }
    })
}

/// If applying `op` costs about as little as a put, so that a batch of such requests may run on a
/// connection's task: at most how many backend writes it makes (per put its record, its lease's
/// and, once per request, the consistent index). That is a put, or a transaction that only puts and
/// compares single keys. A delete may remove any number of keys, and a range (a transaction's
/// range, or a compare with a range end) may read any number.
pub(super) fn inline_writes(op: &Op) -> Option<usize> {
    match op {
        Op::Put(_) => Some(3),
        Op::Txn(t) => {
            let only_puts = t
                .success
                .iter()
                .chain(&t.failure)
                .all(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))));
            let single_keys = t.compare.iter().all(|c| c.range_end.is_empty());
            let puts = t.success.len().max(t.failure.len());
            (only_puts && single_keys).then_some(2 * puts + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
