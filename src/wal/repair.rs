//! Offline repair: cut the log at its first bad record, keeping copies of whatever is dropped.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::segment;
use crate::error::Result;

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The segment holding the first bad record.
    pub file: PathBuf,
    /// Byte offset of that record: the file now ends here (or was moved aside if it was 0).
    pub offset: u64,
    /// Bytes dropped in total: the damaged file's tail plus every later segment.
    pub bytes_dropped: u64,
    /// Why the record was bad.
    pub reason: String,
    /// The `.broken` copies left behind for inspection.
    pub broken_copies: Vec<PathBuf>,
}

/// Repairs the WAL in `dir` so that [`super::Wal::open`] succeeds, dropping the first bad record and
/// everything after it. The damaged segment is copied to `<name>.broken` and truncated at the bad
/// record (moved aside entirely if the record is its first); later segments are moved aside as
/// `.broken` files. Returns `None` when there was nothing to repair.
pub fn repair(dir: &Path) -> Result<Option<RepairReport>> {
    segment::remove_tmp_files(dir)?;
    // Only where the damage is matters here: no entry is kept in memory.
    let scan = segment::scan(dir, u64::MAX)?;
    let Some(stop) = scan.stop else {
        return Ok(None);
    };
    let damaged = &scan.segments[stop.segment];
    let len = fs::metadata(&damaged.path)?.len();
    let mut bytes_dropped = len.saturating_sub(stop.offset);
    let mut broken_copies = Vec::new();
    if stop.offset == 0 {
        // Nothing good in the file: a zero-length segment would itself be damage.
        let to = broken_name(&damaged.path);
        fs::rename(&damaged.path, &to)?;
        broken_copies.push(to);
    } else {
        let to = broken_name(&damaged.path);
        fs::copy(&damaged.path, &to)?;
        OpenOptions::new().write(true).open(&to)?.sync_all()?;
        broken_copies.push(to);
        let file = OpenOptions::new().write(true).open(&damaged.path)?;
        file.set_len(stop.offset)?;
        file.sync_all()?;
    }
    for later in &scan.segments[stop.segment + 1..] {
        bytes_dropped += fs::metadata(&later.path)?.len();
        let to = broken_name(&later.path);
        fs::rename(&later.path, &to)?;
        broken_copies.push(to);
    }
    segment::sync_dir(dir)?;
    tracing::warn!(
        path = %damaged.path.display(),
        offset = stop.offset,
        bytes_dropped,
        reason = %stop.reason,
        "repaired WAL: dropped the first bad record and everything after it"
    );
    Ok(Some(RepairReport {
        file: damaged.path.clone(),
        offset: stop.offset,
        bytes_dropped,
        reason: stop.reason,
        broken_copies,
    }))
}

/// `<path>.broken`, or `<path>.broken.N` if earlier repairs already left copies.
fn broken_name(path: &Path) -> PathBuf {
    let base = format!("{}.broken", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}
