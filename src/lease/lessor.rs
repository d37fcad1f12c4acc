//! The [`Lessor`]: the lease table, its persistence, and the expiry queue. See the module essay in
//! [`crate::lease`] for the design.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prost::Message as _;

use super::clock::Clock;
use crate::error::{Error, Result};
use crate::mvcc::backend::{Backend, Table, WriteBatch};

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`, about 285 years).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long a lease reported by [`Lessor::expired`] stays unreported, so the expiry task does not
/// propose the same revoke again while the first is still going through Raft (etcd's
/// `defaultExpiredleaseRetryInterval`). If the revoke was lost (a dropped proposal), the lease is
/// reported again after this interval.
pub const EXPIRED_LEASE_RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// The persisted form of a lease in [`Table::Lease`], under the key [`lease_key`]. Field numbers
/// follow etcd's `leasepb.Lease` (`ID = 1`, `TTL = 2`, `RemainingTTL = 3`, the last checkpoint, 0
/// when none).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecord {
    /// The lease id; repeated in the value so a record read alone is self-describing (and checked
    /// against its key on load).
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL in seconds (after raising to the minimum).
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The remaining TTL the leader last checkpointed, in seconds; 0 when none (or since renewed).
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The backend key of lease `id`: the id as 8 bytes big-endian (etcd's `int64ToBytes`), so positive ids
/// sort numerically.
pub fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// What `LeaseTimeToLive` answers about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The lease id.
    pub id: i64,
    /// The TTL the lease was granted with, in seconds.
    pub granted_ttl: i64,
    /// Seconds until the lease expires on this member's clock, rounded up, never negative.
    pub remaining_ttl: i64,
    /// The attached keys, in byte order.
    pub keys: Vec<Vec<u8>>,
}

/// One lease in memory.
#[derive(Debug)]
struct Lease {
    /// Granted TTL in seconds, at least the lessor's minimum: what a renew extends by.
    ttl: i64,
    /// The remaining TTL of the last checkpoint (0: none): a new leader's expiry counts from it
    /// rather than from the full TTL.
    remaining: i64,
    /// When the lease expires on this member's clock. Leader-local and never persisted.
    expiry: Instant,
    /// When [`Lessor::expired`] may next report this lease: `expiry`, or a retry instant after it has
    /// been reported. Always `>= expiry`; the lease's entry in [`State::queue`] is `(due, id)`.
    due: Instant,
    /// Keys attached to the lease, in byte order: the order revoke hands them back, so every member
    /// deletes them in the same order.
    keys: BTreeSet<Vec<u8>>,
}

/// Everything behind the lessor's one lock.
#[derive(Debug, Default)]
struct State {
    /// Live leases by id.
    leases: HashMap<i64, Lease>,
    /// `(due, id)` for every lease in `leases`, exactly one entry each: the expiry queue, earliest
    /// first. A `BTreeSet` rather than a heap so a renew can move an entry in O(log n).
    queue: BTreeSet<(Instant, i64)>,
    /// Counter mixed into [`Lessor::new_lease_id`] so successive calls hash differently.
    id_counter: u64,
    /// Leases renewed on the leader while they carried a checkpoint: the other members still hold
    /// it, so the leader clears it through Raft ([`Lessor::take_cleared`]).
    cleared: Vec<i64>,
}

impl State {
    /// Moves lease `id`'s queue entry to `due`.
    fn reschedule(&mut self, id: i64, due: Instant) {
        if let Some(lease) = self.leases.get_mut(&id) {
            self.queue.remove(&(lease.due, id));
            lease.due = due;
            self.queue.insert((due, id));
        }
    }
}

/// The lease table of one member. `Send + Sync`; share it through an `Arc`.
///
/// Apply-path methods ([`grant`](Lessor::grant), [`revoke`](Lessor::revoke),
/// [`attach`](Lessor::attach), [`detach`](Lessor::detach)) are called only by the apply step, in log
/// order, and change the same state on every member. Leader-local methods ([`renew`](Lessor::renew),
/// [`expired`](Lessor::expired), [`promote`](Lessor::promote), ...) touch only expiries.
pub struct Lessor {
    /// Time source for expiries; injected so tests are deterministic.
    clock: Arc<dyn Clock>,
    /// etcd's minimum lease TTL in seconds: shorter requests are raised to it. Must be equal on every
    /// member, since grant applies it on the apply path.
    min_ttl: i64,
    /// Per-process random hash keys for [`Lessor::new_lease_id`].
    id_hasher: RandomState,
    /// The leases and the expiry queue. A std mutex: every critical section is short in-memory work
    /// and never awaits or does I/O (the backend is only read in `new`, before the lock exists).
    state: Mutex<State>,
}

impl std::fmt::Debug for Lessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lessor")
            .field("min_ttl", &self.min_ttl)
            .field("leases", &self.len())
            .finish()
    }
}

/// Locks the state, ignoring poison: each critical section keeps `leases` and `queue` in step with
/// plain inserts and removes that cannot panic halfway in a way that matters more than stopping.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `now + ttl` seconds, saturating far in the future instead of overflowing `Instant`.
fn deadline(now: Instant, ttl: i64) -> Instant {
    let mut secs = u64::try_from(ttl).unwrap_or(0);
    loop {
        if let Some(t) = now.checked_add(Duration::from_secs(secs)) {
            return t;
        }
        // Only reachable on a platform whose Instant cannot hold ~285 years ahead.
        secs /= 2;
    }
}

/// Whole seconds from `now` to `expiry`, rounded up; 0 once expired.
fn remaining_secs(now: Instant, expiry: Instant) -> i64 {
    let left = expiry.saturating_duration_since(now);
    let secs = i64::try_from(left.as_secs()).unwrap_or(i64::MAX);
    if left.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

impl Lessor {
    /// Loads every lease persisted in [`Table::Lease`] of `backend`. Each loaded lease expires `ttl`
    /// seconds from now: a restart never expires a lease early and never lets it live forever.
    /// `min_ttl_secs` below 1 is treated as 1. A record whose key and id disagree, or that does not
    /// decode, is [`Error::Corrupt`].
    pub fn new(backend: Arc<Backend>, clock: Arc<dyn Clock>, min_ttl_secs: i64) -> Result<Lessor> {
        let min_ttl = min_ttl_secs.max(1);
        let mut records = Vec::new();
        backend.scan(Table::Lease, b"", None, |key, value| {
            let record = LeaseRecord::decode(value)?;
            if key != lease_key(record.id) {
                return Err(Error::Corrupt(format!(
                    "lease record {} stored under key {key:02x?}",
                    record.id
                )));
            }
            records.push(record);
            Ok(true)
        })?;
        let now = clock.now();
        let mut state = State::default();
        for record in records {
            // Matches etcd's recovery: a TTL below the (possibly since raised) minimum is raised.
            let ttl = record.ttl.max(min_ttl);
            let remaining = record.remaining_ttl.clamp(0, ttl);
            let expiry = deadline(now, if remaining > 0 { remaining } else { ttl });
            state.queue.insert((expiry, record.id));
            state.leases.insert(
                record.id,
                Lease {
                    ttl,
                    remaining,
                    expiry,
                    due: expiry,
                    keys: BTreeSet::new(),
                },
            );
        }
        tracing::info!(leases = state.leases.len(), min_ttl, "lessor loaded");
        Ok(Lessor {
            clock,
            min_ttl,
            id_hasher: RandomState::new(),
            state: Mutex::new(state),
        })
    }

    /// Loads the leases of `backend` again (after a snapshot replaced it): every lease expires its
    /// full TTL from now, as after a restart; attachments are rebuilt by the caller.
    pub fn reload(&self, backend: &Arc<Backend>) -> Result<()> {
        let fresh = Lessor::new(backend.clone(), self.clock.clone(), self.min_ttl)?;
        *lock(&self.state) = fresh
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(())
    }

    /// A fresh lease id for a grant whose client passed 0: positive, random-looking, and not in use
    /// right now. Called before proposing, so a grant racing in with the same id can still make the
    /// apply answer "lease already exists"; with 63 random bits that is left to chance, as in etcd.
    pub fn new_lease_id(&self) -> i64 {
        let mut state = lock(&self.state);
        loop {
            state.id_counter = state.id_counter.wrapping_add(1);
            let mut h = self.id_hasher.build_hasher();
            h.write_u64(state.id_counter);
            // Clear the sign bit: ids are positive.
            let id = (h.finish() >> 1) as i64;
            if id != 0 && !state.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Apply path: creates lease `id` with `ttl` seconds and puts its record into `batch`. Returns the
    /// id and the TTL actually granted (raised to the minimum TTL). Errors, in etcd's order: `id <= 0`
    /// is [`Error::LeaseNotFound`] (etcd's answer for `NoLease`; negative ids are refused too so ids
    /// stay positive), `ttl > MAX_LEASE_TTL` is "too large lease TTL", an id in use is "lease already
    /// exists".
    pub fn grant(&self, id: i64, ttl: i64, batch: &mut WriteBatch) -> Result<(i64, i64)> {
        if id <= 0 {
            return Err(Error::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(self.min_ttl);
        let now = self.clock.now();
        let mut state = lock(&self.state);
        if state.leases.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        // Every member sets an expiry, but only the leader's is ever acted on (and `promote` resets
        // them all when a member becomes leader).
        let expiry = deadline(now, ttl);
        state.queue.insert((expiry, id));
        state.leases.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                expiry,
                due: expiry,
                keys: BTreeSet::new(),
            },
        );
        drop(state);
        batch.put(
            Table::Lease,
            lease_key(id).to_vec(),
            LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            }
            .encode_to_vec(),
        );
        tracing::debug!(lease_id = id, ttl, "lease granted");
        Ok((id, ttl))
    }

    /// Apply path: removes lease `id`, puts the deletion of its record into `batch`, and returns its
    /// attached keys in byte order, for the caller to delete in the same revision (etcd sorts them
    /// so every member's deletes, and so its backend, are identical).
    pub fn revoke(&self, id: i64, batch: &mut WriteBatch) -> Result<Vec<Vec<u8>>> {
        let mut state = lock(&self.state);
        let lease = state.leases.remove(&id).ok_or(Error::LeaseNotFound)?;
        state.queue.remove(&(lease.due, id));
        drop(state);
        batch.delete(Table::Lease, lease_key(id).to_vec());
        tracing::debug!(lease_id = id, keys = lease.keys.len(), "lease revoked");
        Ok(lease.keys.into_iter().collect())
    }

    /// Apply path: records that `key` is now written under lease `id`. [`Error::LeaseNotFound`] if
    /// the lease does not exist (the put must then fail).
    pub fn attach(&self, id: i64, key: &[u8]) -> Result<()> {
        let mut state = lock(&self.state);
        let lease = state.leases.get_mut(&id).ok_or(Error::LeaseNotFound)?;
        lease.keys.insert(key.to_vec());
        Ok(())
    }

    /// Apply path: records that `key` no longer belongs to lease `id` (overwritten without it, or
    /// deleted). A missing lease or key is not an error: the caller detaches whatever lease the old
    /// value named, which may already be gone.
    pub fn detach(&self, id: i64, key: &[u8]) {
        if let Some(lease) = lock(&self.state).leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// True when lease `id` exists.
    pub fn lookup(&self, id: i64) -> bool {
        lock(&self.state).leases.contains_key(&id)
    }

    /// Leader: a keep-alive. Resets the expiry to now + TTL and returns the TTL.
    /// [`Error::LeaseNotFound`] if the lease does not exist, or has already expired: like etcd, an
    /// expired lease is not brought back, because its revoke is already (or about to be) proposed;
    /// etcd waits for that revoke to apply and then answers "not found", we answer at once.
    pub fn renew(&self, id: i64) -> Result<i64> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let lease = state.leases.get_mut(&id).ok_or(Error::LeaseNotFound)?;
        if lease.expiry <= now {
            return Err(Error::LeaseNotFound);
        }
        let ttl = lease.ttl;
        lease.expiry = deadline(now, ttl);
        let expiry = lease.expiry;
        let checkpointed = std::mem::take(&mut lease.remaining) > 0;
        state.reschedule(id, expiry);
        if checkpointed {
            state.cleared.push(id);
        }
        Ok(ttl)
    }

    /// Apply path: records that lease `id` had `remaining` seconds left when the leader
    /// checkpointed it (0 clears the checkpoint), and puts the updated record into `batch`. An
    /// unknown lease is skipped (revoked since).
    pub fn checkpoint(&self, id: i64, remaining: i64, batch: &mut WriteBatch) {
        let mut state = lock(&self.state);
        let Some(lease) = state.leases.get_mut(&id) else {
            return;
        };
        lease.remaining = remaining.clamp(0, lease.ttl);
        let record = LeaseRecord {
            id,
            ttl: lease.ttl,
            remaining_ttl: lease.remaining,
        };
        drop(state);
        batch.put(Table::Lease, lease_key(id).to_vec(), record.encode_to_vec());
    }

    /// Leader: `(id, remaining seconds)` of up to `limit` leases that have run down some of their
    /// TTL, for a checkpoint through Raft (etcd's lease checkpointing).
    pub fn due_checkpoints(&self, limit: usize) -> Vec<(i64, i64)> {
        let now = self.clock.now();
        let state = lock(&self.state);
        let mut v: Vec<(i64, i64)> = state
            .leases
            .iter()
            .filter_map(|(&id, l)| {
                let left = remaining_secs(now, l.expiry);
                (left > 0 && left < l.ttl && left != l.remaining).then_some((id, left))
            })
            .collect();
        v.sort_unstable();
        v.truncate(limit);
        v
    }

    /// Leader: the leases renewed since they were checkpointed (their checkpoint is to be cleared).
    pub fn take_cleared(&self) -> Vec<i64> {
        std::mem::take(&mut lock(&self.state).cleared)
    }

    /// Leader: the granted and remaining TTL of lease `id` and its keys. [`Error::LeaseNotFound`] if
    /// missing.
    pub fn time_to_live(&self, id: i64) -> Result<LeaseTtl> {
        let now = self.clock.now();
        let state = lock(&self.state);
        let lease = state.leases.get(&id).ok_or(Error::LeaseNotFound)?;
        Ok(LeaseTtl {
            id,
            granted_ttl: lease.ttl,
            remaining_ttl: remaining_secs(now, lease.expiry),
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, ascending (etcd's `LeaseLeases`).
    pub fn leases(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.state).leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leader: up to `limit` leases whose expiry has passed, earliest first, for the server to
    /// propose a revoke of each. A lease returned here is not returned again until
    /// [`EXPIRED_LEASE_RETRY_INTERVAL`] has passed (then again, in case the revoke was lost), or
    /// until it is revoked. Never revokes anything itself: only Raft revokes.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let now = self.clock.now();
        let retry = now + EXPIRED_LEASE_RETRY_INTERVAL;
        let mut state = lock(&self.state);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(&(due, id)) = state.queue.first() else {
                break;
            };
            if due > now {
                break;
            }
            // due >= expiry always, so this lease has expired.
            state.reschedule(id, retry);
            out.push(id);
        }
        out
    }

    /// Leader: the earliest instant at which [`Lessor::expired`] may return something (a lease's
    /// expiry, or its retry instant); `None` with no leases. The expiry task sleeps until then or
    /// until woken by a change.
    pub fn next_expiry(&self) -> Option<Instant> {
        lock(&self.state).queue.first().map(|&(due, _)| due)
    }

    /// Called when this member becomes leader: every lease expires its full TTL from now, since the
    /// old leader's expiries were never replicated. Clients therefore get at least their TTL after a
    /// leader change.
    pub fn promote(&self) {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let State { leases, queue, .. } = &mut *state;
        queue.clear();
        for (&id, lease) in leases.iter_mut() {
            // A checkpointed lease goes on from where the old leader last saw it, not from its full
            // TTL (etcd's lease checkpointing).
            let left = if lease.remaining > 0 {
                lease.remaining
            } else {
                lease.ttl
            };
            lease.expiry = deadline(now, left);
            lease.due = lease.expiry;
            queue.insert((lease.due, id));
        }
        tracing::info!(leases = leases.len(), "lessor promoted; expiries reset");
    }

    /// Startup: re-attaches keys after [`Lessor::new`], from the `(lease, key)` of every live key in
    /// the store (attachments are not persisted; the keys' own lease field is the truth). Lease 0
    /// means "no lease" and is skipped. Returns the keys whose lease no longer exists, for the server
    /// to log.
    pub fn rebuild_attachments(
        &self,
        pairs: impl IntoIterator<Item = (i64, Vec<u8>)>,
    ) -> Vec<Vec<u8>> {
        let mut state = lock(&self.state);
        let mut orphans = Vec::new();
        for (id, key) in pairs {
            if id == 0 {
                continue;
            }
            match state.leases.get_mut(&id) {
                Some(lease) => {
                    lease.keys.insert(key);
                }
                None => orphans.push(key),
            }
        }
        orphans
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        lock(&self.state).leases.len()
    }

    /// True when there are no leases.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::ManualClock;

    const MIN_TTL: i64 = 5;

    struct Fixture {
        _dir: tempfile::TempDir,
        backend: Arc<Backend>,
        clock: Arc<ManualClock>,
        lessor: Lessor,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let backend = Arc::new(Backend::open(&dir.path().join("db")).unwrap());
            let clock = Arc::new(ManualClock::new());
            let lessor = Lessor::new(Arc::clone(&backend), clock.clone(), MIN_TTL).unwrap();
            Fixture {
                _dir: dir,
                backend,
                clock,
                lessor,
            }
        }

        /// A new lessor over the same backend, as after a restart.
        fn reopen(&self) -> Lessor {
            Lessor::new(Arc::clone(&self.backend), self.clock.clone(), MIN_TTL).unwrap()
        }

        fn grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
            let mut batch = WriteBatch::new();
            let out = self.lessor.grant(id, ttl, &mut batch);
            self.commit(batch);
            out
        }

        fn revoke(&self, id: i64) -> Result<Vec<Vec<u8>>> {
            let mut batch = WriteBatch::new();
            let out = self.lessor.revoke(id, &mut batch);
            self.commit(batch);
            out
        }

        fn commit(&self, batch: WriteBatch) {
            self.backend.write(batch);
            self.backend.commit().unwrap();
        }

        fn advance(&self, secs: f64) {
            self.clock.advance(Duration::from_secs_f64(secs));
        }
    }

    #[test]
    fn lessor_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Lessor>();
    }

    #[test]
    fn lessor_grant_revoke_attach_detach() {
        let f = Fixture::new();
        assert!(f.lessor.is_empty());
        assert_eq!(f.grant(7, 10).unwrap(), (7, 10));
        assert!(f.lessor.lookup(7));
        assert!(!f.lessor.lookup(8));
        f.lessor.attach(7, b"b").unwrap();
        f.lessor.attach(7, b"a").unwrap();
        f.lessor.attach(7, b"c").unwrap();
        assert!(matches!(
            f.lessor.attach(8, b"x"),
            Err(Error::LeaseNotFound)
        ));
        f.lessor.detach(7, b"c");
        f.lessor.detach(7, b"not attached");
        f.lessor.detach(8, b"no lease");
        assert_eq!(f.lessor.time_to_live(7).unwrap().keys, [b"a", b"b"]);
        assert_eq!(f.revoke(7).unwrap(), [b"a", b"b"]);
        assert!(!f.lessor.lookup(7));
        assert!(matches!(f.revoke(7), Err(Error::LeaseNotFound)));
        assert_eq!(f.lessor.len(), 0);
        assert_eq!(f.lessor.next_expiry(), None);
    }

    #[test]
    fn lessor_grant_errors_match_etcd() {
        let f = Fixture::new();
        assert!(matches!(f.grant(0, 10), Err(Error::LeaseNotFound)));
        assert!(matches!(f.grant(-1, 10), Err(Error::LeaseNotFound)));
        let too_large = f.grant(1, MAX_LEASE_TTL + 1).unwrap_err();
        assert_eq!(too_large.to_string(), "etcdserver: too large lease TTL");
        assert_eq!(f.grant(1, MAX_LEASE_TTL).unwrap(), (1, MAX_LEASE_TTL));
        let exists = f.grant(1, 10).unwrap_err();
        assert_eq!(exists.to_string(), "etcdserver: lease already exists");
        // A failed grant writes nothing.
        let mut batch = WriteBatch::new();
        assert!(f.lessor.grant(1, 10, &mut batch).is_err());
        assert!(batch.is_empty());
        assert_eq!(f.lessor.leases(), [1]);
    }

    #[test]
    fn lessor_raises_ttl_to_minimum() {
        let f = Fixture::new();
        assert_eq!(f.grant(1, 1).unwrap(), (1, MIN_TTL));
        assert_eq!(f.grant(2, -3).unwrap(), (2, MIN_TTL));
        assert_eq!(f.grant(3, MIN_TTL + 1).unwrap(), (3, MIN_TTL + 1));
        assert_eq!(f.lessor.time_to_live(1).unwrap().granted_ttl, MIN_TTL);
    }

    #[test]
    fn lessor_new_lease_id_is_positive_and_unused() {
        let f = Fixture::new();
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            let id = f.lessor.new_lease_id();
            assert!(id > 0);
            assert!(!f.lessor.lookup(id));
            assert!(seen.insert(id), "id {id} repeated");
            // Apply only in memory: a thousand redb commits would only slow the test.
            f.lessor.grant(id, 10, &mut WriteBatch::new()).unwrap();
        }
        assert_eq!(f.lessor.len(), 1000);
    }

    #[test]
    fn lessor_expired_oldest_first_with_grace_period() {
        let f = Fixture::new();
        f.grant(1, 20).unwrap();
        f.grant(2, 10).unwrap();
        f.advance(1.0);
        f.grant(3, 10).unwrap();
        assert_eq!(f.lessor.expired(10), Vec::<i64>::new());
        assert_eq!(
            f.lessor.next_expiry(),
            Some(f.clock.now() + Duration::from_secs(9))
        );

        f.advance(9.0); // lease 2 is due, lease 3 one second later.
        assert_eq!(f.lessor.expired(10), [2]);
        f.advance(1.0);
        assert_eq!(f.lessor.expired(10), [3]);
        // Reported leases stay quiet for the retry interval...
        f.advance(1.5); // t = 12.5
        assert_eq!(f.lessor.expired(10), Vec::<i64>::new());
        // ...and come back after it, in case their revoke was lost. The limit holds.
        f.advance(1.0); // t = 13.5: lease 2 retries at 13, lease 3 at 14.
        assert_eq!(f.lessor.expired(1), [2]);
        assert_eq!(f.lessor.expired(1), Vec::<i64>::new());
        f.advance(1.0);
        assert_eq!(f.lessor.expired(10), [3]);
        // A revoked lease is never reported again.
        f.revoke(2).unwrap();
        f.revoke(3).unwrap();
        f.advance(20.0);
        assert_eq!(f.lessor.expired(10), [1]);
        f.advance(100.0);
        assert_eq!(f.lessor.expired(10), [1]);
    }

    #[test]
    fn lessor_renew_extends_and_expired_cannot_renew() {
        let f = Fixture::new();
        f.grant(1, 10).unwrap();
        f.advance(8.0);
        assert_eq!(f.lessor.renew(1).unwrap(), 10);
        f.advance(8.0);
        assert_eq!(f.lessor.expired(10), Vec::<i64>::new());
        assert_eq!(f.lessor.time_to_live(1).unwrap().remaining_ttl, 2);
        f.advance(2.0);
        assert_eq!(f.lessor.expired(10), [1]);
        // Its revoke is on the way: a keep-alive now is refused, as etcd's is.
        assert!(matches!(f.lessor.renew(1), Err(Error::LeaseNotFound)));
        assert!(matches!(f.lessor.renew(2), Err(Error::LeaseNotFound)));
    }

    #[test]
    fn lessor_time_to_live_counts_down_in_whole_seconds() {
        let f = Fixture::new();
        f.grant(1, 10).unwrap();
        let ttl = |f: &Fixture| f.lessor.time_to_live(1).unwrap();
        assert_eq!(
            ttl(&f),
            LeaseTtl {
                id: 1,
                granted_ttl: 10,
                remaining_ttl: 10,
                keys: vec![]
            }
        );
        f.advance(0.1);
        assert_eq!(ttl(&f).remaining_ttl, 10); // 9.9 s rounds up
        f.advance(0.9);
        assert_eq!(ttl(&f).remaining_ttl, 9);
        f.advance(8.5);
        assert_eq!(ttl(&f).remaining_ttl, 1);
        f.advance(5.0);
        assert_eq!(ttl(&f).remaining_ttl, 0);
        assert_eq!(ttl(&f).granted_ttl, 10);
        assert!(matches!(
            f.lessor.time_to_live(2),
            Err(Error::LeaseNotFound)
        ));
    }

    #[test]
    fn lessor_promote_resets_every_expiry() {
        let f = Fixture::new();
        f.grant(1, 10).unwrap();
        f.grant(2, 30).unwrap();
        f.advance(12.0);
        f.lessor.promote();
        assert_eq!(f.lessor.expired(10), Vec::<i64>::new());
        assert_eq!(f.lessor.time_to_live(1).unwrap().remaining_ttl, 10);
        assert_eq!(f.lessor.time_to_live(2).unwrap().remaining_ttl, 30);
        assert_eq!(
            f.lessor.next_expiry(),
            Some(f.clock.now() + Duration::from_secs(10))
        );
    }

    #[test]
    fn lessor_rebuild_attachments_reports_orphans() {
        let f = Fixture::new();
        f.grant(1, 10).unwrap();
        let orphans = f.lessor.rebuild_attachments(vec![
            (1, b"a".to_vec()),
            (0, b"no lease".to_vec()),
            (9, b"gone".to_vec()),
            (1, b"b".to_vec()),
        ]);
        assert_eq!(orphans, [b"gone".to_vec()]);
        assert_eq!(f.lessor.time_to_live(1).unwrap().keys, [b"a", b"b"]);
    }

    #[test]
    fn lessor_persists_grants_and_revokes() {
        let f = Fixture::new();
        f.grant(1, 10).unwrap();
        f.grant(2, 1).unwrap(); // stored raised to the minimum
        f.grant(300, 60).unwrap();
        f.revoke(300).unwrap();
        // The record format: the big-endian id -> LeaseRecord { id, ttl }.
        let raw = f.backend.get(Table::Lease, &1i64.to_be_bytes()).unwrap();
        assert_eq!(
            raw,
            Some(
                LeaseRecord {
                    id: 1,
                    ttl: 10,
                    remaining_ttl: 0
                }
                .encode_to_vec()
            )
        );
        assert_eq!(raw, Some(vec![0x08, 0x01, 0x10, 0x0a]));

        f.advance(8.0);
        let reopened = f.reopen();
        assert_eq!(reopened.leases(), [1, 2]);
        // Full TTL from the new now: a restart never shortens a lease.
        let ttl = reopened.time_to_live(1).unwrap();
        assert_eq!((ttl.granted_ttl, ttl.remaining_ttl), (10, 10));
        assert_eq!(reopened.time_to_live(2).unwrap().granted_ttl, MIN_TTL);
        assert!(!reopened.lookup(300));
        // ...nor lets one live forever.
        f.advance(10.0);
        assert_eq!(reopened.expired(10), [2, 1]);
    }

    #[test]
    fn lessor_load_rejects_corrupt_records() {
        let f = Fixture::new();
        f.backend.put(
            Table::Lease,
            &lease_key(5),
            &LeaseRecord {
                id: 6,
                ttl: 10,
                remaining_ttl: 0,
            }
            .encode_to_vec(),
        );
        assert!(matches!(
            Lessor::new(Arc::clone(&f.backend), f.clock.clone(), MIN_TTL),
            Err(Error::Corrupt(_))
        ));
        f.backend.put(Table::Lease, &lease_key(5), b"\xff\xff");
        assert!(matches!(
            Lessor::new(Arc::clone(&f.backend), f.clock.clone(), MIN_TTL),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn a_checkpoint_carries_the_remaining_ttl_to_a_new_leader_and_a_restart() {
        let f = Fixture::new();
        f.grant(1, 30).unwrap();
        f.grant(2, 30).unwrap();
        f.advance(10.0);
        // Only leases that ran down some of their TTL are due; each once per change.
        let due = f.lessor.due_checkpoints(10);
        assert_eq!(due, vec![(1, 20), (2, 20)]);
        let mut batch = WriteBatch::new();
        for (id, left) in due {
            f.lessor.checkpoint(id, left, &mut batch);
        }
        f.lessor.checkpoint(99, 5, &mut batch); // revoked since: skipped
        f.commit(batch);
        assert!(
            f.lessor.due_checkpoints(10).is_empty(),
            "nothing changed since"
        );
        // A new leader counts from the checkpoint, not from the full TTL.
        f.lessor.promote();
        assert_eq!(f.lessor.time_to_live(1).unwrap().remaining_ttl, 20);
        // So does a restart, from the persisted record.
        let reopened = f.reopen();
        assert_eq!(reopened.time_to_live(2).unwrap().remaining_ttl, 20);
        // A renew on the leader clears the checkpoint, and reports it for clearing everywhere.
        f.lessor.renew(1).unwrap();
        assert_eq!(f.lessor.take_cleared(), vec![1]);
        assert!(f.lessor.take_cleared().is_empty());
        let mut batch = WriteBatch::new();
        f.lessor.checkpoint(1, 0, &mut batch);
        f.commit(batch);
        f.lessor.promote();
        assert_eq!(f.lessor.time_to_live(1).unwrap().remaining_ttl, 30);
    }
}
