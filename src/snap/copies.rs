//! Temporary copies of the backend that snapshots are sent from: how many may exist, how many bytes
//! they hold on disk, and that none outlives its transfer or the process.
//!
//! Every transfer writes one temporary file from one redb read transaction of the live backend and
//! streams that: a client's Snapshot call writes etcd's bbolt format (`server/maintenance.rs`), a
//! follower that fell behind the log is sent a redb copy (`peer`). Each transfer has exactly that
//! one file on disk, and it is what this module keeps bounded and visible:
//!
//! - **Bounded.** A client's Snapshot call takes one of `--max-snapshot-copies` slots for as long as its
//!   copy exists; with none free the call is refused at once with etcd's `too many requests`. Copies for
//!   followers take no slot, so clients can never starve a follower of its snapshot: Raft sends each
//!   follower at most one at a time, which bounds them by the cluster size.
//! - **Accounted.** Every copy counts in [`SnapshotCopies::bytes`], reserved at the backend's size
//!   before the copy starts (a copy holds no free pages, so it is about that size or less) and
//!   settled to the file's real size once written.
//!   The space quota adds this to the backend's size (`server/alarm.rs`).
//! - **Removed.** A [`SnapshotCopy`] deletes its file and releases its bytes and slot when dropped:
//!   when the transfer ends, fails, or is abandoned because the receiver stopped reading for
//!   `--snapshot-send-timeout`. Files left by a process that died mid-transfer are removed at the next
//!   start ([`remove_stale`]); nothing is in flight then.
//!
//! Left out: streaming without a file (both formats are laid out with pages written last that the
//! first bytes point to, and the first chunk must say how many bytes follow).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Default of `--max-snapshot-copies`.
pub const DEFAULT_MAX_SNAPSHOT_COPIES: u64 = 2;

/// The copies of one member.
#[derive(Debug)]
pub struct SnapshotCopies {
    /// Slots of clients' Snapshot calls (`--max-snapshot-copies`).
    client_slots: Arc<Semaphore>,
    /// Bytes the live copies hold or have reserved on disk.
    bytes: Arc<AtomicU64>,
    /// How long a transfer waits for its receiver to take the next chunk before it gives up.
    send_timeout: Duration,
}

impl SnapshotCopies {
    /// Copies for a member allowing `max_client` concurrent client snapshots.
    pub fn new(max_client: usize, send_timeout: Duration) -> SnapshotCopies {
        SnapshotCopies {
            client_slots: Arc::new(Semaphore::new(max_client)),
            bytes: Arc::new(AtomicU64::new(0)),
            send_timeout,
        }
    }

    /// A slot for a client's snapshot, or etcd's `too many requests` when all are taken.
    pub fn client_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.client_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyRequests)
    }

    /// Registers a copy about to be written to `path`, reserving `reserve` bytes for it; `slot` is
    /// held until the copy is dropped.
    pub fn start(
        &self,
        path: PathBuf,
        reserve: u64,
        slot: Option<OwnedSemaphorePermit>,
    ) -> SnapshotCopy {
        self.bytes.fetch_add(reserve, Ordering::Relaxed);
        SnapshotCopy {
            path,
            accounted: reserve,
            total: self.bytes.clone(),
            _slot: slot,
        }
    }

    /// Bytes of the live copies (reserved, for copies still being written).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How long a transfer waits for its receiver to take a chunk (`--snapshot-send-timeout`).
    pub fn send_timeout(&self) -> Duration {
        self.send_timeout
    }
}

/// One temporary copy: its file is removed and its bytes and slot released when this is dropped.
#[derive(Debug)]
pub struct SnapshotCopy {
    /// The copy's file.
    path: PathBuf,
    /// The bytes it adds to [`SnapshotCopies::bytes`].
    accounted: u64,
    /// The member's total.
    total: Arc<AtomicU64>,
    /// The client's slot, if the copy is for a client.
    _slot: Option<OwnedSemaphorePermit>,
}

impl SnapshotCopy {
    /// The copy's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accounts the copy at its real size, `bytes`, once it is written.
    pub fn settle(&mut self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_sub(self.accounted, Ordering::Relaxed);
        self.accounted = bytes;
    }
}

impl Drop for SnapshotCopy {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a snapshot copy");
            }
        }
        self.total.fetch_sub(self.accounted, Ordering::Relaxed);
    }
}

/// Hands `item` to a transfer's receiver, waiting at most `timeout` for room: `Ok(true)` once
/// queued, `Ok(false)` if the receiver is gone, `Error::Timeout` if it took nothing for that long
/// (it stopped reading; the caller gives up and drops its copy).
pub async fn send_within<T>(
    tx: &tokio::sync::mpsc::Sender<T>,
    item: T,
    timeout: Duration,
) -> Result<bool> {
    match tokio::time::timeout(timeout, tx.send(item)).await {
        Ok(sent) => Ok(sent.is_ok()),
        Err(_) => Err(Error::Timeout),
    }
}

/// True for the names of temporary files a snapshot or defragmentation writes in `member/` or
/// `member/snap/`: client copies `db.snapshot.*.tmp`, a defragmentation's `db.defrag`, copies for a
/// follower `send-*.db` and snapshots received from a leader `recv-*.db` (installed by renaming them
/// over `db` in the same process, so one still there at start was never installed).
fn is_temporary(name: &str) -> bool {
    (name.starts_with("db.snapshot.") && name.ends_with(".tmp"))
        || name == "db.defrag"
        || ((name.starts_with("send-") || name.starts_with("recv-")) && name.ends_with(".db"))
}

/// Removes the temporary snapshot files a previous process left in `member_dir` and its `snap/`;
/// returns how many. Call before anything can start a transfer.
pub fn remove_stale(member_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for dir in [member_dir.to_path_buf(), member_dir.join("snap")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_temporary(name) || !entry.file_type()?.is_file() {
                continue;
            }
            std::fs::remove_file(entry.path())?;
            tracing::info!(path = %entry.path().display(), "removed a stale snapshot file");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_bounded_accounted_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let copies = SnapshotCopies::new(1, Duration::from_secs(1));
        let slot = copies.client_slot().unwrap();
        assert!(matches!(copies.client_slot(), Err(Error::TooManyRequests)));
        let path = dir.path().join("db.snapshot.1.0.tmp");
        let mut copy = copies.start(path.clone(), 1000, Some(slot));
        assert_eq!(copies.bytes(), 1000);
        std::fs::write(&path, [0u8; 10]).unwrap();
        copy.settle(10);
        assert_eq!(copies.bytes(), 10);
        drop(copy);
        assert_eq!(copies.bytes(), 0);
        assert!(!path.exists());
        assert!(copies.client_slot().is_ok(), "the slot came back");
    }

    #[test]
    fn stale_files_are_recognised() {
        for name in [
            "db.snapshot.123.0.tmp",
            "db.defrag",
            "send-0000000000000010-3.db",
            "recv-0000000000000010-77.db",
        ] {
            assert!(is_temporary(name), "{name}");
        }
        for name in ["db", "mini-etcd.lock", "wal", "db.snapshot", "send-1.wal"] {
            assert!(!is_temporary(name), "{name}");
        }
    }
}
