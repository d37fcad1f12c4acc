//! etcd's named locks and leader elections, served over the server handle (etcd's `v3lock` and
//! `v3election` services).
//!
//! Both are queues of keys under a prefix, `name/`: each participant puts one key, named by its
//! lease id in lower-case hex and attached to that lease, and the participant whose key has the
//! lowest create revision is first (holds the lock, leads the election). Everything here is
//! ordinary KV traffic: a transaction that enqueues (put the key if its create revision is 0,
//! else read it), linearizable ranges to find the key just ahead, and watches that wait for that
//! key's deletion. A participant leaves the queue when its key is deleted: Unlock or Resign, a
//! revoked or expired lease, or a plain delete by anyone. So the semantics are etcd's
//! `clientv3/concurrency` package (`Mutex`, `Election`), which etcd's own services run on:
//!
//! - **Waiting** looks at the newest key created before ours, waits for its deletion, and looks
//!   again, until no key ahead remains. Each waiter watches one key, so a release wakes only the
//!   next in line. A watch whose history was compacted looks again instead of failing.
//! - **A waiter whose own key goes** (its lease expired or was revoked) stops at once with an
//!   error: `mutex: session is expired` for a lock (etcd 3.5's text for the check it makes after
//!   the wait), `election: not leader` for a campaign. etcd 3.4 keeps such a call waiting and then
//!   answers a key that no longer exists; a key that cannot be held is never answered here.
//! - **A call abandoned while waiting** (the client cancelled, or the server stopped it) deletes
//!   its key, as etcd's Mutex unlocks and its Election resigns on a cancelled context, so an
//!   abandoned waiter never ends up holding the lock. The deletion is guarded by the key's create
//!   revision, so it cannot remove a newer key of the same lease.
//! - **Lease 0** names no lease: a fresh lease of [`SESSION_TTL_SECS`] is granted and the key
//!   attached to it (etcd's session default). Nothing keeps it alive: such a hold ends with it.
//! - **Observe** answers the current leader, then every value the leader proclaims and every new
//!   leader, as etcd's `Election.Observe`: values a leader proclaimed while no one looked are not
//!   replayed, only the newest.
//!
//! Left out: etcd's server also keeps each session's lease alive for an instant (its session
//! starts a keep-alive before orphaning it), which renews the lease once; nothing here renews it.
//! A Resign or Proclaim naming lease 0 does not grant a lease of its own (etcd's does, and
//! Proclaim then moves the leader key to that lease): Resign only deletes, Proclaim keeps lease 0.

use std::future::Future;

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::proto::v3lockpb::{LockResponse, UnlockResponse};
use crate::server::Server;
use crate::watch::{prefix_end, EventKind, WatchRequest, Watcher};

/// The TTL of the lease granted for a call that names lease 0 (etcd's `defaultSessionTTL`).
pub const SESSION_TTL_SECS: i64 = 60;

/// A participant's key: the prefix and the lease id as Go's `%x` prints an `int64`.
fn participant_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    if lease < 0 {
        key.push(b'-');
    }
    key.extend_from_slice(format!("{:x}", lease.unsigned_abs()).as_bytes());
    key
}

/// `name/`, the prefix every participant's key of `name` is under.
fn queue_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A range over every key under `prefix`, the one with the lowest create revision only
/// (clientv3's `WithFirstCreate`).
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// A range over the keys under `prefix` created at or before `max_create`, the newest one only
/// (clientv3's `WithLastCreate` and `WithMaxCreateRev`).
fn last_created_up_to(prefix: &[u8], max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

/// A compare that holds when `key`'s create revision is `rev` (0: the key does not exist).
fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(req)),
    }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// The range answer at `index` of a transaction's responses.
fn range_result(resp: &TxnResponse, index: usize) -> Result<&RangeResponse> {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => Ok(range),
        _ => Err(Error::Internal(format!(
            "transaction response {index} is not the range it asked for"
        ))),
    }
}

fn header_revision(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

/// How a wait for the keys ahead ended early.
enum Lost {
    /// The participant's own key was deleted.
    OwnKey,
    /// Something else went wrong.
    Failed(Error),
}

impl From<Error> for Lost {
    fn from(e: Error) -> Self {
        Lost::Failed(e)
    }
}

/// A participant's key, deleted (guarded by its create revision) when this is dropped before
/// [`Enqueued::keep`]: a call that stops waiting, by cancellation or error, leaves the queue.
struct Enqueued {
    /// Deletes the key.
    server: Server,
    /// The participant's key.
    key: Vec<u8>,
    /// Its create revision.
    rev: i64,
    /// Set once the wait succeeded: the key stays.
    kept: bool,
}

impl Enqueued {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Enqueued {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Drop cannot wait: the deletion runs on its own task, as long as a runtime is there to
        // run it (it is, in every call's task; at process exit the lease removes the key).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (server, key, rev) = (self.server.clone(), std::mem::take(&mut self.key), self.rev);
        runtime.spawn(async move {
            if let Err(e) = server.delete_if_created_at(&key, rev).await {
                tracing::debug!(error = %e, "removing an abandoned waiter's key failed");
            }
        });
    }
}

impl Server {
    /// Grants the lease a call that names lease 0 runs on; any other id is used as it is.
    async fn session_lease(&self, lease: i64) -> Result<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .lease_grant(LeaseGrantRequest {
                ttl: SESSION_TTL_SECS,
                id: 0,
            })
            .await?;
        Ok(granted.id)
    }

    /// Deletes `key` if its create revision is still `rev`; the answer's header either way.
    async fn delete_if_created_at(&self, key: &[u8], rev: i64) -> Result<TxnResponse> {
        self.txn(TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![delete_op(key)],
            failure: Vec::new(),
        })
        .await
    }

    /// Puts `key` with `value` and `lease` unless it exists; `extra` runs in either branch after
    /// that. Answers the transaction and the key's create revision.
    async fn enqueue(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        extra: Option<RangeRequest>,
    ) -> Result<(TxnResponse, i64)> {
        let mut success = vec![put_op(key, value, lease)];
        let mut failure = vec![range_op(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })];
        if let Some(extra) = extra {
            success.push(range_op(extra.clone()));
            failure.push(range_op(extra));
        }
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, 0)],
                success,
                failure,
            })
            .await?;
        let rev = if resp.succeeded {
            header_revision(&resp.header)
        } else {
            match range_result(&resp, 0)?.kvs.first() {
                Some(kv) => kv.create_revision,
                // Deleted between the compare and the read cannot happen inside one transaction.
                None => return Err(Error::Internal("a queued key vanished in its txn".into())),
            }
        };
        Ok((resp, rev))
    }

    /// Waits until no key under `prefix` created before `rev` (the create revision of `own`, the
    /// caller's key, which existed at revision `from`) remains; answers the header of the read
    /// that found none. Fails with [`Lost::OwnKey`] as soon as `own` is deleted.
    async fn wait_turn(
        &self,
        prefix: &[u8],
        own: &[u8],
        rev: i64,
        from: i64,
    ) -> std::result::Result<ResponseHeader, Lost> {
        // One watch on our own key for the whole wait, from just after the revision at which the
        // caller saw it exist.
        let mut own_watch = self.deletions_of(own, from + 1);
        loop {
            let ahead = self.range(&last_created_up_to(prefix, rev - 1)).await?;
            let header = ahead.header.unwrap_or_default();
            let Some(next) = ahead.kvs.into_iter().next() else {
                // The last key ahead may have gone together with ours, before the watch said so
                // (etcd 3.5 makes the same check after its wait).
                if self.still_queued(own, rev).await?.is_none() {
                    return Err(Lost::OwnKey);
                }
                return Ok(header);
            };
            let mut next_watch = self.deletions_of(&next.key, header.revision);
            let closing = self.closing();
            tokio::pin!(closing);
            tokio::select! {
                seen = deleted(&mut own_watch) => match seen {
                    Some(true) => return Err(Lost::OwnKey),
                    Some(false) => {
                        // History compacted: look at the key itself, and watch on from there.
                        let Some(seen) = self.still_queued(own, rev).await? else {
                            return Err(Lost::OwnKey);
                        };
                        own_watch = self.deletions_of(own, seen + 1);
                    }
                    None => return Err(Lost::Failed(Error::Stopped)),
                },
                // Deleted, or history compacted: either way, look again.
                seen = deleted(&mut next_watch) => if seen.is_none() {
                    return Err(Lost::Failed(Error::Stopped));
                },
                () = &mut closing => return Err(Lost::Failed(Error::Stopped)),
            }
        }
    }

    /// The revision at which `own` was read still created at `rev`; `None` once it is gone.
    async fn still_queued(&self, own: &[u8], rev: i64) -> Result<Option<i64>> {
        let now = self
            .range(&RangeRequest {
                key: own.to_vec(),
                ..Default::default()
            })
            .await?;
        let queued = now.kvs.iter().any(|kv| kv.create_revision == rev);
        Ok(queued.then(|| header_revision(&now.header)))
    }

    /// A watch on the deletions of exactly `key` from revision `from`.
    fn deletions_of(&self, key: &[u8], from: i64) -> Watcher {
        self.watch(WatchRequest {
            key: key.to_vec(),
            start_revision: from,
            filter_put: true,
            ..Default::default()
        })
    }

    /// etcd's Lock: joins the queue of lock `name` with `lease`'s key and waits until it is the
    /// oldest. The header is that of the read that found no key ahead (of the enqueueing
    /// transaction when none was ahead from the start).
    pub async fn lock(&self, name: &[u8], lease: i64) -> Result<LockResponse> {
        let lease = self.session_lease(lease).await?;
        let prefix = queue_prefix(name);
        let key = participant_key(&prefix, lease);
        let (resp, rev) = self
            .enqueue(&key, b"", lease, Some(first_created(&prefix)))
            .await?;
        // The same transaction read the oldest key: when it is ours (or, read in the txn's
        // revision, none), the lock is held without waiting.
        let owner = range_result(&resp, 1)?.kvs.first();
        if owner.is_none_or(|kv| kv.create_revision == rev) {
            let mut header = resp.header;
            self.fill(&mut header);
            return Ok(LockResponse { header, key });
        }
        let queued = Enqueued {
            server: self.clone(),
            key: key.clone(),
            rev,
            kept: false,
        };
        match self
            .wait_turn(&prefix, &key, rev, header_revision(&resp.header))
            .await
        {
            Ok(header) => {
                queued.keep();
                Ok(LockResponse {
                    header: Some(header),
                    key,
                })
            }
            Err(Lost::OwnKey) => Err(Error::SessionExpired),
            Err(Lost::Failed(e)) => Err(e),
        }
    }

    /// etcd's Unlock: deletes the key, whoever holds it.
    pub async fn unlock(&self, key: Vec<u8>) -> Result<UnlockResponse> {
        let resp = self
            .delete_range(DeleteRangeRequest {
                key,
                ..Default::default()
            })
            .await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }

    /// etcd's Campaign: joins election `name` with `lease`'s key holding `value` (a key already
    /// there from an earlier campaign keeps its place and takes the new value), then waits until
    /// it is the oldest. The header is the enqueueing transaction's.
    pub async fn campaign(&self, req: CampaignRequest) -> Result<CampaignResponse> {
        let lease = self.session_lease(req.lease).await?;
        let prefix = queue_prefix(&req.name);
        let key = participant_key(&prefix, lease);
        let (resp, rev) = self.enqueue(&key, &req.value, lease, None).await?;
        let queued = Enqueued {
            server: self.clone(),
            key: key.clone(),
            rev,
            kept: false,
        };
        let leader = LeaderKey {
            name: req.name,
            key,
            rev,
            lease,
        };
        if !resp.succeeded {
            let current = range_result(&resp, 0)?.kvs.first();
            if current.is_some_and(|kv| kv.value != req.value) {
                // etcd proclaims the new value, and resigns if that fails (the guard does).
                self.proclaim_as(&leader, &req.value).await?;
            }
        }
        match self
            .wait_turn(&prefix, &leader.key, rev, header_revision(&resp.header))
            .await
        {
            Ok(_) => {
                queued.keep();
                let mut header = resp.header;
                self.fill(&mut header);
                Ok(CampaignResponse {
                    header,
                    leader: Some(leader),
                })
            }
            Err(Lost::OwnKey) => Err(Error::ElectionNotLeader),
            Err(Lost::Failed(e)) => Err(e),
        }
    }

    /// Puts `value` on the leader's key if the key still has the leader's create revision.
    async fn proclaim_as(&self, leader: &LeaderKey, value: &[u8]) -> Result<TxnResponse> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(&leader.key, leader.rev)],
                success: vec![put_op(&leader.key, value, leader.lease)],
                failure: Vec::new(),
            })
            .await?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(resp)
    }

    /// etcd's Proclaim: the leader publishes `value`; `election: not leader` when the key is
    /// gone or was created again since.
    pub async fn proclaim(&self, req: ProclaimRequest) -> Result<ProclaimResponse> {
        let leader = req.leader.ok_or(Error::MissingLeaderKey)?;
        let mut resp = self.proclaim_as(&leader, &req.value).await?;
        self.fill(&mut resp.header);
        Ok(ProclaimResponse {
            header: resp.header,
        })
    }

    /// etcd's Leader: the key under `name/` with the lowest create revision.
    pub async fn election_leader(&self, name: &[u8]) -> Result<LeaderResponse> {
        let resp = self.range(&first_created(&queue_prefix(name))).await?;
        let kv = resp.kvs.into_iter().next().ok_or(Error::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        })
    }

    /// etcd's Resign: deletes the leader's key if it still has the leader's create revision; a
    /// leader that already lost its key resigns without error.
    pub async fn resign(&self, req: ResignRequest) -> Result<ResignResponse> {
        let leader = req.leader.ok_or(Error::MissingLeaderKey)?;
        let mut resp = self.delete_if_created_at(&leader.key, leader.rev).await?;
        self.fill(&mut resp.header);
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// etcd's Observe: calls `send` with the current leader of election `name` (waiting for one
    /// if there is none), then with each value it proclaims, then with the next leader once its
    /// key is deleted, and so on. Returns when `send` answers false (the client went away), with
    /// an error when the server stops or a read fails.
    pub async fn observe<F, Fut>(&self, name: &[u8], mut send: F) -> Result<()>
    where
        F: FnMut(LeaderResponse) -> Fut,
        Fut: Future<Output = bool>,
    {
        let prefix = queue_prefix(name);
        let closing = self.closing();
        tokio::pin!(closing);
        loop {
            let first = self.range(&first_created(&prefix)).await?;
            let (header, kv) = match first.kvs.into_iter().next() {
                Some(kv) => (first.header.unwrap_or_default(), kv),
                None => {
                    // No leader: the first key put under the prefix is the next one.
                    let mut watch = self.watch(WatchRequest {
                        key: prefix.clone(),
                        range_end: prefix_end(&prefix),
                        start_revision: header_revision(&first.header),
                        filter_delete: true,
                        ..Default::default()
                    });
                    let put = tokio::select! {
                        batch = watch.recv() => batch,
                        () = &mut closing => return Err(Error::Stopped),
                    };
                    let Some(batch) = put else {
                        return Err(Error::Stopped);
                    };
                    // A compaction notice carries no event: read again.
                    let Some(event) = batch.events.into_iter().next() else {
                        continue;
                    };
                    (self.header(event.kv.mod_revision), event.kv)
                }
            };
            let from = header.revision + 1;
            let key = kv.key.clone();
            if !send(self.answer(header, kv)).await {
                return Ok(());
            }
            // Every change of the leader's key until it is deleted.
            let mut watch = self.watch(WatchRequest {
                key,
                start_revision: from,
                ..Default::default()
            });
            'leader: loop {
                let batch = tokio::select! {
                    batch = watch.recv() => batch,
                    () = &mut closing => return Err(Error::Stopped),
                };
                let Some(batch) = batch else {
                    return Err(Error::Stopped);
                };
                if batch.events.is_empty() {
                    // Compacted history: read the leader again.
                    break 'leader;
                }
                for event in batch.events {
                    if event.kind == EventKind::Delete {
                        break 'leader;
                    }
                    let header = self.header(event.kv.mod_revision);
                    if !send(self.answer(header, event.kv)).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A Leader answer: `kv` as of `header`.
    fn answer(&self, header: ResponseHeader, kv: KeyValue) -> LeaderResponse {
        LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }
    }
}

/// Waits for `watch`'s next batch: `Some(true)` when it holds a deletion, `Some(false)` for a
/// compaction notice (the watch has ended), `None` when the hub closed.
async fn deleted(watch: &mut Watcher) -> Option<bool> {
    loop {
        let batch = watch.recv().await?;
        if batch.compact_revision != 0 {
            return Some(false);
        }
        if batch.events.iter().any(|e| e.kind == EventKind::Delete) {
            return Some(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_as_go_prints_the_lease() {
        assert_eq!(participant_key(b"l/", 0x694d_7a1b_2c3d), b"l/694d7a1b2c3d");
        assert_eq!(participant_key(b"l/", 10), b"l/a");
        assert_eq!(participant_key(b"/", -26), b"/-1a");
        assert_eq!(
            participant_key(b"x/", i64::MIN),
            b"x/-8000000000000000".to_vec()
        );
    }

    #[test]
    fn the_queue_is_under_name_slash() {
        assert_eq!(queue_prefix(b"lock"), b"lock/");
        assert_eq!(queue_prefix(b""), b"/");
        let r = last_created_up_to(b"a/", 9);
        assert_eq!(r.range_end, b"a0");
        assert_eq!(r.max_create_revision, 9);
        assert_eq!(r.limit, 1);
    }
}
