//! The MVCC store: reads at any retained revision, write transactions, compaction and history.
//!
//! See the module essay in [`crate::mvcc`] for the model. This file holds the moving parts:
//!
//! - [`Store`] owns the [`Backend`] and one `RwLock`ed `State`: the key index with the current
//!   revision, compact revision and consistent index. Readers share the lock for the whole read, index
//!   lookup *and* backend fetch, so compaction (which takes it exclusively) can never delete a record a
//!   read has already chosen.
//! - [`WriteTxn`] holds the store's writer mutex for its whole life, so there is one writer at a time
//!   (the apply step). Its changes are staged privately, readable by [`WriteTxn::range`], and become
//!   visible only in [`WriteTxn::end`], which takes the state lock exclusively, updates the index and
//!   buffers the records plus the consistent index as one [`WriteBatch`]. Readers therefore never see an
//!   index entry whose record is missing, nor half a transaction.
//!
//! History ([`Store::events`]) answers `Compacted` for `from_rev < compact revision`, as etcd's watch
//! does: a start at the compact revision itself is served. As in etcd, compaction drops a tombstone at
//! the compact revision, so a delete event at exactly that revision is not replayed.
//!
//! Left out: sorted ranges and min/max revision filters, range-level `limit` pushdown into the backend
//! fetch beyond what the index already gives, and incremental compaction (one pass, under the lock).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;

use super::backend::{Backend, Table, WriteBatch};
use super::key_index::{KeyIndex, KeyRange};
use super::kv::{Event, EventKind, KeyValue};
use super::revision::{Revision, REVISION_LEN};
use crate::error::{Error, Result};

/// `meta` key of the consistent index (the last applied Raft index), 8 bytes big-endian.
pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// Keys pruned under one hold of the state lock (see [`Store::prune`]).
pub const PRUNE_CHUNK: usize = 1_000;
/// `meta` key of the compact revision, 8 bytes big-endian (etcd's name).
pub const META_COMPACT_REVISION: &[u8] = b"finishedCompactRev";

/// A range read. `Default` reads a single key at the current revision with no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// First key, or the single key when `range_end` is empty.
    pub key: Vec<u8>,
    /// etcd's range end: empty = just `key`; `\0` = every key `>= key`; otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Revision to read at; 0 (or negative) = the current revision.
    pub revision: i64,
    /// Most keys to return; 0 = no limit.
    pub limit: usize,
    /// Return only the count, no key-values.
    pub count_only: bool,
    /// Return key-values without their values.
    pub keys_only: bool,
}

/// The answer to a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// Matching key-values in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// Every matching key, before the limit.
    pub count: usize,
    /// True when the limit cut the result short.
    pub more: bool,
    /// The store's current revision when the read ran (in a write transaction with writes: its
    /// revision).
    pub revision: i64,
}

/// What a watch hub needs from the store: the revision counters and past events.
pub trait History: Send + Sync + 'static {
    /// The store's current revision.
    fn current_revision(&self) -> i64;
    /// The revision the store was last compacted at (0 if never).
    fn compact_revision(&self) -> i64;
    /// Every event on `[key, range_end)` (etcd's range-end forms) with `from_rev <= main <= to_rev`, in
    /// revision order, without `prev_kv`: most watchers never ask for it, and one that does gets it
    /// from its watch stream (as etcd's stream fetches it), so a catch-up read does not pay a backend
    /// read per event for it.
    fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from_rev: i64,
        to_rev: i64,
    ) -> Result<Vec<Event>>;
}

/// Everything readers and the writer share, behind one lock.
#[derive(Debug, Default)]
struct State {
    /// Key -> its generations of revisions.
    index: BTreeMap<Box<[u8]>, KeyIndex>,
    /// The revision of the last write transaction that wrote something; 1 before any write.
    current: i64,
    /// Reads below this revision answer `Compacted`; 0 = never compacted.
    compacted: i64,
    /// The last Raft index applied to this store.
    consistent_index: u64,
}

impl State {
    /// The revision a read asking for `revision` reads at (0 or less: the current one), or the
    /// error etcd answers for a future or compacted one.
    fn read_revision(&self, revision: i64) -> Result<i64> {
        let rev = if revision <= 0 {
            self.current
        } else {
            revision
        };
        if rev > self.current {
            return Err(Error::FutureRevision);
        }
        if rev < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }
}

/// The multi-version key-value store. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// Where the records live.
    backend: Arc<Backend>,
    /// Key index and counters; see the file docs for who holds it how.
    state: RwLock<State>,
    /// One write transaction (or compaction) at a time.
    writer: Mutex<()>,
    /// Held by a running [`Store::prune`], so two prunes never interleave.
    pruning: Mutex<()>,
    /// (lease, key) of every live key with a lease, found by the opening scan; taken once by the server
    /// to rebuild the lessor's attachments without a second pass over the store.
    leased_at_open: Mutex<Vec<(i64, Vec<u8>)>>,
    /// Bounds how many large ranges read their records at once.
    large_reads: LargeReads,
}

/// Records per backend read of a range: bounds the key buffers, not the result.
const READ_CHUNK: usize = 1024;

/// Where [`Store::range_encoded`] puts a range's answer.
pub trait RangeSink {
    /// The result without its records; called once, first.
    fn begin(&mut self, result: &RangeResult) -> Result<()>;
    /// One record as stored (an encoded `mvccpb.KeyValue`), in key order.
    fn record(&mut self, encoded: &[u8]) -> Result<()>;
}

/// The [`RangeSink`] behind [`Store::range`]: the records decoded into the result.
struct Decoded {
    result: RangeResult,
    keys_only: bool,
}

impl RangeSink for Decoded {
    fn begin(&mut self, result: &RangeResult) -> Result<()> {
        self.result = result.clone();
        Ok(())
    }

    fn record(&mut self, encoded: &[u8]) -> Result<()> {
        let mut kv = decode_kv(encoded)?;
        if self.keys_only {
            kv.value.clear();
        }
        self.result.kvs.push(kv);
        Ok(())
    }
}

/// Large ranges reading at once unless [`Store::set_large_read_limit`] says otherwise.
pub const DEFAULT_LARGE_READS: usize = 2;

/// Ranges of more than this many records are large: they read their records only while holding
/// one of the [`LargeReads`] slots.
pub const LARGE_RANGE_RECORDS: usize = 10_000;

/// The slots of large ranges. A range's response is built whole in memory (and encoded again by
/// the API), so each large one costs as much memory as the data it returns; bounding how many are
/// built at once bounds that memory to the slots times the largest response, however many clients
/// list the whole key space at once. Waiting ranges hold no lock.
#[derive(Debug)]
struct LargeReads {
    /// Slots in use, and the limit.
    used: Mutex<(usize, usize)>,
    /// Signalled when a slot frees up.
    freed: std::sync::Condvar,
}

impl LargeReads {
    fn new(limit: usize) -> LargeReads {
        LargeReads {
            used: Mutex::new((0, limit.max(1))),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a free slot; the guard frees it.
    fn acquire(&self) -> LargeRead<'_> {
        let mut used = lock(&self.used);
        while used.0 >= used.1 {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        used.0 += 1;
        LargeRead(self)
    }
}

/// One held [`LargeReads`] slot.
struct LargeRead<'a>(&'a LargeReads);

impl Drop for LargeRead<'_> {
    fn drop(&mut self) {
        lock(&self.0.used).0 -= 1;
        self.0.freed.notify_one();
    }
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Poison is ignored: state changes happen in `WriteTxn::end` and `compact`, which do not panic
    // between their index and counter updates except on a bug that already broke the store.
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stored record, decoded.
fn decode_kv(bytes: &[u8]) -> Result<KeyValue> {
    Ok(KeyValue::decode(bytes)?)
}

fn read_meta_u64(backend: &Backend, key: &[u8]) -> Result<u64> {
    match backend.get(Table::Meta, key)? {
        None => Ok(0),
        Some(bytes) => {
            let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                Error::Corrupt(format!(
                    "meta {} has {} bytes",
                    String::from_utf8_lossy(key),
                    bytes.len()
                ))
            })?;
            Ok(u64::from_be_bytes(arr))
        }
    }
}

/// (lease, key) of every live key with a lease.
type LeasedKeys = Vec<(i64, Vec<u8>)>;

/// Rebuilds the in-memory state (key index, revisions, consistent index) from `backend`, scanning
/// the `key` table in revision order; also returns (lease, key) of every live key with a lease.
fn load_state(backend: &Backend) -> Result<(State, LeasedKeys)> {
    let consistent_index = read_meta_u64(backend, META_CONSISTENT_INDEX)?;
    let compacted = read_meta_u64(backend, META_COMPACT_REVISION)? as i64;
    let mut index: BTreeMap<Box<[u8]>, KeyIndex> = BTreeMap::new();
    // As in etcd, an empty store is at revision 1, so the first write creates revision 2 (clients
    // treat revision 0 as "none" and 1 as "before any write").
    let mut current = 1;
    // Each live key's lease, from its newest record (the lessor rebuilds its attachments from it).
    let mut leased: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    backend.scan(Table::Key, &[], None, |k, v| {
        let (rev, tombstone) = Revision::from_bytes(k)?;
        let kv = KeyValue::decode(v)?;
        if tombstone || kv.lease == 0 {
            leased.remove(&kv.key);
        } else {
            leased.insert(kv.key.clone(), kv.lease);
        }
        let ki = index.entry(kv.key.into_boxed_slice()).or_default();
        if tombstone {
            ki.tombstone(rev);
        } else {
            ki.put(rev, kv.create_revision, kv.version);
        }
        current = rev.main;
        Ok(true)
    })?;
    // Compaction may have removed the newest records (a key deleted at or below the compact
    // revision), but it never removes anything above the compact revision.
    let current = current.max(compacted);
    tracing::info!(
        rev = current,
        compacted,
        index = consistent_index,
        keys = index.len(),
        "mvcc store opened"
    );
    Ok((
        State {
            index,
            current,
            compacted,
            consistent_index,
        },
        leased.into_iter().map(|(k, l)| (l, k)).collect(),
    ))
}

/// Where a key-value of a range result comes from.
enum Hit<'a> {
    /// A record in the backend at this revision.
    Stored(Revision),
    /// A write of the running transaction.
    Own(&'a KeyValue),
}

impl Store {
    /// Opens (or creates) the backend file at `path` and rebuilds the store from it.
    pub fn open(path: &Path) -> Result<Store> {
        Store::with_backend(Arc::new(Backend::open(path)?))
    }

    /// Builds the store on an already open backend (shared with the lessor and auth), rebuilding the key
    /// index by scanning the `key` table in revision order.
    pub fn with_backend(backend: Arc<Backend>) -> Result<Store> {
        let (state, leased) = load_state(&backend)?;
        let compacted = state.compacted;
        let store = Store {
            backend,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            pruning: Mutex::new(()),
            leased_at_open: Mutex::new(leased),
            large_reads: LargeReads::new(DEFAULT_LARGE_READS),
        };
        if compacted > 0 {
            // A prune that a crash cut short (or never started) is finished before serving.
            store.prune(compacted)?;
        }
        Ok(store)
    }

    /// Replaces the whole store with the backend file at `path` (a snapshot from the leader) and
    /// rebuilds the key index from it. Writers and prunes wait; readers see the old state or the
    /// new one.
    pub fn restore(&self, path: &Path) -> Result<()> {
        let _writer = lock(&self.writer);
        let _pruning = lock(&self.pruning);
        self.backend.replace_with(path)?;
        let (state, leased) = load_state(&self.backend)?;
        *write_lock(&self.state) = state;
        *lock(&self.leased_at_open) = leased;
        Ok(())
    }

    /// (lease, key) of every live key that had a lease when the store was opened; empty after the
    /// first call.
    pub fn take_leased_at_open(&self) -> Vec<(i64, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.leased_at_open))
    }

    /// The backend, for sharing with other tables' owners.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The revision of the last transaction that wrote something (1 for a store never written).
    pub fn current_revision(&self) -> i64 {
        read_lock(&self.state).current
    }

    /// The revision of the last compaction (0 if never).
    pub fn compact_revision(&self) -> i64 {
        read_lock(&self.state).compacted
    }

    /// The last Raft index applied to this store.
    pub fn consistent_index(&self) -> u64 {
        read_lock(&self.state).consistent_index
    }

    /// Records that the Raft entry `index` was applied without writing any key (so the next restart does
    /// not replay it). Apply thread only.
    pub fn set_consistent_index(&self, index: u64) {
        let mut state = write_lock(&self.state);
        state.consistent_index = index;
        self.backend
            .put(Table::Meta, META_CONSISTENT_INDEX, &index.to_be_bytes());
    }

    /// Reads a range at a revision.
    ///
    /// Only the walk of the in-memory key index runs under the state lock: it picks the records
    /// (their revisions) and counts the keys. The records are read afterwards, without the lock,
    /// from the backend, so a long range holds up neither the apply step nor, through a waiting
    /// writer, every other reader. Records never change once written; the one thing that can
    /// remove a record meanwhile is a compaction above `rev`, and a record found missing then
    /// answers `Compacted`, as the range would have had it started after that compaction.
    pub fn range(&self, opts: &RangeOptions) -> Result<RangeResult> {
        let mut decoded = Decoded {
            result: RangeResult::default(),
            keys_only: opts.keys_only,
        };
        self.range_encoded(opts, &mut decoded)?;
        Ok(decoded.result)
    }

    /// How many ranges of more than [`LARGE_RANGE_RECORDS`] records may read their records at
    /// once (at least one); the others wait, holding no lock.
    pub fn set_large_read_limit(&self, limit: usize) {
        lock(&self.large_reads.used).1 = limit.max(1);
        self.large_reads.freed.notify_all();
    }

    /// The locked half of [`Store::range`]: the result without its records, the revision read at,
    /// and the revisions of the records to read.
    fn plan_range(&self, opts: &RangeOptions) -> Result<(RangeResult, i64, Vec<Revision>)> {
        let state = read_lock(&self.state);
        let rev = state.read_revision(opts.revision)?;
        let mut result = RangeResult {
            revision: state.current,
            ..RangeResult::default()
        };
        let Some(bounds) = KeyRange::new(&opts.key, &opts.range_end).bounds() else {
            return Ok((result, rev, Vec::new()));
        };
        let mut visible = state
            .index
            .range::<[u8], _>(bounds)
            .filter_map(|(_, ki)| ki.get(rev).map(|s| s.modified));
        let take = if opts.count_only {
            0
        } else if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let records: Vec<Revision> = visible.by_ref().take(take).collect();
        let rest = visible.count();
        result.count = records.len() + rest;
        result.more = !opts.count_only && rest > 0;
        Ok((result, rev, records))
    }

    /// [`Store::range`] for a caller that encodes the answer itself: `sink` gets the result without
    /// its records (count, more, revision), then each record as it is stored (an encoded
    /// `mvccpb.KeyValue`), in key order, straight from the backend: nothing is decoded or copied on
    /// the way. `opts.keys_only` is not applied (a sink that wants it decodes).
    pub fn range_encoded(&self, opts: &RangeOptions, sink: &mut impl RangeSink) -> Result<()> {
        let (result, rev, records) = self.plan_range(opts)?;
        sink.begin(&result)?;
        if opts.count_only || records.is_empty() {
            return Ok(());
        }
        let _slot = (records.len() > LARGE_RANGE_RECORDS).then(|| self.large_reads.acquire());
        self.read_records(&records, rev, sink)
    }

    /// Hands `sink` the records at `revisions` (visible at `rev`), read from the backend in chunks.
    fn read_records(
        &self,
        revisions: &[Revision],
        rev: i64,
        sink: &mut impl RangeSink,
    ) -> Result<()> {
        for chunk in revisions.chunks(READ_CHUNK) {
            let rev_keys: Vec<[u8; REVISION_LEN]> = chunk.iter().map(Revision::live_key).collect();
            let keys: Vec<&[u8]> = rev_keys.iter().map(|k| k.as_slice()).collect();
            let found = self
                .backend
                .get_many(Table::Key, &keys, |bytes| sink.record(bytes))?;
            if let Some(i) = found.iter().position(Option::is_none) {
                return Err(self.missing_record(chunk[i], rev));
            }
        }
        Ok(())
    }

    /// The error for a record the key index names but the backend lacks.
    fn missing_record(&self, r: Revision, rev: i64) -> Error {
        if read_lock(&self.state).compacted > rev {
            return Error::Compacted;
        }
        Error::Corrupt(format!(
            "the record at revision {r:?} is indexed but missing"
        ))
    }

    /// Writes buffered backend changes to disk (batching timer, snapshot, shutdown).
    pub fn commit_backend(&self) -> Result<()> {
        self.backend.commit()
    }

    /// Backend writes waiting for a commit.
    pub fn backend_pending(&self) -> usize {
        self.backend.pending_len()
    }

    /// Starts the write transaction. Blocks while another is open. Dropping it without
    /// [`WriteTxn::end`] discards its writes.
    pub fn write(&self) -> WriteTxn<'_> {
        let guard = lock(&self.writer);
        let main = self.current_revision() + 1;
        WriteTxn {
            store: self,
            _writer: guard,
            main,
            changes: Vec::new(),
            overlay: OnceCell::new(),
            extra: WriteBatch::new(),
        }
    }

    /// Compacts at `rev`: afterwards reads below `rev` answer `Compacted`, and every record that is not
    /// the latest visible version of its key at `rev` is deleted (a key deleted at or below `rev` loses
    /// its whole history). Records `consistent_index` in the same batch. Both steps, at once:
    /// [`Store::mark_compacted`] then [`Store::prune`].
    pub fn compact(&self, rev: i64, consistent_index: u64) -> Result<()> {
        self.mark_compacted(rev, consistent_index)?;
        self.prune(rev)
    }

    /// The logical half of a compaction, quick and under the locks: checks `rev`, records it (and the
    /// consistent index) so reads below it answer `Compacted` from now on. Nothing is deleted yet.
    pub fn mark_compacted(&self, rev: i64, consistent_index: u64) -> Result<()> {
        let _writer = lock(&self.writer);
        let mut state = write_lock(&self.state);
        if rev > state.current {
            return Err(Error::FutureRevision);
        }
        if rev <= state.compacted {
            return Err(Error::Compacted);
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Meta,
            META_COMPACT_REVISION.to_vec(),
            (rev as u64).to_be_bytes().to_vec(),
        );
        batch.put(
            Table::Meta,
            META_CONSISTENT_INDEX.to_vec(),
            consistent_index.to_be_bytes().to_vec(),
        );
        self.backend.write(batch);
        state.compacted = rev;
        state.consistent_index = consistent_index;
        Ok(())
    }

    /// The physical half of a compaction at `rev`: drops the revisions nobody can read any more from the
    /// key index and the backend, [`PRUNE_CHUNK`] keys at a time, releasing the locks between chunks so
    /// reads and writes go on meanwhile (etcd compacts in batches for the same reason). It does not
    /// change what any read at or above `rev` sees, so it may run on any thread, after
    /// [`Store::mark_compacted`]; one prune runs at a time. A prune cut short by a crash is finished by
    /// the next [`Store::open`].
    pub fn prune(&self, rev: i64) -> Result<()> {
        let _one_at_a_time = lock(&self.pruning);
        let mut after: Option<Box<[u8]>> = None;
        let mut total = 0usize;
        loop {
            let mut removed = Vec::new();
            let mut state = write_lock(&self.state);
            let keys: Vec<Box<[u8]>> = match &after {
                None => state.index.keys().take(PRUNE_CHUNK).cloned().collect(),
                Some(k) => state
                    .index
                    .range::<[u8], _>((Bound::Excluded(&**k), Bound::Unbounded))
                    .take(PRUNE_CHUNK)
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for k in &keys {
                let emptied = state
                    .index
                    .get_mut(k)
                    .is_some_and(|ki| ki.compact(rev, &mut removed));
                if emptied {
                    state.index.remove(k);
                }
            }
            let mut batch = WriteBatch::new();
            for (r, tombstone) in &removed {
                batch.delete(Table::Key, r.to_bytes(*tombstone));
            }
            // Under the state lock, like every index change with its records.
            self.backend.write(batch);
            drop(state);
            total += removed.len();
            after = Some(last);
            std::thread::yield_now();
        }
        tracing::info!(rev, removed = total, "mvcc compacted");
        Ok(())
    }

    /// Every event on the range with `from_rev <= main <= to_rev` (clamped to the current revision), in
    /// revision order, read from the backend's revision-ordered records. `from_rev` at or below the
    /// compact revision answers `Compacted`. Each event carries its `prev_kv` when that record is
    /// still stored.
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from_rev: i64,
        to_rev: i64,
    ) -> Result<Vec<Event>> {
        self.read_events(key, range_end, from_rev, to_rev, true)
    }

    /// [`Store::events`], reading each event's `prev_kv` only when `with_prev_kv`: that is one more
    /// backend read per event.
    fn read_events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from_rev: i64,
        to_rev: i64,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>> {
        let state = read_lock(&self.state);
        if state.compacted > 0 && from_rev < state.compacted {
            return Err(Error::Compacted);
        }
        // The first write is revision 2 (an empty store is at 1), so nothing is stored below 2.
        let from = from_rev.max(2);
        let to = to_rev.min(state.current);
        let range = KeyRange::new(key, range_end);
        if from > to || range == KeyRange::Empty {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        let mut prev_revs = Vec::new();
        let start = Revision::new(from, 0).to_bytes(false);
        let end = Revision::new(to.saturating_add(1), 0).to_bytes(false);
        self.backend.scan(Table::Key, &start, Some(&end), |k, v| {
            let (rev, tombstone) = Revision::from_bytes(k)?;
            let kv = KeyValue::decode(v)?;
            if !range.contains(&kv.key) {
                return Ok(true);
            }
            if with_prev_kv {
                prev_revs.push(
                    state
                        .index
                        .get(kv.key.as_slice())
                        .and_then(|ki| ki.prev_of(rev)),
                );
            }
            let kind = if tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv,
                prev_kv: None,
            });
            Ok(true)
        })?;
        if !with_prev_kv {
            return Ok(events);
        }
        let wanted: Vec<(usize, Vec<u8>)> = prev_revs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| (i, r.to_bytes(false))))
            .collect();
        let keys: Vec<&[u8]> = wanted.iter().map(|(_, k)| k.as_slice()).collect();
        let values = self.backend.get_many(Table::Key, &keys, decode_kv)?;
        for ((i, _), value) in wanted.iter().zip(values) {
            if value.is_some() {
                events[*i].prev_kv = value;
            }
        }
        Ok(events)
    }

    /// The range read shared by the store and write transactions. `overlay` holds a transaction's own
    /// writes (`None` = deleted), laid over the state at its current revision.
    fn range_locked(
        &self,
        state: &State,
        opts: &RangeOptions,
        overlay: Option<&BTreeMap<Vec<u8>, Option<KeyValue>>>,
    ) -> Result<RangeResult> {
        let rev = state.read_revision(opts.revision)?;
        let mut result = RangeResult {
            revision: state.current,
            ..RangeResult::default()
        };
        let Some(bounds) = KeyRange::new(&opts.key, &opts.range_end).bounds() else {
            return Ok(result);
        };
        let stored = state
            .index
            .range::<[u8], _>(bounds)
            .filter_map(|(k, ki)| ki.get(rev).map(|s| (&**k, Hit::Stored(s.modified))));
        let hits: Vec<(&[u8], Hit<'_>)> = match overlay {
            None => stored.collect(),
            Some(own) => {
                let mut merged: BTreeMap<&[u8], Hit<'_>> = stored.collect();
                for (k, v) in own.range::<[u8], _>(bounds) {
                    match v {
                        Some(kv) => merged.insert(k.as_slice(), Hit::Own(kv)),
                        None => merged.remove(k.as_slice()),
                    };
                }
                merged.into_iter().collect()
            }
        };
        result.count = hits.len();
        let take = if opts.limit == 0 {
            hits.len()
        } else {
            opts.limit.min(hits.len())
        };
        result.more = take < hits.len();
        if opts.count_only {
            return Ok(result);
        }
        let hits = &hits[..take];
        let rev_keys: Vec<Vec<u8>> = hits
            .iter()
            .filter_map(|(_, h)| match h {
                Hit::Stored(r) => Some(r.to_bytes(false)),
                Hit::Own(_) => None,
            })
            .collect();
        let keys: Vec<&[u8]> = rev_keys.iter().map(Vec::as_slice).collect();
        let mut values = self
            .backend
            .get_many(Table::Key, &keys, decode_kv)?
            .into_iter();
        result.kvs.reserve(take);
        for (key, hit) in hits {
            let mut kv = match hit {
                Hit::Own(kv) => (*kv).clone(),
                Hit::Stored(r) => match values.next().flatten() {
                    Some(kv) => kv,
                    None => {
                        return Err(Error::Corrupt(format!(
                            "key {:?} indexed at revision {r:?} has no record",
                            String::from_utf8_lossy(key)
                        )))
                    }
                },
            };
            if opts.keys_only {
                kv.value.clear();
            }
            result.kvs.push(kv);
        }
        Ok(result)
    }
}

/// The answer to [`Store::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC32-C over the records, in revision order.
    pub hash: u32,
    /// The revision hashed up to.
    pub revision: i64,
    /// The compact revision, -1 if the store was never compacted (etcd's convention).
    pub compact_revision: i64,
    /// The store's current revision when the hash was taken.
    pub current: i64,
}

/// Hashing for corruption checks and the whole-backend writes that are not key-value transactions.
impl Store {
    /// etcd's HashKV: a CRC32-C over every stored record (encoded revision and value) with a main
    /// revision `<= rev` (0 = current), walked in revision order. Compaction keeps exactly the records
    /// still visible at its revision, so two members with the same history and the same compactions
    /// agree. Holds the state lock shared, so no compaction runs under it; later writes do not change
    /// the hash of an earlier revision.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        let state = read_lock(&self.state);
        let rev = if rev <= 0 { state.current } else { rev };
        if rev > state.current {
            return Err(Error::FutureRevision);
        }
        if state.compacted > 0 && rev < state.compacted {
            return Err(Error::Compacted);
        }
        let mut hasher = Crc32c::new();
        // Like etcd, the table's name starts the hash.
        hasher.update(Table::Key.name().as_bytes());
        let end = Revision::new(rev.saturating_add(1), 0).to_bytes(false);
        self.backend.scan(Table::Key, &[], Some(&end), |k, v| {
            hasher.update(k);
            hasher.update(v);
            Ok(true)
        })?;
        Ok(KvHash {
            hash: hasher.finish(),
            revision: rev,
            compact_revision: if state.compacted > 0 {
                state.compacted
            } else {
                -1
            },
            current: state.current,
        })
    }

    /// etcd's Hash: a CRC32-C over every table of the backend (name, then each key and value in key
    /// order), leaving out the consistent index, which is a property of the member's log rather than
    /// of the data (as etcd leaves it out). Returns the hash and the revision it covers.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let state = read_lock(&self.state);
        let mut hasher = Crc32c::new();
        let mut last = None;
        self.backend.scan_all(|table, k, v| {
            if last != Some(table) {
                hasher.update(table.name().as_bytes());
                last = Some(table);
            }
            // Bookkeeping that differs between members holding the same data: where each one's log
            // stands, and the membership record (a joining member starts from the copy it was sent).
            if table == Table::Meta && (k == META_CONSISTENT_INDEX || k == b"members") {
                return;
            }
            hasher.update(k);
            hasher.update(v);
        })?;
        Ok((hasher.finish(), state.current))
    }

    /// Buffers `batch` (bookkeeping in the `meta` table, such as alarms) together with the consistent
    /// index `index`, as one backend batch: a commit never holds one without the other. Apply thread
    /// only.
    pub fn write_meta(&self, index: u64, mut batch: WriteBatch) {
        let _writer = lock(&self.writer);
        let mut state = write_lock(&self.state);
        batch.put(
            Table::Meta,
            META_CONSISTENT_INDEX.to_vec(),
            index.to_be_bytes().to_vec(),
        );
        self.backend.write(batch);
        state.consistent_index = index;
    }
}

/// CRC32-Castagnoli, fed piece by piece.
#[derive(Debug, Default)]
struct Crc32c {
    /// The CRC so far.
    crc: u32,
}

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c::default()
    }

    fn update(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
    }

    fn finish(&self) -> u32 {
        self.crc
    }
}

impl History for Store {
    fn current_revision(&self) -> i64 {
        Store::current_revision(self)
    }

    fn compact_revision(&self) -> i64 {
        Store::compact_revision(self)
    }

    fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from_rev: i64,
        to_rev: i64,
    ) -> Result<Vec<Event>> {
        self.read_events(key, range_end, from_rev, to_rev, false)
    }
}

/// The single write transaction: every change in it shares one main revision.
pub struct WriteTxn<'a> {
    /// The store written to.
    store: &'a Store,
    /// Keeps other writers (and compaction) out until the transaction ends or is dropped.
    _writer: MutexGuard<'a, ()>,
    /// The main revision the changes take: the current revision + 1.
    main: i64,
    /// The changes so far, in order; a change's `sub` is its position here.
    changes: Vec<Event>,
    /// Each written key's state after this transaction so far (`None` = deleted), for own reads.
    /// Built from `changes` by the first read that needs it ([`WriteTxn::own_writes`]) and kept up
    /// to date after that; a plain put never reads after writing, so it never pays for one.
    overlay: OnceCell<BTreeMap<Vec<u8>, Option<KeyValue>>>,
    /// Writes to other tables (leases, alarms) that must land in the same backend batch as this
    /// transaction's records and consistent index.
    extra: WriteBatch,
}

impl std::fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("main", &self.main)
            .field("changes", &self.changes.len())
            .finish()
    }
}

impl WriteTxn<'_> {
    /// The revision this transaction's changes will carry (if it makes any).
    pub fn revision(&self) -> i64 {
        self.main
    }

    /// Whether this transaction has changed anything yet.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    fn next_revision(&self) -> Revision {
        Revision::new(self.main, self.changes.len() as i64)
    }

    /// This transaction's own writes by key, for a read that must see them; `None` before the first.
    fn own_writes(&self) -> Option<&BTreeMap<Vec<u8>, Option<KeyValue>>> {
        if self.changes.is_empty() {
            return None;
        }
        Some(
            self.overlay
                .get_or_init(|| self.changes.iter().map(Self::own_state).collect()),
        )
    }

    /// What a change leaves its key as, for the overlay: the record, or `None` once deleted.
    fn own_state(ev: &Event) -> (Vec<u8>, Option<KeyValue>) {
        let state = (ev.kind == EventKind::Put).then(|| ev.kv.clone());
        (ev.kv.key.clone(), state)
    }

    /// Records a change, in the overlay too once a read has built it.
    fn record(&mut self, ev: Event) {
        if let Some(overlay) = self.overlay.get_mut() {
            let (key, state) = Self::own_state(&ev);
            overlay.insert(key, state);
        }
        self.changes.push(ev);
    }

    /// The key's state as this transaction sees it.
    fn current_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(own) = self.own_writes().and_then(|o| o.get(key)) {
            return Ok(own.clone());
        }
        let opts = RangeOptions {
            key: key.to_vec(),
            ..RangeOptions::default()
        };
        Ok(self.store.range(&opts)?.kvs.into_iter().next())
    }

    /// The key's creating revision and version as this transaction sees it, from the index (or this
    /// transaction's own writes) alone: no backend read.
    fn current_state(&self, key: &[u8]) -> Option<(i64, i64)> {
        if let Some(own) = self.own_writes().and_then(|o| o.get(key)) {
            return own.as_ref().map(|kv| (kv.create_revision, kv.version));
        }
        let state = read_lock(&self.store.state);
        let ki = state.index.get(key)?;
        ki.get(state.current).map(|s| (s.created, s.version))
    }

    /// Puts `value` under `key` (attached to `lease`, 0 for none). With `read_prev` it reads and
    /// returns the record it replaces (and its event carries it as `prev_kv`); without, it takes the
    /// creating revision and version from the index and returns `None`, sparing a backend read on
    /// the common path. The watch stream fetches a `prev_kv` lazily for watchers that asked for one,
    /// as etcd does.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        read_prev: bool,
    ) -> Result<Option<KeyValue>> {
        let rev = self.next_revision();
        let (prev, existing) = if read_prev {
            let prev = self.current_kv(key)?;
            let existing = prev.as_ref().map(|p| (p.create_revision, p.version));
            (prev, existing)
        } else {
            (None, self.current_state(key))
        };
        let (create_revision, version) = match existing {
            Some((created, version)) => (created, version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value: value.to_vec(),
            lease,
        };
        self.record(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    /// Deletes every existing key in the range (etcd's range-end forms); returns what was deleted, in
    /// key order. Deleting nothing takes no revision.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let existing = self
            .range(&RangeOptions {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                ..RangeOptions::default()
            })?
            .kvs;
        for prev in &existing {
            let rev = self.next_revision();
            self.record(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(existing)
    }

    /// The batch for writes to other tables that must commit atomically with this transaction (and its
    /// consistent index): a lease grant, an alarm.
    pub fn backend_batch(&mut self) -> &mut WriteBatch {
        &mut self.extra
    }

    /// Reads like [`Store::range`]. With `revision` 0 (or [`WriteTxn::revision`] once the transaction
    /// has written) it sees this transaction's own writes; an explicit earlier revision does not.
    pub fn range(&self, opts: &RangeOptions) -> Result<RangeResult> {
        let state = read_lock(&self.store.state);
        // As in etcd: revision 0, or this transaction's own revision once it has written, reads the
        // transaction's writes; an explicit older revision (even the current one) reads the store as
        // it was before the transaction.
        let own = opts.revision <= 0 || (opts.revision == self.main && !self.changes.is_empty());
        let mut result = if own {
            let at_current = RangeOptions {
                revision: 0,
                ..opts.clone()
            };
            self.store
                .range_locked(&state, &at_current, self.own_writes())?
        } else {
            self.store.range_locked(&state, opts, None)?
        };
        if !self.changes.is_empty() {
            result.revision = self.main;
        }
        Ok(result)
    }

    /// Publishes the transaction: the key index learns its revisions, and its records plus
    /// `consistent_index` go to the backend in one batch. Returns its events, in order, for watchers.
    pub fn end(self, consistent_index: u64) -> Vec<Event> {
        let mut batch = WriteBatch::new();
        let mut state = write_lock(&self.store.state);
        for (sub, ev) in self.changes.iter().enumerate() {
            let rev = Revision::new(self.main, sub as i64);
            let ki = state.index.entry(ev.kv.key.as_slice().into()).or_default();
            match ev.kind {
                EventKind::Put => ki.put(rev, ev.kv.create_revision, ev.kv.version),
                EventKind::Delete => ki.tombstone(rev),
            }
            batch.put(
                Table::Key,
                rev.to_bytes(ev.kind == EventKind::Delete),
                ev.kv.encode_to_vec(),
            );
        }
        if !self.changes.is_empty() {
            state.current = self.main;
        }
        state.consistent_index = consistent_index;
        batch.put(
            Table::Meta,
            META_CONSISTENT_INDEX.to_vec(),
            consistent_index.to_be_bytes().to_vec(),
        );
        batch.extend(self.extra);
        // Still under the state lock: no reader sees the index entries before their records.
        self.store.backend.write(batch);
        drop(state);
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_reads_wait_for_a_free_slot() {
        let reads = Arc::new(LargeReads::new(1));
        let held = reads.acquire();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let reads = Arc::clone(&reads);
            std::thread::spawn(move || {
                let _slot = reads.acquire();
                tx.send(()).unwrap();
            })
        };
        // The only slot is held here, so the other read cannot have started.
        assert!(rx.try_recv().is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiting read gets the freed slot");
        waiter.join().unwrap();
        assert_eq!(lock(&reads.used).0, 0);
    }

    #[test]
    fn a_compaction_between_picking_and_reading_records_answers_compacted() {
        let (_dir, store) = open();
        for v in ["1", "2", "3"] {
            put(&store, "k", v);
        }
        let opts = RangeOptions {
            key: b"k".to_vec(),
            revision: 2,
            ..RangeOptions::default()
        };
        let (_, rev, records) = store.plan_range(&opts).expect("plan");
        assert_eq!(records.len(), 1);
        // Present before the compaction, gone after it: the range answers Compacted, not Corrupt.
        let read = |store: &Store| {
            let mut decoded = Decoded {
                result: RangeResult::default(),
                keys_only: false,
            };
            store
                .read_records(&records, rev, &mut decoded)
                .map(|()| decoded.result.kvs)
        };
        assert_eq!(read(&store).expect("read")[0].value, b"1");
        store.compact(4, 0).expect("compact");
        assert!(matches!(read(&store), Err(Error::Compacted)));
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        (dir, store)
    }

    fn put(store: &Store, key: &str, value: &str) -> i64 {
        let mut txn = store.write();
        txn.put(key.as_bytes(), value.as_bytes(), 0, true).unwrap();
        let rev = txn.revision();
        txn.end(rev as u64);
        rev
    }

    fn delete(store: &Store, key: &str, range_end: &str) -> Vec<KeyValue> {
        let mut txn = store.write();
        let gone = txn
            .delete_range(key.as_bytes(), range_end.as_bytes())
            .unwrap();
        txn.end(0);
        gone
    }

    fn opts(key: &str, range_end: &str, revision: i64) -> RangeOptions {
        RangeOptions {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            revision,
            ..RangeOptions::default()
        }
    }

    fn get(store: &Store, key: &str, revision: i64) -> Option<KeyValue> {
        store
            .range(&opts(key, "", revision))
            .unwrap()
            .kvs
            .into_iter()
            .next()
    }

    fn keys(r: &RangeResult) -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    }

    #[test]
    fn store_and_backend_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
        check::<Backend>();
    }

    #[test]
    fn put_sets_versions_and_revisions() {
        let (_dir, store) = open();
        // An empty store is at revision 1 (as etcd): readable there, and the first write takes 2.
        assert_eq!(store.current_revision(), 1);
        let r = store.range(&opts("", "\0", 1)).unwrap();
        assert_eq!((r.kvs.len(), r.revision), (0, 1));
        assert!(matches!(
            store.range(&opts("", "\0", 2)),
            Err(Error::FutureRevision)
        ));
        assert_eq!(put(&store, "a", "1"), 2);
        assert_eq!(put(&store, "b", "x"), 3);
        assert_eq!(put(&store, "a", "2"), 4);
        let a = get(&store, "a", 0).unwrap();
        assert_eq!(
            (
                a.create_revision,
                a.mod_revision,
                a.version,
                a.value.as_slice()
            ),
            (2, 4, 2, b"2".as_slice())
        );
        let mut txn = store.write();
        let prev = txn.put(b"a", b"3", 7, true).unwrap().unwrap();
        assert_eq!(prev.value, b"2");
        txn.end(9);
        let a = get(&store, "a", 0).unwrap();
        assert_eq!((a.version, a.lease, a.mod_revision), (3, 7, 5));
        assert_eq!(store.current_revision(), 5);
        assert_eq!(store.consistent_index(), 9);
        assert_eq!(get(&store, "missing", 0), None);
    }

    #[test]
    fn put_without_reading_prev_takes_versions_from_the_index() {
        // The same history written twice, once reading each replaced record and once not: every
        // record must come out the same, and only the reading puts return the replaced record.
        let keys = ["a", "b"];
        let mut stores = Vec::new();
        for read_prev in [true, false] {
            let (dir, s) = open();
            let mut prevs = Vec::new();
            let mut step = |key: &str, value: &str| {
                let mut txn = s.write();
                prevs.push(
                    txn.put(key.as_bytes(), value.as_bytes(), 0, read_prev)
                        .unwrap(),
                );
                txn.end(0);
            };
            step("a", "1");
            step("a", "2");
            step("b", "1");
            let mut txn = s.write();
            txn.delete_range(b"a", b"").unwrap();
            txn.end(0);
            step("a", "3");
            // Two puts of one key in one transaction: the second sees the first (the overlay).
            let mut txn = s.write();
            prevs.push(txn.put(b"b", b"2", 0, read_prev).unwrap());
            prevs.push(txn.put(b"b", b"3", 0, read_prev).unwrap());
            txn.end(0);
            let got: Vec<_> = prevs
                .iter()
                .map(|p| p.as_ref().map(|kv| kv.value.clone()))
                .collect();
            if read_prev {
                let v = |x: &str| Some(x.as_bytes().to_vec());
                assert_eq!(got, vec![None, v("1"), None, None, v("1"), v("2")]);
            } else {
                assert!(got.iter().all(Option::is_none));
            }
            stores.push((dir, s));
        }
        for key in keys {
            for rev in 0..=7 {
                assert_eq!(
                    get(&stores[0].1, key, rev),
                    get(&stores[1].1, key, rev),
                    "{key} at {rev}"
                );
            }
        }
        let a = get(&stores[1].1, "a", 0).unwrap();
        assert_eq!((a.create_revision, a.version), (6, 1));
        let b = get(&stores[1].1, "b", 0).unwrap();
        assert_eq!((b.create_revision, b.version, b.mod_revision), (4, 3, 7));
    }

    #[test]
    fn history_reads_at_old_revisions() {
        let (_dir, store) = open();
        put(&store, "a", "1"); // 2
        put(&store, "a", "2"); // 3
        put(&store, "b", "1"); // 4
        assert_eq!(get(&store, "a", 2).unwrap().value, b"1");
        assert_eq!(get(&store, "a", 3).unwrap().value, b"2");
        assert_eq!(get(&store, "b", 3), None);
        assert_eq!(get(&store, "b", 4).unwrap().value, b"1");
        let r = store.range(&opts("a", "\0", 2)).unwrap();
        assert_eq!(keys(&r), vec!["a"]);
        assert_eq!(r.revision, 4);
        assert!(matches!(
            store.range(&opts("a", "", 5)),
            Err(Error::FutureRevision)
        ));
    }

    #[test]
    fn delete_and_recreate_starts_new_generation() {
        let (_dir, store) = open();
        put(&store, "k", "1"); // 2
        put(&store, "k", "2"); // 3
        let gone = delete(&store, "k", ""); // 4
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].value, b"2");
        assert_eq!(store.current_revision(), 4);
        assert_eq!(get(&store, "k", 0), None);
        assert_eq!(get(&store, "k", 3).unwrap().version, 2);
        // Deleting a missing key takes no revision.
        assert!(delete(&store, "k", "").is_empty());
        assert!(delete(&store, "nothing", "\0").is_empty());
        assert_eq!(store.current_revision(), 4);
        put(&store, "k", "new"); // 5
        let k = get(&store, "k", 0).unwrap();
        assert_eq!((k.create_revision, k.mod_revision, k.version), (5, 5, 1));
    }

    #[test]
    fn range_end_forms_limit_and_count() {
        let (_dir, store) = open();
        for k in ["a", "b", "ba", "bb", "c", "d"] {
            put(&store, k, k);
        }
        assert_eq!(keys(&store.range(&opts("b", "", 0)).unwrap()), vec!["b"]);
        assert_eq!(
            keys(&store.range(&opts("b", "c", 0)).unwrap()),
            vec!["b", "ba", "bb"]
        );
        assert_eq!(
            keys(&store.range(&opts("ba", "\0", 0)).unwrap()),
            vec!["ba", "bb", "c", "d"]
        );
        assert_eq!(keys(&store.range(&opts("", "\0", 0)).unwrap()).len(), 6);
        assert!(store.range(&opts("c", "b", 0)).unwrap().kvs.is_empty());

        let mut o = opts("a", "\0", 0);
        o.limit = 2;
        let r = store.range(&o).unwrap();
        assert_eq!(
            (keys(&r), r.count, r.more),
            (vec!["a".into(), "b".into()], 6, true)
        );
        o.limit = 6;
        let r = store.range(&o).unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (6, 6, false));

        o.limit = 0;
        o.count_only = true;
        let r = store.range(&o).unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 6));

        o.count_only = false;
        o.keys_only = true;
        let r = store.range(&o).unwrap();
        assert_eq!(r.kvs.len(), 6);
        assert!(r
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1));
    }

    #[test]
    fn txn_shares_one_revision_and_reads_own_writes() {
        let (_dir, store) = open();
        put(&store, "x", "old"); // 2
        let mut txn = store.write();
        assert_eq!(txn.revision(), 3);
        txn.put(b"a", b"1", 0, true).unwrap();
        txn.put(b"b", b"2", 0, true).unwrap();
        let prev = txn.put(b"a", b"1bis", 0, true).unwrap().unwrap();
        assert_eq!((prev.value.as_slice(), prev.version), (b"1".as_slice(), 1));
        let gone = txn.delete_range(b"x", b"").unwrap();
        assert_eq!(gone[0].value, b"old");
        // Own writes are visible inside the txn, not outside it.
        let r = txn.range(&opts("", "\0", 0)).unwrap();
        assert_eq!(keys(&r), vec!["a", "b"]);
        assert_eq!(r.kvs[0].value, b"1bis");
        assert_eq!(r.kvs[0].version, 2);
        assert_eq!(r.revision, 3);
        // An explicit earlier revision inside the txn sees the store as it was; its own revision sees
        // its writes.
        assert_eq!(keys(&txn.range(&opts("", "\0", 2)).unwrap()), vec!["x"]);
        assert_eq!(
            keys(&txn.range(&opts("", "\0", 3)).unwrap()),
            vec!["a", "b"]
        );
        assert!(matches!(
            txn.range(&opts("", "\0", 4)),
            Err(Error::FutureRevision)
        ));
        let events = txn.end(5);
        assert_eq!(store.current_revision(), 3);
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.kv.mod_revision == 3));
        assert_eq!(events[3].kind, EventKind::Delete);
        assert_eq!(events[3].prev_kv.as_ref().unwrap().value, b"old");
        // Subs increase in order, as stored.
        let mut subs = Vec::new();
        store
            .backend()
            .scan(
                Table::Key,
                &Revision::new(3, 0).to_bytes(false),
                None,
                |k, _| {
                    subs.push(Revision::from_bytes(k).unwrap());
                    Ok(true)
                },
            )
            .unwrap();
        let expect: Vec<(Revision, bool)> = (0..4).map(|s| (Revision::new(3, s), s == 3)).collect();
        assert_eq!(subs, expect);
        assert_eq!(
            keys(&store.range(&opts("", "\0", 0)).unwrap()),
            vec!["a", "b"]
        );

        // A txn that writes nothing takes no revision but records the consistent index.
        let txn = store.write();
        assert!(txn.end(6).is_empty());
        assert_eq!((store.current_revision(), store.consistent_index()), (3, 6));
        // A dropped txn leaves no trace.
        let mut txn = store.write();
        txn.put(b"z", b"z", 0, true).unwrap();
        drop(txn);
        assert_eq!(get(&store, "z", 0), None);
        assert_eq!(store.current_revision(), 3);
    }

    #[test]
    fn an_interrupted_prune_is_finished_by_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            for v in ["1", "2", "3"] {
                put(&store, "k", v); // revisions 2, 3, 4
            }
            // The logical half only, as if the process died before the background prune ran.
            store.mark_compacted(4, 9).unwrap();
            assert!(matches!(
                store.range(&opts("k", "", 3)),
                Err(Error::Compacted)
            ));
            store.commit_backend().unwrap();
            assert_eq!(
                store.backend().range(Table::Key, &[], None).unwrap().len(),
                3
            );
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.compact_revision(), 4);
        let left = store.backend().range(Table::Key, &[], None).unwrap();
        assert_eq!(left.len(), 1, "open pruned the two unreadable revisions");
        assert_eq!(get(&store, "k", 0).unwrap().value, b"3".to_vec());
    }

    #[test]
    fn compaction_drops_old_revisions_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", "1"); // 2
            put(&store, "a", "2"); // 3
            put(&store, "gone", "x"); // 4
            delete(&store, "gone", ""); // 5
            put(&store, "a", "3"); // 6
            assert!(matches!(store.compact(7, 1), Err(Error::FutureRevision)));
            store.compact(5, 10).unwrap();
            assert!(matches!(store.compact(5, 11), Err(Error::Compacted)));
            assert!(matches!(store.compact(4, 11), Err(Error::Compacted)));
            assert_eq!(store.compact_revision(), 5);
            assert!(matches!(
                store.range(&opts("a", "", 4)),
                Err(Error::Compacted)
            ));
            // Reading at the compact revision itself still works.
            assert_eq!(get(&store, "a", 5).unwrap().value, b"2");
            assert_eq!(get(&store, "a", 0).unwrap().version, 3);
            assert_eq!(get(&store, "gone", 5), None);
            // Only the record visible at 5 (a@3) and the later one (a@6) remain.
            let left: Vec<Revision> = store
                .backend()
                .range(Table::Key, &[], None)
                .unwrap()
                .iter()
                .map(|(k, _)| Revision::from_bytes(k).unwrap().0)
                .collect();
            assert_eq!(left, vec![Revision::new(3, 0), Revision::new(6, 0)]);
            store.commit_backend().unwrap();
            assert_eq!(store.backend_pending(), 0);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.compact_revision(), 5);
        assert_eq!(store.current_revision(), 6);
        assert_eq!(store.consistent_index(), 10);
        assert!(matches!(
            store.range(&opts("a", "", 4)),
            Err(Error::Compacted)
        ));
        let a = get(&store, "a", 0).unwrap();
        assert_eq!(
            (a.create_revision, a.version, a.value.as_slice()),
            (2, 3, b"3".as_slice())
        );
        assert_eq!(get(&store, "a", 5).unwrap().value, b"2");
        assert_eq!(get(&store, "gone", 0), None);
    }

    #[test]
    fn compaction_of_everything_keeps_current_revision_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", "1");
            delete(&store, "a", "");
            store.compact(3, 3).unwrap();
            assert!(store
                .backend()
                .range(Table::Key, &[], None)
                .unwrap()
                .is_empty());
            store.commit_backend().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!((store.current_revision(), store.compact_revision()), (3, 3));
        assert_eq!(put(&store, "a", "again"), 4);
        assert_eq!(get(&store, "a", 0).unwrap().create_revision, 4);
    }

    #[test]
    fn compacting_an_empty_store_at_revision_1() {
        let (_dir, store) = open();
        assert!(matches!(store.compact(2, 0), Err(Error::FutureRevision)));
        store.compact(1, 0).unwrap();
        assert_eq!(store.compact_revision(), 1);
        assert!(store.range(&opts("", "\0", 1)).unwrap().kvs.is_empty());
        // A start at the compact revision itself is served (etcd); nothing happened at revision 1.
        assert!(store.events(b"", b"\0", 1, 1).unwrap().is_empty());
        assert!(matches!(
            store.events(b"", b"\0", 0, 1),
            Err(Error::Compacted)
        ));
        assert_eq!(put(&store, "a", "1"), 2);
        assert_eq!(store.events(b"", b"\0", 2, 2).unwrap().len(), 1);
    }

    #[test]
    fn reopen_rebuilds_identical_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let before: Vec<RangeResult>;
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", "1");
            put(&store, "b", "1");
            put(&store, "a", "2");
            delete(&store, "b", "");
            put(&store, "b", "3");
            let mut txn = store.write();
            txn.put(b"c", b"c", 5, true).unwrap();
            txn.delete_range(b"a", b"").unwrap();
            txn.end(42);
            store.set_consistent_index(43);
            before = (1..=7)
                .map(|rev| store.range(&opts("", "\0", rev)).unwrap())
                .collect();
            store.commit_backend().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current_revision(), 7);
        assert_eq!(store.compact_revision(), 0);
        assert_eq!(store.consistent_index(), 43);
        let after: Vec<RangeResult> = (1..=7)
            .map(|rev| store.range(&opts("", "\0", rev)).unwrap())
            .collect();
        assert_eq!(before, after);
        // The rebuilt index continues versions correctly.
        assert_eq!(put(&store, "b", "4"), 8);
        let b = get(&store, "b", 0).unwrap();
        assert_eq!((b.create_revision, b.version), (6, 2));
    }

    #[test]
    fn uncommitted_writes_are_lost_on_reopen_with_their_consistent_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", "1"); // revision and consistent index 2
            store.commit_backend().unwrap();
            put(&store, "a", "2"); // revision and consistent index 3, never committed
        }
        let store = Store::open(&path).unwrap();
        // The persisted consistent index covers exactly the persisted data: replay resumes at 3.
        assert_eq!((store.current_revision(), store.consistent_index()), (2, 2));
    }

    #[test]
    fn events_cover_puts_deletes_and_compaction() {
        let (_dir, store) = open();
        put(&store, "a", "1"); // 2
        put(&store, "b", "1"); // 3
        put(&store, "a", "2"); // 4
        delete(&store, "a", ""); // 5
        put(&store, "a", "3"); // 6
        put(&store, "c", "1"); // 7

        let evs = store.events(b"a", b"", 2, 7).unwrap();
        let summary: Vec<(EventKind, i64, Option<Vec<u8>>)> = evs
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.kv.mod_revision,
                    e.prev_kv.as_ref().map(|p| p.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (EventKind::Put, 2, None),
                (EventKind::Put, 4, Some(b"1".to_vec())),
                (EventKind::Delete, 5, Some(b"2".to_vec())),
                (EventKind::Put, 6, None),
            ]
        );
        assert_eq!(evs[2].kv.key, b"a");
        let all = store.events(b"", b"\0", 3, 100).unwrap();
        let revs: Vec<i64> = all.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![3, 4, 5, 6, 7]);
        assert_eq!(store.events(b"b", b"c", 4, 7).unwrap().len(), 0);
        assert_eq!(
            store.events(b"a", b"b", 5, 5).unwrap()[0].kind,
            EventKind::Delete
        );
        assert!(store.events(b"a", b"", 8, 10).unwrap().is_empty());

        store.commit_backend().unwrap();
        store.compact(4, 0).unwrap();
        assert!(matches!(
            store.events(b"a", b"", 3, 7),
            Err(Error::Compacted)
        ));
        assert!(matches!(
            store.events(b"a", b"", 2, 7),
            Err(Error::Compacted)
        ));
        // The compact revision itself is still a valid start.
        assert!(store.events(b"a", b"", 4, 7).is_ok());
        let after = store.events(b"a", b"", 5, 7).unwrap();
        assert_eq!(after.len(), 2);
        // The record a@4 was visible at the compact revision, so the delete still has its prev_kv.
        assert_eq!(after[0].prev_kv.as_ref().unwrap().value, b"2");
        let h: &dyn History = &store;
        assert_eq!((h.current_revision(), h.compact_revision()), (7, 4));
        assert_eq!(h.events(b"", b"\0", 5, 7).unwrap().len(), 3);
    }

    #[test]
    fn hash_kv_is_stable_per_revision_and_equal_across_stores() {
        let (_d1, a) = open();
        let (_d2, b) = open();
        for s in [&a, &b] {
            put(s, "k1", "v1"); // 2
            put(s, "k2", "v2"); // 3
        }
        let at3 = a.hash_kv(3).unwrap();
        assert_eq!(at3.revision, 3);
        assert_eq!(at3.compact_revision, -1, "never compacted");
        assert_eq!(at3, b.hash_kv(0).unwrap(), "same history, same hash");
        put(&a, "k1", "v3"); // 4
        assert_eq!(
            a.hash_kv(3).unwrap().hash,
            at3.hash,
            "later writes do not matter"
        );
        assert_ne!(a.hash_kv(0).unwrap().hash, at3.hash);
        assert_ne!(a.hash_kv(2).unwrap().hash, at3.hash);
        assert!(matches!(a.hash_kv(9), Err(Error::FutureRevision)));
        // Different writes, different whole-backend hash; the same writes, the same one, whatever
        // the consistent index.
        put(&b, "k1", "v3");
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        b.set_consistent_index(1234);
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        put(&b, "k9", "x");
        assert_ne!(a.hash().unwrap().0, b.hash().unwrap().0);
        // Compaction: below it is gone, at and above it both stores still agree.
        a.compact(3, 10).unwrap();
        b.compact(3, 11).unwrap();
        assert!(matches!(a.hash_kv(2), Err(Error::Compacted)));
        let ha = a.hash_kv(4).unwrap();
        assert_eq!(ha.compact_revision, 3);
        assert_eq!(
            ha.hash,
            b.hash_kv(4).unwrap().hash,
            "b wrote more later; revision 4 agrees"
        );
    }

    #[test]
    fn reads_stay_consistent_while_a_thread_commits() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.commit_backend().unwrap();
                }
            })
        };
        for i in 1..=300i64 {
            let key = format!("k{}", i % 7);
            // The first write takes revision 2.
            assert_eq!(put(&store, &key, &i.to_string()), i + 1);
            let r = store.range(&opts("", "\0", 0)).unwrap();
            assert_eq!(r.count, (i as usize).min(7));
            assert_eq!(
                get(&store, &key, 0).unwrap().value,
                i.to_string().as_bytes()
            );
            // An old revision stays readable too.
            assert_eq!(get(&store, "k1", 2).unwrap().value, b"1");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        committer.join().unwrap();
    }
}

/// Hand-run measurement of how long a compaction holds the store's locks at a time:
/// `cargo test --release --lib compaction_pause -- --ignored --nocapture`.
#[cfg(test)]
mod compaction_pause {
    use super::*;

    #[test]
    #[ignore]
    fn compaction_pause() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let keys = 200_000;
        for round in 0..3 {
            let mut txn = store.write();
            for i in 0..keys {
                txn.put(
                    format!("key/{i:08}").as_bytes(),
                    &[round as u8; 256],
                    0,
                    false,
                )
                .unwrap();
                if i % 1000 == 999 {
                    txn.end(0);
                    txn = store.write();
                }
            }
            txn.end(0);
            store.commit_backend().unwrap();
        }
        let rev = store.current_revision();
        let t = std::time::Instant::now();
        store.mark_compacted(rev - 1, 0).unwrap();
        let mark = t.elapsed();
        // Time every lock hold of the prune from a reader's side: the longest wait for a read lock.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (longest, whole) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut longest = std::time::Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    let _ = store.current_revision();
                    longest = longest.max(t.elapsed());
                }
                longest
            });
            let t = std::time::Instant::now();
            store.prune(rev - 1).unwrap();
            let whole = t.elapsed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (reader.join().unwrap(), whole)
        });
        let t = std::time::Instant::now();
        store.commit_backend().unwrap();
        println!(
            "{keys} keys x 3 versions: mark {mark:?}; prune {whole:?} in all, longest reader wait {longest:?}; backend commit of the deletes {:?}",
            t.elapsed()
        );
    }
}
