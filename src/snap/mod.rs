//! Snapshots: when the applied state becomes the new starting point of the log.
//!
//! mini-etcd's snapshot is its backend: the redb file holds every key-value revision together with the
//! consistent index it covers. Taking a snapshot at index `i` therefore means (1) committing the backend
//! durably, so its consistent index is at least `i`, (2) writing a snapshot mark `{i, term, ConfState}`
//! to the WAL, and (3) removing the WAL segments whose entries all lie at or below `i`. A restart reads
//! the mark, rebuilds Raft's storage from it and replays only the entries after the backend's consistent
//! index. This module holds the policy of when to do that; the Raft loop and the apply step do the steps.
//!
//! Shipping the backend to a follower that fell behind the log is `peer`'s (etcd's `.snap.db`
//! transfer); the temporary copies every transfer sends from are bounded and accounted in [`copies`].
//!
//! A client's snapshot (`etcdctl snapshot save`) is a different thing: a file in etcd's own format,
//! a bbolt database of etcd's buckets plus a SHA-256, so etcd's tools and etcd itself read ours and
//! we read theirs. [`bbolt`] writes and reads the container, [`etcd_format`] maps etcd's buckets to
//! our tables and back (and computes `snapshot status`), [`restore`] builds a data directory from
//! such a file. The format is described in `docs/snapshot-format.md`.
//!
//! Left out: keeping older snapshot files.

pub mod bbolt;
pub mod copies;
pub mod etcd_format;
pub mod restore;

/// Every `count` applied entries, take a snapshot (etcd's `--snapshot-count`).
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// Entries between snapshots.
    count: u64,
    /// The applied index of the last snapshot (at start, the WAL's last snapshot mark).
    last: u64,
}

impl SnapshotPolicy {
    /// A policy that snapshots every `count` entries, counting from `start_index`.
    pub fn new(count: u64, start_index: u64) -> SnapshotPolicy {
        SnapshotPolicy {
            count: count.max(1),
            last: start_index,
        }
    }

    /// True when `applied` is `count` or more entries past the last snapshot.
    pub fn due(&self, applied: u64) -> bool {
        applied.saturating_sub(self.last) >= self.count
    }

    /// Records that a snapshot was taken at `applied`.
    pub fn taken(&mut self, applied: u64) {
        self.last = applied;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_every_count_entries() {
        let mut p = SnapshotPolicy::new(100, 5);
        assert!(!p.due(104));
        assert!(p.due(105));
        p.taken(105);
        assert!(!p.due(204));
        assert!(p.due(300));
    }
}
