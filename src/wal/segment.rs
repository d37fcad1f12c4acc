//! Segment files: naming, listing, atomic creation, the spare next segment made ahead of a cut, and
//! the scan that reads every segment in order, checks the chain and replays the records into the
//! state recovery hands back.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState};

use super::record::{self, Frame, Record, RecordType};
use super::SnapshotMark;
use crate::error::{Error, Result};

/// Suffix of a segment file.
const SUFFIX: &str = ".wal";
/// Suffix of a segment being created; never read, removed on open.
const TMP_SUFFIX: &str = ".wal.tmp";
/// The next segment, created and preallocated ahead of the cut that will need it ([`create_spare`]);
/// a `.wal.tmp` file, so recovery removes it like any unfinished segment.
pub(crate) const SPARE_NAME: &str = "spare.wal.tmp";

/// The unit a disk writes atomically, at the least: a crash leaves each 512-byte sector of a write
/// either written or as it was. Torn-write detection reasons in sectors of this size, by file offset.
pub(crate) const SECTOR: usize = 512;

/// One segment file of the log, as named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    /// Full path of the file.
    pub path: PathBuf,
    /// Position in the sequence of segments; consecutive, starting at 0 when the log was created.
    pub seq: u64,
    /// Index of the first entry expected in the file (last saved index + 1 when it was cut).
    pub first_index: u64,
}

/// The file name of segment `seq` whose first expected entry is `first_index`.
pub(crate) fn file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// The segments in `dir`, ordered by sequence number. Other files (`.broken`, `.tmp`) are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, first_index)) = parse_name(name) {
            out.push(SegmentFile {
                path: item.path(),
                seq,
                first_index,
            });
        }
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// Removes half-created segments left by a crash during create or cut. Returns true if any were found.
pub(crate) fn remove_tmp_files(dir: &Path) -> Result<bool> {
    let mut found = false;
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str().filter(|n| n.ends_with(TMP_SUFFIX)) else {
            continue;
        };
        if name == SPARE_NAME {
            // Left by every stop, clean or not: a new one is made after open.
            tracing::debug!(path = %item.path().display(), "removing the spare WAL segment");
        } else {
            tracing::info!(path = %item.path().display(), "removing unfinished WAL segment");
        }
        fs::remove_file(item.path())?;
        found = true;
    }
    if found {
        sync_dir(dir)?;
    }
    Ok(found)
}

/// fsyncs a directory, making file creations, renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Preallocates `file` to at least `len` bytes (zero-filled, never shrinking it), so that later
/// writes inside that space do not change the file size and their `fdatasync` has less metadata to
/// journal. Returns false, having done nothing, where the filesystem or platform cannot preallocate:
/// the log then simply grows by appending, as correct and a little slower.
pub(crate) fn preallocate(file: &File, len: u64) -> Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let len = libc::off_t::try_from(len).map_err(|_| {
            Error::InvalidArgument(format!(
                "WAL segment size {len} is too large to preallocate"
            ))
        })?;
        loop {
            // Mode 0: allocate and extend the size, like etcd's fileutil.Preallocate. The blocks read
            // as zeros until written, which recovery takes for unused space.
            // SAFETY: the descriptor is open for as long as `file` is borrowed, and fallocate
            // touches no memory of this process.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
            if rc == 0 {
                return Ok(true);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(
                        "filesystem cannot preallocate WAL segments; appending instead"
                    );
                    return Ok(false);
                }
                _ => return Err(err.into()),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, len);
        tracing::debug!("no WAL segment preallocation on this platform; appending instead");
        Ok(false)
    }
}

/// Creates segment `seq` holding `initial` bytes, preallocated to `prealloc` bytes, atomically: the
/// bytes are written to a temporary file, the space is allocated and the file fsynced, then it is
/// renamed into place and the directory fsynced. A crash leaves either no segment or a complete one.
/// Returns the file opened for writing; the caller writes after `initial`.
pub(crate) fn create(
    dir: &Path,
    seq: u64,
    first_index: u64,
    initial: &[u8],
    prealloc: u64,
) -> Result<(File, SegmentFile)> {
    let name = file_name(seq, first_index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    file.write_all(initial)?;
    preallocate(&file, prealloc)?;
    // sync_all, not sync_data: the preallocated size must be durable too.
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((
        file,
        SegmentFile {
            path,
            seq,
            first_index,
        },
    ))
}

/// Creates the spare next segment in `dir`: an empty file preallocated to `prealloc` bytes and
/// fsynced, replacing any earlier spare. A cut then needs no new descriptor ([`install_spare`]),
/// so running out of descriptors cannot stop it. On failure, no spare is left behind.
pub(crate) fn create_spare(dir: &Path, prealloc: u64) -> Result<File> {
    let path = dir.join(SPARE_NAME);
    let res = (|| -> Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, prealloc)?;
        file.sync_all()?;
        Ok(file)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&path);
    }
    res
}

/// Makes the spare segment `spare` (from [`create_spare`]) segment `seq`, holding `initial` bytes:
/// they are written at its start and fsynced, then the file is renamed into place and the directory
/// (`dir_file`, kept open) fsynced. Opens nothing. A crash leaves either no new segment (the spare is
/// removed on open) or a complete one.
pub(crate) fn install_spare(
    dir: &Path,
    dir_file: &File,
    mut spare: File,
    seq: u64,
    first_index: u64,
    initial: &[u8],
) -> Result<(File, SegmentFile)> {
    let path = dir.join(file_name(seq, first_index));
    spare.seek(SeekFrom::Start(0))?;
    spare.write_all(initial)?;
    // sync_all, not sync_data: where preallocation is not supported the write grew the file.
    spare.sync_all()?;
    fs::rename(dir.join(SPARE_NAME), &path)?;
    dir_file.sync_all()?;
    Ok((
        spare,
        SegmentFile {
            path,
            seq,
            first_index,
        },
    ))
}

/// Where and why a scan stopped before the end of the log.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    /// Index into [`Scan::segments`] of the file holding the bad record.
    pub segment: usize,
    /// Byte offset of the start of the bad record in that file.
    pub offset: u64,
    /// True for a torn tail of the last segment (recovery may cut it); false for damage.
    pub torn: bool,
    /// What was wrong, for messages.
    pub reason: String,
}

/// The state rebuilt by replaying records in order.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The metadata record; every segment repeats it and all copies must agree.
    pub metadata: Option<Vec<u8>>,
    /// The last hard state read.
    pub hard_state: HardState,
    /// The last snapshot mark read.
    pub snapshot: SnapshotMark,
    /// Live entries above the snapshot mark and at or above `retain_from`, contiguous and ascending.
    pub entries: Vec<Entry>,
    /// Entries below this index are checked but not kept.
    pub retain_from: u64,
    /// Index and term of the last live entry above the mark and below `retain_from`.
    pub before_retained: Option<(u64, u64)>,
}

impl Replay {
    fn apply(&mut self, rec: Record) -> std::result::Result<(), String> {
        match rec {
            Record::Crc(_) => {}
            Record::Metadata(m) => match &self.metadata {
                None => self.metadata = Some(m),
                Some(earlier) if *earlier != m => {
                    return Err("metadata differs from an earlier segment's".to_string())
                }
                Some(_) => {}
            },
            Record::HardState(h) => self.hard_state = h,
            Record::Snapshot(s) => {
                if s.index < self.snapshot.index {
                    return Err(format!(
                        "snapshot mark at index {} goes back before the earlier mark at {}",
                        s.index, self.snapshot.index
                    ));
                }
                let keep_from = self.entries.partition_point(|e| e.index <= s.index);
                self.entries.drain(..keep_from);
                if self.before_retained.is_some_and(|(i, _)| i <= s.index) {
                    self.before_retained = None;
                }
                self.snapshot = s;
            }
            Record::Entry(e) => {
                if e.index <= self.snapshot.index {
                    // Already covered by the snapshot: a segment cut before the mark can start below it.
                    return Ok(());
                }
                let last = self
                    .entries
                    .last()
                    .map(|e| e.index)
                    .or(self.before_retained.map(|(i, _)| i));
                if let Some(last) = last.filter(|&last| e.index > last + 1) {
                    return Err(format!(
                        "entry {} does not follow entry {last}: the log has a gap",
                        e.index
                    ));
                }
                if e.index < self.retain_from {
                    // Raft truncated its log below the retained window: all of it is replaced.
                    self.entries.clear();
                    self.before_retained = Some((e.index, e.term));
                    return Ok(());
                }
                if let Some(first) = self.entries.first().map(|e| e.index) {
                    // Raft truncated its log: everything from this index on is replaced.
                    let keep = e.index.saturating_sub(first) as usize;
                    self.entries.truncate(keep);
                }
                self.entries.push(e);
            }
        }
        Ok(())
    }

    /// Index of the last entry the log holds (the snapshot mark's when no entry is above it).
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.before_retained.map(|(i, _)| i))
            .unwrap_or(self.snapshot.index)
            .max(self.snapshot.index)
    }
}

/// The result of reading a whole WAL directory.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every segment file, in sequence order.
    pub segments: Vec<SegmentFile>,
    /// Replayed state of every good record before `stop` (or of all records).
    pub replay: Replay,
    /// Crc of the last good record: the chain value the next record continues from.
    pub last_crc: u32,
    /// Offset just past the last good record of the last segment read.
    pub end: u64,
    /// Set when reading stopped at a torn or bad record.
    pub stop: Option<Stop>,
}

/// Reads every segment of `dir` in order, keeping the entries from `retain_from` on. Damage is
/// reported in [`Scan::stop`], never as an error; errors are I/O failures (or no segment at all).
pub(crate) fn scan(dir: &Path, retain_from: u64) -> Result<Scan> {
    let segments = list(dir)?;
    if segments.is_empty() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no WAL segments in {}", dir.display()),
        )));
    }
    let mut scan = Scan {
        segments,
        replay: Replay {
            retain_from,
            ..Replay::default()
        },
        last_crc: 0,
        end: 0,
        stop: None,
    };
    let count = scan.segments.len();
    for i in 0..count {
        if i > 0 && scan.segments[i].seq != scan.segments[i - 1].seq + 1 {
            scan.stop = Some(Stop {
                segment: i,
                offset: 0,
                torn: false,
                reason: format!(
                    "segment sequence {} is missing before this file",
                    scan.segments[i - 1].seq + 1
                ),
            });
            return Ok(scan);
        }
        let bytes = fs::read(&scan.segments[i].path)?;
        let last = i + 1 == count;
        if let Some((offset, torn, reason)) = read_segment(&bytes, i == 0, last, &mut scan)? {
            scan.stop = Some(Stop {
                segment: i,
                offset,
                torn,
                reason,
            });
            return Ok(scan);
        }
    }
    Ok(scan)
}

/// Replays one segment into `scan`. Returns where and why it stopped early, if it did.
fn read_segment(
    bytes: &[u8],
    first_segment: bool,
    last_segment: bool,
    scan: &mut Scan,
) -> Result<Option<(u64, bool, String)>> {
    let mut off = 0usize;
    scan.end = 0;
    while off < bytes.len() {
        let here = off as u64;
        let (ty, data, crc, end) = match record::decode_frame(bytes, off) {
            // Zeros where a record should start, then more bytes. If a whole record with an intact
            // header follows, records were written after the zeros: the zeros are damage in the
            // middle of the log, and cutting there could drop acknowledged entries. Otherwise the
            // bytes are a write whose first sector never reached the disk (a later one did):
            // unacknowledged, so a torn tail of the last segment. In an earlier segment, lost
            // records there would break the next segment's crc chain.
            Frame::Unused if off > 0 && !all_zero(&bytes[off..]) => {
                if let Some(at) = record_after(bytes, off) {
                    return Ok(Some((
                        here,
                        false,
                        format!("zeroed bytes where a record should start, with a record after them at byte offset {at}"),
                    )));
                }
                if last_segment {
                    return Ok(Some((
                        here,
                        true,
                        "non-zero bytes after an all-zero record header".to_string(),
                    )));
                }
                break;
            }
            Frame::Unused => break,
            // A torn first record would leave an empty segment: that is damage, not a tail to cut.
            Frame::Torn(reason) if last_segment && off > 0 => {
                return Ok(Some((here, true, reason)))
            }
            Frame::Torn(reason) => {
                return Ok(Some((
                    here,
                    false,
                    if last_segment {
                        format!("{reason}, at the start of the segment")
                    } else {
                        format!("{reason}, in a segment that is not the last")
                    },
                )))
            }
            // A header that straddles a sector boundary, with its second part and everything after
            // it still zero: the write's first sector landed, the next did not.
            Frame::Bad(reason) if last_segment && off > 0 && header_cut_at_sector(bytes, off) => {
                return Ok(Some((
                    here,
                    true,
                    format!("{reason}, with the header's second sector unwritten (zero)"),
                )))
            }
            Frame::Bad(reason) => return Ok(Some((here, false, reason))),
            Frame::Record { ty, data, crc, end } => (ty, data, crc, end),
        };
        let prev = if off == 0 {
            if ty != RecordType::Crc {
                return Ok(Some((
                    here,
                    false,
                    "segment does not start with a crc record".to_string(),
                )));
            }
            let carried = match record::decode_record(ty, data) {
                Ok(Record::Crc(c)) => c,
                Ok(_) => 0,
                Err(reason) => return Ok(Some((here, false, reason))),
            };
            if !first_segment && carried != scan.last_crc {
                return Ok(Some((
                    here,
                    false,
                    format!(
                        "crc chain broken: segment continues from {carried:08x} but the previous \
                         segment ended with {:08x}",
                        scan.last_crc
                    ),
                )));
            }
            carried
        } else {
            if ty == RecordType::Crc {
                return Ok(Some((
                    here,
                    false,
                    "crc record in the middle of a segment".to_string(),
                )));
            }
            scan.last_crc
        };
        if record::chain(prev, ty, data) != crc {
            let data_start = off + record::HEADER_LEN;
            if last_segment && off > 0 && unwritten_suffix(bytes, data_start, data.len(), end) {
                return Ok(Some((
                    here,
                    true,
                    "record checksum mismatch with its data ending in unwritten (zero) sectors"
                        .to_string(),
                )));
            }
            return Ok(Some((here, false, "record checksum mismatch".to_string())));
        }
        let rec = match record::decode_record(ty, data) {
            Ok(rec) => rec,
            Err(reason) => return Ok(Some((here, false, reason))),
        };
        if let Err(reason) = scan.replay.apply(rec) {
            return Ok(Some((here, false, reason)));
        }
        scan.last_crc = crc;
        off = end;
        scan.end = end as u64;
    }
    if off == 0 {
        return Ok(Some((0, false, "segment holds no records".to_string())));
    }
    Ok(None)
}

/// The offset of the first whole record with an intact header (its header check passes) at an
/// aligned offset after `from`, if any. A header check passes on random bytes once in 2^32.
fn record_after(bytes: &[u8], from: usize) -> Option<usize> {
    (from + record::ALIGN..bytes.len())
        .step_by(record::ALIGN)
        .find(|&at| matches!(record::decode_frame(bytes, at), Frame::Record { .. }))
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// True if the header at `off` crosses a sector boundary and every byte from that boundary to the end
/// of the file is zero. With 8-byte alignment only a header at 504 bytes past a boundary crosses one.
fn header_cut_at_sector(bytes: &[u8], off: usize) -> bool {
    let boundary = (off + 1).next_multiple_of(SECTOR);
    boundary < off + record::HEADER_LEN && all_zero(&bytes[boundary.min(bytes.len())..])
}

/// The torn-write rule for a record whose header is intact but whose chained checksum fails (the
/// caller only asks for a record of the last segment that is not its first): true if there is a
/// sector boundary `s` (a multiple of [`SECTOR`] by file offset) with `data_start <= s < data end`
/// such that every byte from `s` to the end of the file is zero. That is what a crash in the middle of
/// writing into preallocated (zero) space leaves: the sectors from some point on never reached the
/// disk and still read as zeros, and nothing was written after them. A flipped bit, or a zeroed
/// sector with written bytes after it, does not match and stays damage.
fn unwritten_suffix(bytes: &[u8], data_start: usize, data_len: usize, end: usize) -> bool {
    if !all_zero(&bytes[end..]) {
        return false;
    }
    // The header is non-zero, so there is a last non-zero byte and it is at or after the header.
    let Some(last_non_zero) = bytes[..end].iter().rposition(|&b| b != 0) else {
        return false;
    };
    let first_zero_sector = (last_non_zero + 1).max(data_start).next_multiple_of(SECTOR);
    first_zero_sector < data_start + data_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = file_name(3, 0x1234);
        assert_eq!(name, "0000000000000003-0000000000001234.wal");
        assert_eq!(parse_name(&name), Some((3, 0x1234)));
        assert_eq!(
            parse_name("0000000000000003-0000000000001234.wal.broken"),
            None
        );
        assert_eq!(
            parse_name("0000000000000003-0000000000001234.wal.tmp"),
            None
        );
        assert_eq!(parse_name("3-1.wal"), None);
    }

    #[test]
    fn replay_applies_overwrites_and_snapshot_marks() {
        let entry = |index, term| Entry {
            index,
            term,
            ..Default::default()
        };
        let mut r = Replay::default();
        for i in 1..=5 {
            r.apply(Record::Entry(entry(i, 1))).unwrap();
        }
        r.apply(Record::Entry(entry(3, 2))).unwrap();
        let got: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 2)]);
        assert!(r.apply(Record::Entry(entry(5, 2))).is_err());
        r.apply(Record::Snapshot(SnapshotMark {
            index: 2,
            term: 1,
            ..Default::default()
        }))
        .unwrap();
        let got: Vec<u64> = r.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![3]);
        // An entry the snapshot covers is ignored.
        r.apply(Record::Entry(entry(2, 1))).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.last_index(), 3);
    }

    #[test]
    fn unwritten_suffix_needs_a_zero_sector_inside_the_data_and_zeros_after() {
        // A record at 400 with data 416..1400, padding to 1400, then zero space to 2048.
        let mut bytes = vec![0u8; 2048];
        bytes[400..1400].fill(7);
        // Intact data: no zero sector.
        assert!(!unwritten_suffix(&bytes, 416, 984, 1400));
        // Zeros from the sector boundary at 1024 on: torn.
        bytes[1024..1400].fill(0);
        assert!(unwritten_suffix(&bytes, 416, 984, 1400));
        // Zeros from 1030, not a sector boundary, and no sector boundary after it inside the data.
        bytes[1024..1030].fill(7);
        assert!(!unwritten_suffix(&bytes, 416, 984, 1400));
        // Zero data from 600 on contains the boundary at 1024: torn.
        bytes[600..1400].fill(0);
        assert!(unwritten_suffix(&bytes, 416, 984, 1400));
        // But not if anything non-zero follows the record.
        bytes[2000] = 1;
        assert!(!unwritten_suffix(&bytes, 416, 984, 1400));
    }
}
