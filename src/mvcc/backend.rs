//! The disk backend: a redb file with named tables, written in batches.
//!
//! etcd writes its bbolt file in batches because the WAL, not the backend, makes an applied entry
//! durable: after a crash, entries the backend missed are replayed from the WAL, and the consistent index
//! stored in the `meta` table says where replay starts. We do the same. [`Backend::put`],
//! [`Backend::delete`] and [`Backend::write`] only add to an in-memory *pending* batch; [`Backend::commit`]
//! writes that batch to redb in one write transaction. The caller decides when (every ~100 ms or
//! [`Backend::pending_len`] ~10,000 writes); any commit is correct, only the cost differs.
//!
//! # Reads see unwritten data
//!
//! A write is visible to reads as soon as it is buffered. A commit moves the pending batch into a
//! *committing* slot, writes it to redb without holding the buffer lock (so writers and readers keep
//! going), and clears the slot only after the redb transaction has committed. Reads therefore consult,
//! newest first, the pending batch, the committing batch, then redb, and a buffered delete hides any
//! older value below it.
//!
//! The invariant that makes this safe under a concurrent commit is the *order*: a read resolves its keys
//! against the buffers (under the buffer lock) **before** it opens its redb read transaction. A key found
//! in no buffer at that instant was committed to redb before that instant (the committing slot is
//! cleared only after the redb commit), so the read transaction opened afterwards sees it. The other
//! order is wrong: open the read transaction, then a commit lands and clears the slot, then the buffer
//! check misses the key and the stale snapshot misses it too. Multi-key reads ([`Backend::get_many`],
//! [`Backend::scan`]) resolve *all* their keys against the buffers at one instant, then open one read
//! transaction for the rest. A value that reaches redb after that instant may also be seen there; that
//! is harmless because the buffers held it (or something newer) at the instant anyway.
//!
//! [`Backend::write`] applies a whole [`WriteBatch`] under one lock acquisition, so a commit never
//! splits it: the MVCC store puts a transaction's records and its consistent index in one batch, and
//! every redb commit then holds exactly the data the persisted consistent index covers.
//!
//! Commits are serialized by their own lock. A failed commit puts its batch back under the newer pending
//! writes, so nothing is lost and the next commit retries.
//!
//! # Copies of the file: snapshot and defragmentation
//!
//! [`Backend::read_view`] commits and opens one redb read transaction, a [`ReadView`]: a consistent
//! view of the last commit, whose consistent index covers exactly its data (every commit holds whole
//! batches, see above). Nothing waits for it: readers and commits go on, because redb's read
//! transaction pins the old pages, not a lock. A client's snapshot is written in etcd's format
//! straight from one view (`snap/etcd_format.rs`); [`Backend::snapshot_to`] copies every table of
//! one view into a new redb file (what a follower that fell behind the log is sent).
//!
//! [`Backend::defragment`] builds on that copy. redb's own `Database::compact` needs `&mut Database`,
//! i.e. no reader and no writer for as long as it runs (seconds on a large file), so it is never run on
//! the live file. Instead:
//!
//! 1. Under the commit lock, start a *journal* (every commit from now on also records its batch) and
//!    open the read transaction the copy is taken from: copy + journal is then exactly the live state.
//! 2. Copy into `<db>.defrag` without any lock. The copy holds no free pages; if it is not smaller
//!    than the live file (nothing to give back), it is dropped and the live file stays.
//! 3. Replay the journal into the copy without the lock, a few rounds, while it shrinks.
//! 4. Take the commit lock (commits, and only commits, wait), replay what is left, rename the copy over
//!    the file, fsync the directory and swap the open [`Database`]. Readers briefly take a read lock to
//!    clone the database handle, so the swap itself is a pointer store.
//!
//! Writes are buffered in memory and never wait for redb, so only a commit that falls into step 4 waits,
//! for as long as replaying the last journal round and a rename take (milliseconds; see
//! [`DefragStats::blocked`]). A read resolves against the buffers first and then opens its read
//! transaction on whichever file is current; both hold every committed write.
//!
//! Left out: quota accounting beyond the file size.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::histogram::Histogram;

/// The tables (etcd's buckets) of the backend file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Encoded revision -> encoded `KeyValue`: the MVCC history.
    Key,
    /// Name -> bytes: consistent index, compact revision and other bookkeeping.
    Meta,
    /// Lease id -> lease record (used by the lessor).
    Lease,
    /// Users, roles and settings (used by auth).
    Auth,
}

impl Table {
    /// Every table, in declaration order (the order of the in-memory buffers).
    pub const ALL: [Table; 4] = [Table::Key, Table::Meta, Table::Lease, Table::Auth];

    /// The table's name in the redb file (etcd's bucket names).
    pub fn name(self) -> &'static str {
        match self {
            Table::Key => "key",
            Table::Meta => "meta",
            Table::Lease => "lease",
            Table::Auth => "auth",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// Buffered changes of one table: key -> new value, or `None` for a delete.
type TableBatch = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Buffered changes of every table.
#[derive(Debug, Default, Clone)]
struct Buffer {
    /// One map per table, indexed by [`Table::slot`].
    tables: [TableBatch; Table::ALL.len()],
    /// Writes added since the buffer was started (a rewrite of a key counts again).
    writes: usize,
}

impl Buffer {
    fn is_empty(&self) -> bool {
        self.tables.iter().all(BTreeMap::is_empty)
    }

    fn set(&mut self, table: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.tables[table.slot()].insert(key, value);
        self.writes += 1;
    }

    fn lookup(&self, table: Table, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.tables[table.slot()].get(key)
    }

    /// Lays `newer` over `self`.
    fn absorb(&mut self, newer: Buffer) {
        for (mine, theirs) in self.tables.iter_mut().zip(newer.tables) {
            mine.extend(theirs);
        }
        self.writes += newer.writes;
    }
}

/// The two in-memory layers, behind one lock.
#[derive(Debug, Default)]
struct Buffers {
    /// Writes not yet handed to a commit.
    pending: Buffer,
    /// The batch a commit is writing right now; cleared only after redb has committed it.
    committing: Option<Arc<Buffer>>,
}

impl Buffers {
    /// The newest buffered state of `key`: `Some(None)` for a buffered delete, `None` if not buffered.
    fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.pending.lookup(table, key) {
            return Some(v.clone());
        }
        self.committing
            .as_ref()
            .and_then(|c| c.lookup(table, key))
            .cloned()
    }
}

/// A group of writes that lands in the pending batch all at once (see [`Backend::write`]).
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// The writes in order; `None` is a delete.
    ops: Vec<(Table, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((table, key, Some(value)));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push((table, key, None));
    }

    /// Appends every write of `other`, after this batch's own.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The batched redb backend. `Send + Sync`; share it through an `Arc`.
pub struct Backend {
    /// The redb database. Behind a lock only so that defragmentation can swap in the compacted file;
    /// readers hold the read lock just long enough to clone the handle.
    db: RwLock<Arc<Database>>,
    /// While a defragmentation copies the file: the batches committed since its copy was taken.
    journal: Mutex<Option<Vec<Arc<Buffer>>>>,
    /// One defragmentation at a time (they share the copy's path and the journal).
    defrag_lock: Mutex<()>,
    /// The file's path, for [`Backend::size_bytes`].
    path: PathBuf,
    /// The file's size as of the last commit (or open, or defragmentation): the quota check reads
    /// it on every write, so it must not cost a `stat`. The file only changes size when redb
    /// commits, so between commits this is exact.
    file_size: std::sync::atomic::AtomicU64,
    /// Pending and committing writes; held only for short in-memory work, never across redb I/O.
    buffers: Mutex<Buffers>,
    /// Serializes commits so only one batch is ever in the committing slot.
    commit_lock: Mutex<()>,
    /// How long each commit of a non-empty batch took to write redb (etcd's
    /// `etcd_disk_backend_commit_duration_seconds`).
    commit_latency: Histogram,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("path", &self.path).finish()
    }
}

/// Locks a mutex, ignoring poison: every critical section here leaves the data consistent at each
/// statement (swaps and inserts), so a panic elsewhere cannot leave it half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backend {
    /// Opens the redb file at `path`, creating it (and its directory) if missing, with every [`Table`].
    pub fn open(path: &Path) -> Result<Backend> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let db = create_db(path)?;
        let txn = db.begin_write()?;
        for table in Table::ALL {
            txn.open_table(table.definition())?;
        }
        txn.commit()?;
        tracing::info!(path = %path.display(), "backend opened");
        let file_size = std::fs::metadata(path)?.len();
        Ok(Backend {
            db: RwLock::new(Arc::new(db)),
            journal: Mutex::new(None),
            defrag_lock: Mutex::new(()),
            path: path.to_path_buf(),
            file_size: std::sync::atomic::AtomicU64::new(file_size),
            buffers: Mutex::new(Buffers::default()),
            commit_lock: Mutex::new(()),
            commit_latency: Histogram::new(),
        })
    }

    /// Buffers a put.
    pub fn put(&self, table: Table, key: &[u8], value: &[u8]) {
        lock(&self.buffers)
            .pending
            .set(table, key.to_vec(), Some(value.to_vec()));
    }

    /// Buffers a delete; it hides any committed value of `key` from reads at once.
    pub fn delete(&self, table: Table, key: &[u8]) {
        lock(&self.buffers).pending.set(table, key.to_vec(), None);
    }

    /// Buffers a whole batch atomically with respect to commits: no commit sees part of it.
    pub fn write(&self, batch: WriteBatch) {
        let mut buffers = lock(&self.buffers);
        for (table, key, value) in batch.ops {
            buffers.pending.set(table, key, value);
        }
    }

    /// Writes buffered since the last commit began; the caller's cue to commit.
    pub fn pending_len(&self) -> usize {
        lock(&self.buffers).pending.writes
    }

    /// Writes the pending batch to redb in one transaction. Readers and writers are not blocked while
    /// redb works; concurrent commits queue. A no-op when nothing is pending.
    pub fn commit(&self) -> Result<()> {
        let _serial = lock(&self.commit_lock);
        let batch = {
            let mut buffers = lock(&self.buffers);
            if buffers.pending.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut buffers.pending));
            buffers.committing = Some(Arc::clone(&batch));
            batch
        };
        let start = Instant::now();
        let result = crate::fault::disk_full_point("backend")
            .map_err(Error::from)
            .and_then(|()| write_batch(&self.db(), &batch));
        self.commit_latency.observe(start.elapsed());
        self.refresh_size();
        if result.is_ok() {
            if let Some(journal) = lock(&self.journal).as_mut() {
                journal.push(Arc::clone(&batch));
            }
        }
        // Only now, with redb committed, may reads stop finding these writes in memory.
        let mut buffers = lock(&self.buffers);
        buffers.committing = None;
        if let Err(e) = &result {
            tracing::error!(error = %e, "backend commit failed; batch kept for retry");
            let newer = std::mem::take(&mut buffers.pending);
            let mut restored = (*batch).clone();
            restored.absorb(newer);
            buffers.pending = restored;
        }
        result
    }

    /// The durations of the commits that wrote a batch, for `/metrics`.
    pub fn commit_latency(&self) -> &Histogram {
        &self.commit_latency
    }

    /// A synonym of [`Backend::commit`] for callers that mean "now, whatever the batch size".
    pub fn force_commit(&self) -> Result<()> {
        self.commit()
    }

    /// The current redb database (see the module docs on defragmentation).
    fn db(&self) -> Arc<Database> {
        Arc::clone(&self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The current value of `key`, buffered or committed.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // Buffers first, then the read transaction: see the module docs.
        if let Some(v) = lock(&self.buffers).lookup(table, key) {
            return Ok(v);
        }
        // The handle outlives the transaction, even across a defragmentation's swap.
        let db = self.db();
        let txn = db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        Ok(t.get(key)?.map(|g| g.value().to_vec()))
    }

    /// The current values of several keys, resolved against the buffers at one instant and then against
    /// one redb snapshot, each turned into a `T` by `f` where it lies: a value read from redb is
    /// decoded from redb's page, not copied out of it first.
    pub fn get_many<T>(
        &self,
        table: Table,
        keys: &[&[u8]],
        mut f: impl FnMut(&[u8]) -> Result<T>,
    ) -> Result<Vec<Option<T>>> {
        let buffered: Vec<Option<Option<Vec<u8>>>> = {
            let buffers = lock(&self.buffers);
            keys.iter().map(|k| buffers.lookup(table, k)).collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        if buffered.iter().all(Option::is_some) {
            for value in buffered.into_iter().flatten() {
                out.push(value.as_deref().map(&mut f).transpose()?);
            }
            return Ok(out);
        }
        // The handle outlives the transaction, even across a defragmentation's swap.
        let db = self.db();
        let txn = db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        for (slot, key) in buffered.into_iter().zip(keys) {
            let value = match slot {
                Some(value) => value.as_deref().map(&mut f).transpose()?,
                None => match t.get(*key)? {
                    Some(guard) => Some(f(guard.value())?),
                    None => None,
                },
            };
            out.push(value);
        }
        Ok(out)
    }

    /// Calls `f(key, value)` for each live entry with `start <= key < end` (`end: None` = no upper
    /// bound), in key order, merging buffered writes over redb. `f` returns false to stop early.
    pub fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let bounds = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        // One instant for every buffered key of the range, before the read transaction opens.
        let buffered: TableBatch = {
            let buffers = lock(&self.buffers);
            let mut merged = TableBatch::new();
            if let Some(c) = &buffers.committing {
                merged.extend(
                    c.tables[table.slot()]
                        .range::<[u8], _>(bounds)
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
            merged.extend(
                buffers.pending.tables[table.slot()]
                    .range::<[u8], _>(bounds)
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            merged
        };
        // The handle outlives the transaction, even across a defragmentation's swap.
        let db = self.db();
        let txn = db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        let mut disk = t.range::<&[u8]>(bounds)?.peekable();
        let mut mem = buffered.iter().peekable();
        loop {
            let disk_key = match disk.peek() {
                Some(Ok((k, _))) => Some(k.value()),
                Some(Err(_)) => {
                    return Err(match disk.next() {
                        Some(Err(e)) => e.into(),
                        _ => Error::Internal("redb iterator changed under peek".into()),
                    });
                }
                None => None,
            };
            let mem_key = mem.peek().map(|(k, _)| k.as_slice());
            let (from_disk, shadowed) = match (disk_key, mem_key) {
                (None, None) => return Ok(()),
                (Some(_), None) => (true, false),
                (None, Some(_)) => (false, false),
                (Some(dk), Some(mk)) => (dk < mk, dk == mk),
            };
            let keep_going = if from_disk {
                let Some(Ok((k, v))) = disk.next() else {
                    return Err(Error::Internal("redb iterator changed under peek".into()));
                };
                f(k.value(), v.value())?
            } else {
                if shadowed {
                    // The buffered write supersedes the committed one.
                    disk.next();
                }
                match mem.next() {
                    Some((k, Some(v))) => f(k, v)?,
                    // A buffered delete hides the key.
                    Some((_, None)) => true,
                    None => {
                        return Err(Error::Internal("buffer iterator changed under peek".into()))
                    }
                }
            };
            if !keep_going {
                return Ok(());
            }
        }
    }

    /// Every live entry with `start <= key < end` (`end: None` = no upper bound), in key order.
    pub fn range(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan(table, start, end, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Size of the backend file in bytes, as of the last commit.
    pub fn size_bytes(&self) -> Result<u64> {
        Ok(self.file_size.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Re-reads the file's size after redb changed the file.
    fn refresh_size(&self) {
        match std::fs::metadata(&self.path) {
            Ok(m) => self
                .file_size
                .store(m.len(), std::sync::atomic::Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot stat the backend file")
            }
        }
    }

    /// Bytes of the file that hold live pages (etcd's `dbSizeInUse`): the allocated pages, the rest of
    /// the file being free pages a defragmentation would give back. Briefly holds the commit lock.
    pub fn size_in_use(&self) -> Result<u64> {
        let _serial = lock(&self.commit_lock);
        let txn = self.db().begin_write()?;
        let stats = txn.stats()?;
        let in_use = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort()?;
        Ok(in_use)
    }

    /// The path of the backend file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `f(table, key, value)` for every live entry of every table, tables in [`Table::ALL`] order
    /// and keys in order (for hashing the whole backend).
    pub fn scan_all(&self, mut f: impl FnMut(Table, &[u8], &[u8])) -> Result<()> {
        for table in Table::ALL {
            self.scan(table, &[], None, |k, v| {
                f(table, k, v);
                Ok(true)
            })?;
        }
        Ok(())
    }

    /// Commits, then opens a [`ReadView`] of the committed state: one redb read transaction, so
    /// everything committed before it opened and nothing later, its consistent index covering
    /// exactly its data. Readers and commits are not blocked while it is held.
    pub fn read_view(&self) -> Result<ReadView> {
        self.commit()?;
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(ReadView { txn, _db: db })
    }

    /// Commits, then writes a consistent copy of the committed state to a new redb file at `dest`
    /// (replaced if it exists) and returns its size. Readers and commits are not blocked: the copy reads
    /// one [`ReadView`]. The copy holds everything committed when it started and nothing later; its
    /// consistent index covers exactly its data.
    pub fn snapshot_to(&self, dest: &Path) -> Result<u64> {
        let view = self.read_view()?;
        let copy = copy_into(&view.txn, dest)?;
        drop(copy);
        sync_dir(dest)?;
        Ok(std::fs::metadata(dest)?.len())
    }

    /// Replaces the whole backend with the redb file at `src` (a snapshot received from the
    /// leader): everything buffered belongs to the state being replaced and is dropped, the file is
    /// renamed over the backend's and the directory synced before the new file is used, so a crash
    /// leaves either the old backend or the new one.
    pub fn replace_with(&self, src: &Path) -> Result<()> {
        let _serial = lock(&self.commit_lock);
        let db = create_db(src)?;
        {
            let txn = db.begin_write()?;
            for table in Table::ALL {
                txn.open_table(table.definition())?;
            }
            txn.commit()?;
        }
        std::fs::rename(src, &self.path)?;
        sync_dir(&self.path)?;
        {
            let mut buffers = lock(&self.buffers);
            buffers.pending = Buffer::default();
            buffers.committing = None;
        }
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
        self.refresh_size();
        Ok(())
    }

    /// Rewrites the backend file compactly, giving free pages back to the file system, while reads and
    /// writes go on; see the module docs for the steps. Only commits wait, during the final swap.
    pub fn defragment(&self) -> Result<DefragStats> {
        let _one = lock(&self.defrag_lock);
        let started = Instant::now();
        let size_before = self.size_bytes()?;
        self.commit()?;
        let tmp = self.path.with_extension("defrag");
        let db = self.db();
        let snapshot = {
            let _serial = lock(&self.commit_lock);
            *lock(&self.journal) = Some(Vec::new());
            db.begin_read()
        };
        let result = self.defragment_into(snapshot, &tmp);
        drop(db);
        // Whatever happened, stop journaling; a copy left behind was not used.
        *lock(&self.journal) = None;
        let _ = std::fs::remove_file(&tmp);
        let blocked = result?;
        let stats = DefragStats {
            size_before,
            size_after: self.size_bytes()?,
            took: started.elapsed(),
            blocked,
        };
        tracing::info!(
            size_before = stats.size_before,
            size_after = stats.size_after,
            took_ms = stats.took.as_millis() as u64,
            commits_blocked_us = stats.blocked.as_micros() as u64,
            "backend defragmented"
        );
        Ok(stats)
    }

    /// Steps 2-4 of [`Backend::defragment`]; returns how long commits were held.
    fn defragment_into(
        &self,
        snapshot: std::result::Result<redb::ReadTransaction, redb::TransactionError>,
        tmp: &Path,
    ) -> Result<Duration> {
        let snapshot = snapshot?;
        let copy = copy_into(&snapshot, tmp)?;
        drop(snapshot);
        // No `compact()` on the copy: a fresh copy has no free pages to give back, and a compacted file
        // has no slack either, so the very next commit grows it by one of redb's large steps (measured:
        // 17.8 MB -> 27 MB after a thousand small writes). The copy keeps redb's natural slack.
        // redb files grow in steps, so a copy of a file with nothing to give back can come out larger
        // than the original: keep the original then.
        if std::fs::metadata(tmp)?.len() >= self.size_bytes()? {
            tracing::info!("defragmentation would not shrink the backend; keeping it as it is");
            return Ok(Duration::ZERO);
        }
        // Catch up without holding anyone up, while there is much to catch up on.
        for _ in 0..3 {
            let batches = std::mem::take(lock(&self.journal).as_mut().expect("journal is on"));
            if batches.len() <= 1 {
                for b in &batches {
                    write_batch(&copy, b)?;
                }
                break;
            }
            for b in &batches {
                write_batch(&copy, b)?;
            }
        }
        // The swap: commits wait from here until the new file is in place.
        let _serial = lock(&self.commit_lock);
        let held = Instant::now();
        let rest = std::mem::take(lock(&self.journal).as_mut().expect("journal is on"));
        for b in &rest {
            write_batch(&copy, b)?;
        }
        std::fs::rename(tmp, &self.path)?;
        sync_dir(&self.path)?;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(copy);
        self.refresh_size();
        Ok(held.elapsed())
    }
}

/// A consistent, read-only view of the backend's committed state (see [`Backend::read_view`]):
/// what one redb commit left, whatever commits, defragmentations or snapshot installs come later.
/// Buffered writes that were not committed when it opened are not in it. While it is held, redb
/// keeps the pages it reads, so a long-held view lets later commits grow the file instead of
/// reusing those pages; drop it as soon as it is read.
pub struct ReadView {
    /// The redb read transaction every read of the view goes through (declared first: dropped
    /// before the database handle it reads).
    txn: redb::ReadTransaction,
    /// The database the transaction reads, kept open even if a defragmentation or a snapshot
    /// install swaps the backend's file meanwhile.
    _db: Arc<Database>,
}

impl ReadView {
    /// Calls `f(key, value)` for every entry of `table`, in key order; `f` returns false to stop.
    pub fn scan(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let t = self.txn.open_table(table.definition())?;
        for entry in t.iter()? {
            let (k, v) = entry?;
            if !f(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }
}

/// What a defragmentation did.
#[derive(Debug, Clone, Copy)]
pub struct DefragStats {
    /// File size before.
    pub size_before: u64,
    /// File size after.
    pub size_after: u64,
    /// The whole run.
    pub took: Duration,
    /// How long commits were held for the final swap (reads and buffered writes never wait).
    pub blocked: Duration,
}

/// Writes one batch to `db` in one redb write transaction.
fn write_batch(db: &Database, batch: &Buffer) -> Result<()> {
    let txn = db.begin_write()?;
    for table in Table::ALL {
        let changes = &batch.tables[table.slot()];
        if changes.is_empty() {
            continue;
        }
        let mut t = txn.open_table(table.definition())?;
        for (key, value) in changes {
            match value {
                Some(v) => {
                    t.insert(key.as_slice(), v.as_slice())?;
                }
                None => {
                    t.remove(key.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// redb's own page cache. Its default (1 GiB) would hold a copy of most of a large store after the
/// start-up scan, on top of the kernel's page cache; the hot set of a key-value workload is far
/// smaller, and cold pages are one `pread` from the kernel's cache away. Puts append at the right edge
/// of the revision-keyed `key` table and recent writes are read from the in-memory buffers, so 32 MiB
/// serves them as well as 64 MiB did (same put throughput over a 1M-key fill), for ~40 MB less RSS.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens or creates a redb file with our settings.
fn create_db(path: &Path) -> Result<Database> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?)
}

/// Creates a fresh redb file at `dest` holding every table of `from`, in one write transaction.
fn copy_into(from: &redb::ReadTransaction, dest: &Path) -> Result<Database> {
    match std::fs::remove_file(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let db = create_db(dest)?;
    let txn = db.begin_write()?;
    for table in Table::ALL {
        let src = from.open_table(table.definition())?;
        let mut dst = txn.open_table(table.definition())?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
    }
    txn.commit()?;
    Ok(db)
}

/// fsyncs the directory holding `path`, so a rename or a new file in it is durable.
fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn open() -> (tempfile::TempDir, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(&dir.path().join("member").join("db")).unwrap();
        (dir, b)
    }

    #[test]
    fn backend_writes_visible_before_and_after_commit() {
        let (_dir, b) = open();
        b.put(Table::Meta, b"a", b"1");
        b.put(Table::Key, b"a", b"other table");
        assert_eq!(b.get(Table::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.pending_len(), 2);
        b.commit().unwrap();
        assert_eq!(b.pending_len(), 0);
        assert_eq!(b.get(Table::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            b.get(Table::Key, b"a").unwrap(),
            Some(b"other table".to_vec())
        );
        assert_eq!(b.get(Table::Lease, b"a").unwrap(), None);
        assert!(b.size_bytes().unwrap() > 0);
    }

    #[test]
    fn backend_buffered_delete_hides_committed_value() {
        let (_dir, b) = open();
        for k in [b"a", b"b", b"c", b"d"] {
            b.put(Table::Key, k, k);
        }
        b.commit().unwrap();
        b.delete(Table::Key, b"b");
        b.put(Table::Key, b"c", b"new");
        b.put(Table::Key, b"e", b"e");
        assert_eq!(b.get(Table::Key, b"b").unwrap(), None);
        let got = b
            .get_many(Table::Key, &[b"a".as_slice(), b"b", b"c", b"z"], |v| {
                Ok(v.to_vec())
            })
            .unwrap();
        assert_eq!(
            got,
            vec![Some(b"a".to_vec()), None, Some(b"new".to_vec()), None]
        );
        let expect = vec![
            (b"a".to_vec(), b"a".to_vec()),
            (b"c".to_vec(), b"new".to_vec()),
            (b"d".to_vec(), b"d".to_vec()),
            (b"e".to_vec(), b"e".to_vec()),
        ];
        assert_eq!(b.range(Table::Key, b"", None).unwrap(), expect);
        assert_eq!(b.range(Table::Key, b"b", Some(b"d")).unwrap(), expect[1..2]);
        b.commit().unwrap();
        assert_eq!(b.range(Table::Key, b"", None).unwrap(), expect);
        assert_eq!(b.get(Table::Key, b"b").unwrap(), None);
        // Early stop.
        let mut seen = 0;
        b.scan(Table::Key, b"", None, |_, _| {
            seen += 1;
            Ok(seen < 2)
        })
        .unwrap();
        assert_eq!(seen, 2);
    }

    #[test]
    fn backend_reads_stay_correct_during_concurrent_commits() {
        let (_dir, b) = open();
        let b = Arc::new(b);
        let stop = Arc::new(AtomicBool::new(false));
        let committer = {
            let (b, stop) = (Arc::clone(&b), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    b.commit().unwrap();
                }
            })
        };
        // Each round writes a key, then every earlier key must still read back, and a key deleted in
        // the round before must stay hidden, whatever the committer is doing.
        for i in 0u32..2000 {
            let key = i.to_be_bytes();
            b.put(Table::Key, &key, &key);
            if i > 0 {
                b.delete(Table::Key, &(i - 1).to_be_bytes());
            }
            assert_eq!(b.get(Table::Key, &key).unwrap(), Some(key.to_vec()));
            if i > 0 {
                assert_eq!(b.get(Table::Key, &(i - 1).to_be_bytes()).unwrap(), None);
            }
            let all = b.range(Table::Key, b"", None).unwrap();
            assert_eq!(all, vec![(key.to_vec(), key.to_vec())], "round {i}");
        }
        stop.store(true, Ordering::Relaxed);
        committer.join().unwrap();
        b.commit().unwrap();
        assert_eq!(b.range(Table::Key, b"", None).unwrap().len(), 1);
    }

    #[test]
    fn backend_snapshot_is_a_consistent_openable_copy() {
        let (dir, b) = open();
        for i in 0u32..500 {
            b.put(Table::Key, &i.to_be_bytes(), &[7u8; 100]);
        }
        b.put(Table::Meta, b"m", b"1");
        let dest = dir.path().join("snap.db");
        let size = b.snapshot_to(&dest).unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        // Written after the copy: not in it.
        b.put(Table::Key, b"later", b"x");
        b.commit().unwrap();
        let copy = Backend::open(&dest).unwrap();
        assert_eq!(copy.range(Table::Key, b"", None).unwrap().len(), 500);
        assert_eq!(copy.get(Table::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn backend_defragment_shrinks_and_loses_nothing_under_concurrent_writes() {
        let (dir, b) = open();
        let b = Arc::new(b);
        for i in 0u32..20_000 {
            b.put(Table::Key, &i.to_be_bytes(), &[1u8; 200]);
            if i % 5000 == 0 {
                b.commit().unwrap();
            }
        }
        b.commit().unwrap();
        for i in 0u32..19_000 {
            b.delete(Table::Key, &i.to_be_bytes());
        }
        b.commit().unwrap();
        let before = b.size_bytes().unwrap();
        // A writer and a committer keep going during the defragmentation.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (b, stop) = (Arc::clone(&b), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    b.put(Table::Lease, &n.to_be_bytes(), b"v");
                    if n.is_multiple_of(50) {
                        b.commit().unwrap();
                    }
                    // Every read sees every write so far.
                    assert_eq!(
                        b.get(Table::Lease, &n.to_be_bytes()).unwrap(),
                        Some(b"v".to_vec())
                    );
                    n += 1;
                }
                n
            })
        };
        let stats = b.defragment().unwrap();
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        b.commit().unwrap();
        assert!(stats.size_after < before, "{stats:?} (before {before})");
        assert_eq!(b.range(Table::Key, b"", None).unwrap().len(), 1000);
        assert_eq!(
            b.range(Table::Lease, b"", None).unwrap().len(),
            written as usize
        );
        assert!(!dir.path().join("member").join("db.defrag").exists());
        // And the file on disk is the defragmented one, with everything in it.
        drop(b);
        let b = Backend::open(&dir.path().join("member").join("db")).unwrap();
        assert_eq!(b.range(Table::Key, b"", None).unwrap().len(), 1000);
        assert_eq!(
            b.range(Table::Lease, b"", None).unwrap().len(),
            written as usize
        );
        assert!(b.size_in_use().unwrap() <= b.size_bytes().unwrap());
    }

    #[test]
    fn backend_reopen_keeps_committed_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let b = Backend::open(&path).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(Table::Meta, b"x".to_vec(), b"1".to_vec());
            batch.put(Table::Meta, b"y".to_vec(), b"2".to_vec());
            batch.delete(Table::Meta, b"y".to_vec());
            assert_eq!(batch.len(), 3);
            b.write(batch);
            b.force_commit().unwrap();
        }
        let b = Backend::open(&path).unwrap();
        assert_eq!(b.get(Table::Meta, b"x").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(Table::Meta, b"y").unwrap(), None);
    }
}
