//! The apply step: the only code that changes the key-value state.
//!
//! Committed entries arrive in log order from the Raft loop. Each is decoded, applied to the MVCC store
//! in one write transaction whose end records the entry's index as the consistent index (in the same
//! backend batch as the data), its events go to the watch hub, and its waiter, if this process proposed
//! it, gets the result. Entries at or below the store's consistent index were applied before a restart
//! and are skipped, so a replay after a crash applies exactly the missing suffix.
//!
//! Errors split by `Error::is_deterministic`: a request that fails the same way on every replica (a
//! compaction of a future revision, say) is answered to its client and the entry still counts as applied;
//! anything else (disk, corruption) stops the node, because continuing would diverge from the log.
//!
//! The apply step also decides two background chores: a backend commit when the batch has grown large,
//! and a snapshot every `--snapshot-count` entries.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use raft::prelude::{Entry, EntryType};

use crate::auth::{AuthHeader, AuthStore, Caller};
use crate::error::{Error, Result};
use crate::mvcc::{WriteBatch, WriteTxn};
use crate::proto::etcdserverpb::{
    CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};
use crate::server::kv::{self, LeaseCheck, LeaseEffect};
use crate::server::request::{Op, RaftRequest};
use crate::server::wait::ApplyResult;
use crate::server::Shared;
use crate::snap::SnapshotPolicy;

/// Commit the backend batch early when it holds this many writes (etcd: 10,000).
pub const BACKEND_BATCH_LIMIT: usize = 10_000;

/// The apply step's state, owned by the Raft loop.
pub struct Applier {
    /// Shared server state (store, hub, waiters, counters).
    pub shared: Arc<Shared>,
    /// When to snapshot.
    pub snapshots: SnapshotPolicy,
}

/// [`Applier::heavy_ahead`] on its inputs: `pending` backend writes, then `count` entries after
/// `last` (the last of them the highest index the turn can apply) that make at most `writes` more.
fn heavy_ahead(
    pending: usize,
    snapshots: &SnapshotPolicy,
    last: u64,
    count: usize,
    writes: usize,
) -> bool {
    pending.saturating_add(writes) >= BACKEND_BATCH_LIMIT
        || snapshots.due(last.saturating_add(count as u64))
}

/// A snapshot that applied entries made due. The backend already durably holds everything up to
/// `index`, so the Raft loop may record the snapshot and release the WAL below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotDue {
    /// The applied index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
}

impl Applier {
    /// Whether applying `count` more entries after index `last`, which make at most `writes`
    /// backend writes, could make the turn commit the backend or take a snapshot: the turns that take
    /// milliseconds rather than microseconds, which the Raft loop keeps on its own thread
    /// (`raft_loop`).
    pub fn heavy_ahead(&self, last: u64, count: usize, writes: usize) -> bool {
        heavy_ahead(
            self.shared.store.backend_pending(),
            &self.snapshots,
            last,
            count,
            writes,
        )
    }

    /// Applies one batch of committed entries, in order, then does the chores they make due; returns
    /// the snapshot they made due, if any. An error is fatal for the node.
    pub fn apply_batch(&mut self, entries: &[Entry]) -> Result<Option<SnapshotDue>> {
        for e in entries {
            self.apply_entry(e)?;
        }
        if self.shared.store.backend_pending() >= BACKEND_BATCH_LIMIT {
            self.shared.store.commit_backend()?;
        }
        // Every entry of the batch is applied: the last one is the applied index.
        if let Some(last) = entries.last().filter(|e| self.snapshots.due(e.index)) {
            // The backend must durably hold everything the snapshot claims before the
            // WAL below it may go.
            self.shared.store.commit_backend()?;
            self.snapshots.taken(last.index);
            return Ok(Some(SnapshotDue {
                index: last.index,
                term: last.term,
            }));
        }
        Ok(None)
    }

    fn apply_entry(&mut self, e: &Entry) -> Result<()> {
        let store = self.shared.store.clone();
        if e.index <= store.consistent_index() {
            // Applied before the last restart: the backend already has it.
            self.shared.applied_index.store(e.index, Ordering::Release);
            return Ok(());
        }
        if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
            // The empty entry a new leader appends, or a membership change: no key-value effect.
            store.set_consistent_index(e.index);
        } else {
            let req = RaftRequest::decode(&e.data[..])?;
            let result = match self.apply_request(e.index, req.op, req.auth.as_ref()) {
                Ok(r) => Ok(r),
                Err(err) if err.is_deterministic() => {
                    store.set_consistent_index(e.index);
                    Err(err)
                }
                Err(err) => return Err(err),
            };
            // Applied before the client hears of it: a status read right after the reply must
            // count this entry.
            self.shared.applied_index.store(e.index, Ordering::Release);
            self.shared.wait.trigger(req.id, result);
            return Ok(());
        }
        self.shared.applied_index.store(e.index, Ordering::Release);
        Ok(())
    }

    fn apply_request(
        &mut self,
        index: u64,
        op: Option<Op>,
        auth: Option<&AuthHeader>,
    ) -> Result<ApplyResult> {
        let store = self.shared.store.clone();
        if let Some(op) = &op {
            // The proposer's permissions, as of this entry (see `auth`).
            if auth.is_some() {
                self.check_permission(&AuthStore::caller_of(auth), op)?;
            }
            // A NOSPACE alarm holds back writes that grow the backend (see `alarm.rs`).
            self.shared.alarms.refuses(op)?;
        }
        match op {
            Some(Op::Put(req)) => {
                let (mut resp, revision) =
                    self.write(index, |txn, leases, fx| kv::put(txn, leases, &req, fx))?;
                resp.header = header(revision);
                Ok(ApplyResult::Put(resp))
            }
            Some(Op::DeleteRange(req)) => {
                let (mut resp, revision) =
                    self.write(index, |txn, _, fx| kv::delete_range(txn, &req, fx))?;
                resp.header = header(revision);
                Ok(ApplyResult::DeleteRange(resp))
            }
            Some(Op::Txn(req)) => {
                let (mut resp, revision) =
                    self.write(index, |txn, leases, fx| kv::txn(txn, leases, &req, fx))?;
                // The operations' headers were set as they ran (`kv::txn`).
                resp.header = header(revision);
                Ok(ApplyResult::Txn(resp))
            }
            Some(Op::Compaction(req)) => {
                // The logical compaction is part of applying the entry; dropping the old revisions is
                // not, and runs beside the apply step in small locked chunks (etcd schedules it the
                // same way), so writes never wait for it.
                store.mark_compacted(req.revision, index)?;
                if req.physical {
                    // `physical`: answer only once the compaction is done and on disk.
                    store.prune(req.revision)?;
                    store.commit_backend()?;
                } else {
                    self.shared.pruner.request(req.revision);
                }
                Ok(ApplyResult::Compaction(CompactionResponse {
                    header: header(store.current_revision()),
                }))
            }
            Some(Op::LeaseGrant(req)) => {
                let lessor = self.shared.lessor.clone();
                let ((id, ttl), revision) = self.write(index, |txn, _, _| {
                    lessor.grant(req.id, req.ttl, txn.backend_batch())
                })?;
                Ok(ApplyResult::LeaseGrant(LeaseGrantResponse {
                    header: header(revision),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Some(Op::LeaseRevoke(req)) => {
                let lessor = self.shared.lessor.clone();
                // Every attached key goes in the same revision as the lease itself (etcd's revoke).
                let ((), revision) = self.write(index, |txn, _, _| {
                    let mut batch = WriteBatch::new();
                    let keys = lessor.revoke(req.id, &mut batch)?;
                    for key in keys {
                        txn.delete_range(&key, &[])?;
                    }
                    txn.backend_batch().extend(batch);
                    Ok(())
                })?;
                Ok(ApplyResult::LeaseRevoke(LeaseRevokeResponse {
                    header: header(revision),
                }))
            }
            Some(Op::Alarm(req)) => Ok(ApplyResult::Alarm(
                self.shared.alarms.apply(&store, index, &req)?,
            )),
            Some(Op::LeaseCheckpoint(req)) => {
                let mut batch = WriteBatch::new();
                for c in &req.checkpoints {
                    self.shared
                        .lessor
                        .checkpoint(c.id, c.remaining_ttl, &mut batch);
                }
                store.write_meta(index, batch);
                Ok(ApplyResult::LeaseCheckpoint)
            }
            Some(Op::MemberAttributes(attrs)) => {
                let mut batch = WriteBatch::new();
                self.shared.members.apply_attributes(&attrs, &mut batch);
                store.write_meta(index, batch);
                if let Some(t) = self.shared.transport.get() {
                    if let Some(m) = self.shared.members.member(attrs.id) {
                        t.add_peer(m.id, m.peer_urls);
                    }
                }
                Ok(ApplyResult::Members(self.shared.members.etcd_members()))
            }
            Some(Op::Auth(req)) => {
                let op = req.op.ok_or_else(|| {
                    Error::InvalidArgument("empty auth request in Raft entry".into())
                })?;
                let mut batch = WriteBatch::new();
                let applied = self
                    .shared
                    .auth
                    .apply(&AuthStore::caller_of(auth), &op, &mut batch);
                // Refused changes count as applied too: the consistent index moves either way.
                store.write_meta(index, batch);
                Ok(ApplyResult::Auth(applied?))
            }
            None => Err(Error::InvalidArgument("empty request in Raft entry".into())),
        }
    }

    /// Whether `caller` may apply `op`: the writes are checked here, against the auth state of
    /// this point of the log; auth changes check their own rule in [`AuthStore::apply`].
    fn check_permission(&self, caller: &Caller, op: &Op) -> Result<()> {
        let auth = &self.shared.auth;
        let lessor = &self.shared.lessor;
        let lease_keys = |id: i64| lessor.time_to_live(id).map(|t| t.keys).unwrap_or_default();
        match op {
            Op::Put(req) => auth.check_put(caller, req, &lease_keys),
            Op::DeleteRange(req) => auth.check_delete(caller, req),
            Op::Txn(req) => auth.check_txn(caller, req, &lease_keys),
            Op::LeaseRevoke(req) => auth.check_lease_revoke(caller, &lease_keys(req.id)),
            // etcd 3.4 checks none of these.
            Op::Compaction(_)
            | Op::LeaseGrant(_)
            | Op::Alarm(_)
            | Op::LeaseCheckpoint(_)
            | Op::MemberAttributes(_)
            | Op::Auth(_) => Ok(()),
        }
    }

    /// Runs `f` in one MVCC write transaction; on success ends it at `index` (one revision, consistent
    /// index in the same batch), carries out its lease effects and feeds the watch hub. On error the
    /// transaction is dropped, which discards everything it staged.
    fn write<R>(
        &mut self,
        index: u64,
        f: impl FnOnce(&mut WriteTxn<'_>, &dyn LeaseCheck, &mut Vec<LeaseEffect>) -> Result<R>,
    ) -> Result<(R, i64)> {
        let store = self.shared.store.clone();
        let mut effects = Vec::new();
        let mut txn = store.write();
        let lessor = self.shared.lessor.clone();
        let out = f(&mut txn, &*lessor, &mut effects)?;
        let events = txn.end(index);
        // Attachments change only now that the transaction has taken effect.
        for effect in effects {
            match effect {
                LeaseEffect::Attach(id, key) => lessor.attach(id, &key)?,
                LeaseEffect::Detach(id, key) => lessor.detach(id, &key),
            }
        }
        let revision = store.current_revision();
        if !events.is_empty() {
            self.shared.hub.notify(revision, &events);
        }
        Ok((out, revision))
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_ahead_sees_a_coming_backend_commit_or_snapshot() {
        // The last snapshot was at 1,000 and one is due every 100 entries: the next at 1,100.
        let policy = SnapshotPolicy::new(100, 1_000);
        assert!(!heavy_ahead(0, &policy, 1_050, 8, 24));
        assert!(
            heavy_ahead(0, &policy, 1_095, 8, 24),
            "the snapshot at 1,100 falls inside the turn"
        );
        assert!(heavy_ahead(0, &policy, 1_100, 0, 0), "already due");
        // Counted in writes, not entries: 8 entries of 3 writes each.
        assert!(!heavy_ahead(
            BACKEND_BATCH_LIMIT - 25,
            &policy,
            1_000,
            8,
            24
        ));
        assert!(
            heavy_ahead(BACKEND_BATCH_LIMIT - 24, &policy, 1_000, 8, 24),
            "the batch takes the backend to its commit limit"
        );
    }
}
