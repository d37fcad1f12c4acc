//! Propose-and-wait: a request id, a parked waiter, and exactly one answer for each.
//!
//! A client task registers a waiter under a fresh id, proposes, and awaits. Whoever learns the outcome
//! first answers it: the apply step with the result, the Raft loop with an error when the proposal was
//! dropped, the client itself on timeout (it cancels), or shutdown (every waiter gets `Stopped`). A
//! waiter is answered at most once because answering removes it from the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, TxnResponse,
};

/// The outcome of an applied request, handed to the waiting client: etcd's response message, with the
/// header's revision set (the API layer fills in the rest of the header).
#[derive(Debug, Clone)]
pub enum ApplyResult {
    /// A put.
    Put(PutResponse),
    /// A delete.
    DeleteRange(DeleteRangeResponse),
    /// A transaction.
    Txn(TxnResponse),
    /// A compaction.
    Compaction(CompactionResponse),
    /// A lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// A lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// An alarm change.
    Alarm(AlarmResponse),
    /// A lease checkpoint.
    LeaseCheckpoint,
    /// A membership change: the members after it.
    Members(Vec<crate::proto::etcdserverpb::Member>),
    /// An auth change or Authenticate.
    Auth(crate::auth::Applied),
}

/// The registry of parked waiters.
pub struct Wait {
    /// Waiters by request id. A std Mutex: every critical section is a map insert/remove, never awaits.
    waiters: Mutex<HashMap<u64, oneshot::Sender<Result<ApplyResult>>>>,
    /// The next request id, laid out as etcd's (`idutil`): the member id's low 16 bits, then the
    /// wall clock in milliseconds (40 bits) and a counter (8 bits) that carries into it. Ids of
    /// entries replayed after a restart never collide with ids handed out by this process, and ids
    /// proposed by two members never collide with each other, so a member answers only its own
    /// waiters when it applies another's entry.
    next_id: AtomicU64,
}

impl Default for Wait {
    fn default() -> Self {
        Self::new()
    }
}

impl Wait {
    /// An empty registry (member prefix 0).
    pub fn new() -> Wait {
        Wait::for_member(0)
    }

    /// An empty registry whose ids carry `member_id`'s prefix.
    pub fn for_member(member_id: u64) -> Wait {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let suffix = (millis & ((1 << 40) - 1)) << 8;
        Wait {
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new((member_id << 48) | suffix),
        }
    }

    /// Registers a waiter under a new id.
    pub fn register(&self) -> (u64, oneshot::Receiver<Result<ApplyResult>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    /// Answers the waiter `id`, if it is still waiting.
    pub fn trigger(&self, id: u64, result: Result<ApplyResult>) {
        let tx = self.lock().remove(&id);
        if let Some(tx) = tx {
            // The receiver may have gone (client timed out); that is fine.
            let _ = tx.send(result);
        }
    }

    /// Forgets a waiter whose client stopped waiting.
    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Answers every waiter with the error `make()` builds (used at shutdown).
    pub fn fail_all(&self, make: impl Fn() -> Error) {
        let all: Vec<_> = self.lock().drain().collect();
        for (_, tx) in all {
            let _ = tx.send(Err(make()));
        }
    }

    /// How many clients are waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<ApplyResult>>>> {
        // A poisoned map is still a valid map: waiters are independent of each other.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_gets_one_answer() {
        let w = Wait::new();
        let (a, ra) = w.register();
        let (b, rb) = w.register();
        let (c, rc) = w.register();
        assert_ne!(a, b);
        w.trigger(
            a,
            Ok(ApplyResult::Compaction(CompactionResponse::default())),
        );
        w.trigger(a, Ok(ApplyResult::Txn(TxnResponse::default()))); // second answer is ignored
        w.cancel(b);
        w.fail_all(|| Error::Stopped);
        assert!(matches!(ra.await, Ok(Ok(ApplyResult::Compaction(_)))));
        assert!(rb.await.is_err(), "a cancelled waiter is dropped");
        assert!(matches!(rc.await, Ok(Err(Error::Stopped))));
        assert!(w.is_empty());
        let _ = c;
    }
}
