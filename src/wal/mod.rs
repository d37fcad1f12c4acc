//! The write-ahead log: durable storage for one server's Raft log and hard state.
//!
//! Raft requires that entries and the hard state (term, vote, commit) are on stable storage before the
//! node acknowledges them to anyone. [`Wal::save`] is that point: it appends the records of one Ready
//! and returns only after a single `fdatasync`. On restart, [`Wal::open`] reads everything back as a
//! [`WalContents`] (metadata, last hard state, latest snapshot mark, live entries above it) and leaves
//! the log positioned to append.
//!
//! # On-disk format
//!
//! A WAL is a directory of *segment* files named `{seq:016x}-{first_index:016x}.wal`: `seq` counts
//! segments from 0 without gaps, `first_index` is the index of the first entry expected in the file
//! (the last saved index + 1 when it was cut; 0 for the first segment). A segment is a sequence of
//! records, each starting at an offset that is a multiple of 8:
//!
//! ```text
//! offset  size  field
//!      0     4  data length, u32 little-endian
//!      4     1  record type (1 Crc, 2 Metadata, 3 Entry, 4 HardState, 5 Snapshot; 0 is never a type)
//!      5     1  padding length (0..=7): zero bytes after the data up to the next 8-byte boundary
//!      6     2  reserved, zero
//!      8     4  crc: crc32c_append(previous record's crc, type byte ++ data), u32 little-endian
//!     12     4  header check: crc32c of bytes 0..12
//!     16     n  data, then the padding
//! ```
//!
//! Alignment keeps the first 8 header bytes (length, type, padding) inside one sector, so the length
//! is never half-written; the whole header crosses a 512-byte sector boundary only when it starts 504
//! bytes past one. The header check lets recovery trust a length before reading that many bytes: a
//! damaged length is reported as damage, not mistaken for a record that merely runs past the end of
//! the file.
//!
//! The crc is *chained*: each record's checksum continues from the previous record's, so a record
//! that is intact on its own but out of place (a stale block, a segment from another log) fails too.
//! Payloads: Metadata is the opaque bytes given to [`Wal::create`] (node id, cluster id); Entry and
//! HardState are Raft's protobuf encodings; Snapshot is index (u64 LE), term (u64 LE), then the
//! protobuf-encoded `ConfState`; Crc is the u32 (LE) the chain continues from.
//!
//! Every segment starts with a Crc record carrying the crc of the previous segment's last record (0
//! for the very first segment), so the chain runs across files; then Metadata, and in every segment
//! after the first also the last HardState and the last Snapshot mark, so that after older segments
//! are released the newest ones still hold all the state recovery needs. A segment is cut after a
//! write leaves it larger than [`WalOptions::segment_size`]. New segments are written to a `.tmp`
//! file, fsynced, renamed into place and the directory fsynced: a crash leaves either a complete new
//! segment or none.
//!
//! # The spare segment
//!
//! As etcd's file pipeline does, the next segment is made before it is needed: `spare.wal.tmp`,
//! created empty and preallocated after open and after each cut, and held open with the WAL
//! directory. A cut writes the new segment's first records into it, fsyncs, renames it into place
//! and fsyncs the directory: it opens no file, so a process out of descriptors (`EMFILE`) still
//! cuts. If the spare cannot be made, the handle tries again after later writes (at most once a
//! second), and a segment that is full with no spare ready keeps growing past
//! [`WalOptions::segment_size`] until one is: the format allows a segment of any size, and the
//! member keeps working. The spare is a `.tmp` file, so open removes it like any unfinished
//! segment and makes a new one.
//!
//! # Preallocation
//!
//! Like etcd, every segment file is preallocated to `segment_size` when it is created (`fallocate`
//! on Linux): a write inside allocated space does not change the file size, so its `fdatasync` has
//! less metadata to journal. Measured on ext4 with `cargo bench --bench hot_paths -- wal/save`: a
//! one-entry save went from about 200–260 µs to 150–165 µs; a 64-entry save (18 KB) did not change
//! measurably, its cost being the data itself.
//! The file size therefore says nothing about the log; the *logical end* of the last segment (the end
//! of its last record) is kept in memory and found again by recovery, and writes go there, never with
//! `O_APPEND`. The bytes after it read as zeros. When a segment is finished by a cut it is truncated
//! to its logical end, so only the last segment carries unused space. Where the platform or the
//! filesystem cannot preallocate (`EOPNOTSUPP`), segments grow by appending as before; the format is
//! the same either way, and logs written without preallocation open and get preallocated.
//!
//! # Invariants
//!
//! - Only the last segment is ever appended to; earlier ones were fully fsynced before the cut.
//! - One `save` is one `write` at the logical end plus one `fdatasync` (group commit); the directory
//!   is fsynced after every file creation, rename or removal.
//! - Every byte after the logical end of the last segment is zero: writes go only at the logical
//!   end, and recovery cuts anything else there before it preallocates again. So a record that
//!   reaches the disk only in part leaves zeros where the rest should be, which is what the torn-write
//!   rule below relies on.
//! - Replay: the last HardState wins; a Snapshot mark drops the entries it covers; an Entry whose index
//!   is at or below one read before discards that entry and everything after it (Raft truncated its
//!   log), so the entries handed back are contiguous and ascending.
//! - After any I/O error the handle refuses further writes: after a failed fsync the page cache can
//!   no longer be trusted, so the server must stop and recover from disk.
//!
//! # Recovery
//!
//! - A *torn tail* is what a crash during a write leaves; that write was never acknowledged, so
//!   [`Wal::open`] cuts it off (truncate, preallocate again, fsync), warns, and reports it in
//!   [`WalContents::repaired_tail`]. In the last segment, and never at its first record, a torn
//!   tail is one of:
//!   - fewer bytes than a header, or a record whose declared length runs past the end of the file
//!     (how a crash shows when the file grows by appending);
//!   - an all-zero header followed by non-zero bytes: a multi-sector write whose first sector never
//!     reached the disk but a later one did;
//!   - a header that fails its check, crosses a sector boundary, and reads zero from that boundary to
//!     the end of the file: its first sector was written, the next never was;
//!   - the *torn-write rule* for preallocated space: a record whose header is intact but whose
//!     chained crc fails, such that for some 512-byte sector boundary `s` (by file offset) inside
//!     its data, every byte from `s` to the end of the file is zero. That is, the record's data ends
//!     in whole unwritten sectors and nothing after it was written. A crash leaves each sector of a
//!     write either written or still zero, so this is the shape of a write cut short; a flipped bit
//!     leaves no zero sector, and a zeroed sector with written bytes after it does not match either.
//!     The rule is deliberately narrow: a write whose sectors landed out of order (a middle sector
//!     lost, a later one written) is reported as damage, for the operator's [`repair`]. It can also
//!     misjudge damage as torn only if a bit flips in the very last record *and* that record's data
//!     genuinely ends in at least a sector of zeros; then an acknowledged last record is cut.
//!
//!   Trailing bytes that fill a header but fail its check are *not* taken for a torn tail: a sector
//!   is written whole, so such bytes are damage.
//! - An all-zero header where a record would start ends the file's records: the rest, all zeros, is
//!   unused space (preallocated, or left by an older version). It stays; open preallocates the
//!   segment again and appends continue right after the last record.
//! - Anything else is damage and `open` refuses with [`Error::Corrupt`], naming the file and byte
//!   offset: a checksum mismatch on a complete record (even the last), an unknown record type, a
//!   payload that does not decode, a missing segment in the sequence, a Crc record that does not
//!   continue the previous segment's chain.
//! - [`repair`] is the operator's explicit decision to lose data: it keeps a `.broken` copy of the
//!   damaged segment, truncates it at the start of the first bad record and moves every later segment
//!   aside (as `.broken` too). **Everything from the bad record on is dropped**, including entries
//!   that may have been acknowledged; Raft can refill them from the leader only if this node was not
//!   needed for their quorum.
//!
//! # What it leaves out
//!
//! - No background cutting: the cut, and making the next spare after it, run inline after the save
//!   that crossed the size limit.
//! - No directory lock: the server holds the data directory lock; one process owns a WAL.
//! - No reading of entries after open: the Raft storage keeps them in memory.
//! - Releasing segments is up to the caller: [`Wal::release_to`] should only be given an index that a
//!   snapshot already covers.

pub(crate) mod record;
mod repair;
mod segment;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, HardState};

use crate::error::{Error, Result};
use crate::histogram::Histogram;
use record::Record;
use segment::SegmentFile;

pub use repair::{repair, RepairReport};

/// Tuning for a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is cut once a write leaves it larger than this many bytes, and each new segment is
    /// preallocated to this size. Small values are for tests.
    pub segment_size: u64,
    /// [`Wal::open`] keeps in memory only the entries from this index on: older ones are read and
    /// checked but not kept, so a start holds no more of the log than its replay needs
    /// ([`WalContents::before_retained`] names the last of them).
    pub retain_from: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 * 1024 * 1024,
            retain_from: 0,
        }
    }
}

/// A record that the state machine has a snapshot up to `index`/`term`, with the membership then.
/// Entries at or below `index` are no longer needed from the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotMark {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// Everything recovery read back from the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalContents {
    /// The bytes given to [`Wal::create`].
    pub metadata: Vec<u8>,
    /// The last hard state saved (default if none was).
    pub hard_state: HardState,
    /// The latest snapshot mark (index 0 if none was saved).
    pub snapshot: SnapshotMark,
    /// Every entry with index above `snapshot.index` and at or above [`WalOptions::retain_from`], in
    /// order, with Raft's truncations applied.
    pub entries: Vec<Entry>,
    /// Index and term of the last entry above the snapshot that is below `retain_from`, so not in
    /// `entries`: the entry just before `entries`, or the log's last if `entries` is empty.
    pub before_retained: Option<(u64, u64)>,
    /// A torn tail that was cut off: the file and the offset it was truncated at.
    pub repaired_tail: Option<(PathBuf, u64)>,
}

impl WalContents {
    /// Index and term of the log's last entry, kept in memory or not; `None` when no entry is
    /// above the snapshot mark.
    pub fn last_entry(&self) -> Option<(u64, u64)> {
        self.entries
            .last()
            .map(|e| (e.index, e.term))
            .or(self.before_retained)
    }
}

/// An open write-ahead log, positioned to append to its last segment.
#[derive(Debug)]
pub struct Wal {
    /// The WAL directory; segments are created and removed here.
    dir: PathBuf,
    /// Size limit and friends.
    opts: WalOptions,
    /// Every segment on disk, oldest first; the last one is `file`.
    segments: Vec<SegmentFile>,
    /// The last segment, open for writing at `offset`.
    file: File,
    /// The WAL directory, open for the fsyncs that make creations, renames and removals durable, so
    /// that a cut and a release need no new descriptor.
    dir_file: File,
    /// The next segment, created and preallocated ahead of the cut ([`segment::create_spare`]).
    spare: Option<File>,
    /// While there is no spare: when to try making one again (the last try failed).
    spare_retry_at: Option<Instant>,
    /// End of the last record in `file` (its logical end; the file itself is usually longer,
    /// preallocated): where the next write goes.
    offset: u64,
    /// Crc of the last record written: the next record's chain value.
    last_crc: u32,
    /// Repeated at the start of every new segment.
    metadata: Vec<u8>,
    /// Last hard state saved, repeated at the start of every new segment.
    hard_state: HardState,
    /// Last snapshot mark saved, repeated at the start of every new segment.
    snapshot: SnapshotMark,
    /// Index of the last entry saved; names the next segment (`last_index + 1`).
    last_index: u64,
    /// Number of segment-file fsyncs made by this handle, so tests can check group commit.
    sync_count: u64,
    /// Set after an I/O error: the state on disk is unknown, so every later write is refused.
    failed: bool,
    /// How long each append's `fdatasync` took (etcd's `etcd_disk_wal_fsync_duration_seconds`).
    fsync_latency: Arc<Histogram>,
}

impl Wal {
    /// True if `dir` holds at least one segment file.
    pub fn exists(dir: &Path) -> bool {
        segment::list(dir).is_ok_and(|s| !s.is_empty())
    }

    /// Creates a new log in `dir` (created if missing) with its first segment. Fails if a log is
    /// already there. The caller then saves a snapshot mark for the initial `ConfState`.
    pub fn create(dir: &Path, metadata: &[u8], opts: WalOptions) -> Result<Wal> {
        if Wal::exists(dir) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a WAL already exists in {}", dir.display()),
            )));
        }
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            segment::sync_dir(parent)?;
        }
        segment::remove_tmp_files(dir)?;
        let mut buf = Vec::new();
        let crc = record::encode_record(&mut buf, 0, &Record::Crc(0))?;
        let crc = record::encode_record(&mut buf, crc, &Record::Metadata(metadata.to_vec()))?;
        let (file, seg) = segment::create(dir, 0, 0, &buf, opts.segment_size)?;
        let dir_file = File::open(dir)?;
        tracing::info!(dir = %dir.display(), "created WAL");
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments: vec![seg],
            file,
            dir_file,
            spare: None,
            spare_retry_at: None,
            offset: buf.len() as u64,
            last_crc: crc,
            metadata: metadata.to_vec(),
            hard_state: HardState::default(),
            snapshot: SnapshotMark::default(),
            last_index: 0,
            sync_count: 1,
            failed: false,
            fsync_latency: Arc::default(),
        };
        wal.prepare_spare();
        Ok(wal)
    }

    /// Recovers the log in `dir`: reads and checks every segment, cuts a torn tail, and returns the
    /// handle positioned to append together with what was read. Damage anywhere else is
    /// [`Error::Corrupt`], naming the file and offset and how to repair.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, WalContents)> {
        segment::remove_tmp_files(dir)?;
        let mut scan = segment::scan(dir, opts.retain_from)?;
        let mut repaired_tail = None;
        if let Some(stop) = &scan.stop {
            let path = &scan.segments[stop.segment].path;
            if !stop.torn {
                return Err(corrupt(path, stop.offset, &stop.reason));
            }
            tracing::warn!(
                path = %path.display(),
                offset = stop.offset,
                reason = %stop.reason,
                "WAL has a torn tail (a write interrupted by a crash); cutting it off"
            );
            repaired_tail = Some((path.clone(), stop.offset));
        }
        let Some(metadata) = scan.replay.metadata.clone() else {
            return Err(Error::Corrupt(format!(
                "WAL in {} has no metadata record; it cannot be recovered",
                dir.display()
            )));
        };
        let last = scan
            .segments
            .last()
            .cloned()
            .ok_or_else(|| Error::Internal("scan returned no segments".to_string()))?;
        let file = OpenOptions::new().write(true).open(&last.path)?;
        let dir_file = File::open(dir)?;
        let len_before = file.metadata()?.len();
        // A torn tail must go entirely: a later write may cover only part of it, leaving bytes that
        // the next recovery would take for damage. Everything after `scan.end` is zero otherwise.
        if repaired_tail.is_some() {
            file.set_len(scan.end)?;
        }
        // Preallocate what the segment has left (again, after a cut tail; for the first time for a
        // log written before preallocation): the tail stays zero, which recovery reads as unused.
        segment::preallocate(&file, opts.segment_size)?;
        if repaired_tail.is_some() || file.metadata()?.len() != len_before {
            file.sync_all()?;
        }
        let last_index = scan.replay.last_index();
        let contents = WalContents {
            metadata: metadata.clone(),
            hard_state: scan.replay.hard_state.clone(),
            snapshot: scan.replay.snapshot.clone(),
            entries: std::mem::take(&mut scan.replay.entries),
            before_retained: scan.replay.before_retained,
            repaired_tail,
        };
        tracing::info!(
            dir = %dir.display(),
            segments = scan.segments.len(),
            entries = contents.entries.len(),
            snapshot_index = contents.snapshot.index,
            "opened WAL"
        );
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            last_index,
            segments: scan.segments,
            file,
            dir_file,
            spare: None,
            spare_retry_at: None,
            offset: scan.end,
            last_crc: scan.last_crc,
            metadata,
            hard_state: scan.replay.hard_state,
            snapshot: scan.replay.snapshot,
            sync_count: 0,
            failed: false,
            fsync_latency: Arc::default(),
        };
        wal.prepare_spare();
        Ok((wal, contents))
    }

    /// Appends `entries` and then `hard_state` (if given) with one write and one fdatasync: when this
    /// returns Ok they are durable and may be acknowledged. An entry at or below an index saved
    /// before replaces it and everything after it. Cuts a new segment afterwards if the current one
    /// is over the size limit.
    pub fn save(&mut self, hard_state: Option<&HardState>, entries: &[Entry]) -> Result<()> {
        self.check_usable()?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        let mut crc = self.last_crc;
        for e in entries {
            crc = record::encode_proto(&mut buf, crc, record::RecordType::Entry, e)?;
        }
        if let Some(hs) = hard_state {
            crc = record::encode_proto(&mut buf, crc, record::RecordType::HardState, hs)?;
        }
        self.append(&buf, crc)?;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        self.cut_if_full()
    }

    /// Records a snapshot mark, fsynced: recovery will drop entries at or below `mark.index`. A mark
    /// older than the last one saved is refused.
    pub fn save_snapshot(&mut self, mark: &SnapshotMark) -> Result<()> {
        self.check_usable()?;
        if mark.index < self.snapshot.index {
            return Err(Error::InvalidArgument(format!(
                "snapshot mark at index {} is older than the saved mark at {}",
                mark.index, self.snapshot.index
            )));
        }
        let mut buf = Vec::new();
        let crc = record::encode_record(&mut buf, self.last_crc, &Record::Snapshot(mark.clone()))?;
        self.append(&buf, crc)?;
        self.snapshot = mark.clone();
        self.last_index = self.last_index.max(mark.index);
        self.cut_if_full()
    }

    /// Removes the oldest segments whose entries all lie below `index`, never the current one, and
    /// returns how many were removed. A segment qualifies when a later segment's first index is at or
    /// below `index`. Give only an index that a saved snapshot mark covers.
    pub fn release_to(&mut self, index: u64) -> Result<usize> {
        self.check_usable()?;
        // Live entries of segment j are all below the first index of every later segment, so the
        // prefix up to the last j whose successor starts at or below `index` can go.
        let remove = (1..self.segments.len())
            .filter(|&k| self.segments[k].first_index <= index)
            .max()
            .unwrap_or(0);
        if remove == 0 {
            return Ok(0);
        }
        // Oldest first: a crash part-way still leaves a gap-free sequence.
        for seg in &self.segments[..remove] {
            if let Err(e) = std::fs::remove_file(&seg.path) {
                self.failed = true;
                return Err(e.into());
            }
            tracing::debug!(path = %seg.path.display(), "released WAL segment");
        }
        self.segments.drain(..remove);
        let res = self.dir_file.sync_all();
        self.guard(res.map_err(Error::from))?;
        Ok(remove)
    }

    /// Number of segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The durations of the fdatasync that ends each save and each snapshot mark, for `/metrics`.
    /// Segment creation and directory syncs are not in it (etcd's metric also counts its directory
    /// syncs at creation and repair, which happen once).
    pub fn fsync_latency(&self) -> Arc<Histogram> {
        Arc::clone(&self.fsync_latency)
    }

    /// Number of segment-file fsyncs this handle has made (group commit: one per `save`, plus one
    /// per segment created). For tests and metrics.
    pub fn sync_count(&self) -> u64 {
        self.sync_count
    }

    /// Writes `buf` at the logical end of the current segment (inside its preallocated space when
    /// there is room) and fdatasyncs it; `crc` is its last record's.
    fn append(&mut self, buf: &[u8], crc: u32) -> Result<()> {
        let offset = self.offset;
        let res = (|| -> Result<()> {
            crate::fault::disk_full_point("wal")?;
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.write_all(buf)?;
            // fsync before ack: the caller acknowledges as soon as this returns.
            let start = Instant::now();
            self.file.sync_data()?;
            self.fsync_latency.observe(start.elapsed());
            Ok(())
        })();
        self.guard(res)?;
        self.sync_count += 1;
        self.offset += buf.len() as u64;
        self.last_crc = crc;
        Ok(())
    }

    /// After a write: makes a spare if there is none (when a retry is due), then cuts if the
    /// segment is full and a spare is ready. With no spare the segment grows until one is.
    fn cut_if_full(&mut self) -> Result<()> {
        if self.spare.is_none() && self.spare_retry_at.is_none_or(|at| Instant::now() >= at) {
            self.prepare_spare();
        }
        if self.offset <= self.opts.segment_size {
            return Ok(());
        }
        let Some(spare) = self.spare.take() else {
            tracing::debug!(
                dir = %self.dir.display(),
                size = self.offset,
                "WAL segment is full but no spare is ready; writing on past its size"
            );
            return Ok(());
        };
        let res = self.cut(spare);
        self.guard(res)?;
        self.prepare_spare();
        Ok(())
    }

    /// How long after a failed try the spare is tried again.
    const SPARE_RETRY: Duration = Duration::from_secs(1);

    /// Makes the spare next segment, if it can; a failure is logged and tried again later.
    fn prepare_spare(&mut self) {
        match segment::create_spare(&self.dir, self.opts.segment_size) {
            Ok(file) => {
                if self.spare_retry_at.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "made the spare WAL segment");
                }
                self.spare = Some(file);
            }
            Err(e) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    "cannot make the spare WAL segment; trying again after later writes (a \
                     full segment grows past its size until then)"
                );
                self.spare_retry_at = Some(Instant::now() + Self::SPARE_RETRY);
            }
        }
    }

    /// Starts the next segment, in `spare`, with the records recovery needs to continue from it
    /// alone. Opens no file.
    fn cut(&mut self, spare: File) -> Result<()> {
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let first_index = self.last_index + 1;
        // A finished segment ends at its last record: drop its unused preallocated space. No fsync
        // needed: if the new size is lost in a crash, the zero tail reads as unused space, and it is
        // no longer the last segment.
        self.file.set_len(self.offset)?;
        let mut buf = Vec::new();
        let mut crc = record::encode_record(&mut buf, self.last_crc, &Record::Crc(self.last_crc))?;
        for rec in [
            Record::Metadata(self.metadata.clone()),
            Record::HardState(self.hard_state.clone()),
            Record::Snapshot(self.snapshot.clone()),
        ] {
            crc = record::encode_record(&mut buf, crc, &rec)?;
        }
        let (file, seg) =
            segment::install_spare(&self.dir, &self.dir_file, spare, seq, first_index, &buf)?;
        self.sync_count += 1;
        tracing::info!(path = %seg.path.display(), first_index, "cut WAL segment");
        self.file = file;
        self.segments.push(seg);
        self.offset = buf.len() as u64;
        self.last_crc = crc;
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Internal(format!(
                "WAL in {} failed an earlier write; restart to recover from disk",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Makes every later write fail, as after an I/O error (for tests of what a failed write does).
    #[cfg(test)]
    pub(crate) fn fail_from_now_on(&mut self) {
        self.failed = true;
    }

    /// Marks the handle failed if `res` is an error, then passes it on.
    fn guard<T>(&mut self, res: Result<T>) -> Result<T> {
        if res.is_err() {
            self.failed = true;
        }
        res
    }
}

/// The error for damage at `offset` of `path`, saying how to get past it.
fn corrupt(path: &Path, offset: u64, reason: &str) -> Error {
    Error::Corrupt(format!(
        "WAL segment {} is damaged at byte offset {offset}: {reason}. To drop that record and \
         everything after it, run `mini-etcd repair --data-dir <dir>`",
        path.display()
    ))
}
