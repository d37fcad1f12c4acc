//! Maintenance of one member: status, hashes, defragmentation, snapshots of the backend, membership
//! as far as a single member knows it.
//!
//! None of this goes through Raft: each call looks at (or rewrites) this member's backend only, as in
//! etcd. The backend does the heavy lifting (`mvcc/backend.rs`: consistent copies and defragmentation
//! that never stop reads); this file adds the server's view and etcd's framing.
//!
//! # Snapshots and restoring them
//!
//! [`Server::snapshot`] streams a consistent copy of the backend: the backend is committed, and one
//! redb read transaction of the live backend is written, in etcd's format, into a temporary file
//! beside the data (`member/db.snapshot.*.tmp`, the only file the call writes; bounded, accounted
//! and removed as `snap/copies.rs` describes). That file is sent in 32 KiB chunks whose
//! `remaining_bytes` counts down to 0, followed, as etcd does since 3.x, by one last chunk holding
//! the SHA-256 of everything sent before it (also with `remaining_bytes` 0). `etcdctl snapshot save`
//! writes the whole stream, trailer included, to a file.
//!
//! The file is etcd's: a bbolt database holding etcd's buckets (`snap/etcd_format.rs`), so `etcdctl
//! snapshot status` and `etcdctl snapshot restore` read it and real etcd starts from what they
//! restore. Because every bucket comes from the one read transaction, the file is one commit's
//! state: the consistent index in its `meta` bucket covers exactly the records beside it, however
//! many writes the member commits while the file is written. (Meanwhile redb keeps the pages that
//! transaction reads, so commits grow the backend file rather than reuse them, as etcd's bbolt file
//! grows under its snapshot's read transaction.) `mini-etcd snapshot restore` reads it too (and
//! etcd's own snapshots): it builds a data directory whose `member/db` is our redb backend; the
//! server started there finds no WAL, creates one, and because the backend's consistent index is
//! ahead of it, the log restarts from the backend as its snapshot (the same path as after
//! `mini-etcd repair`). The member keeps the id and cluster id of its own configuration, not those
//! of the member the snapshot came from.
//!
//! Left out: streaming without a file. The bbolt writer lays out each bucket's branch pages after
//! its leaves and the meta pages last, and the first chunk must already say how many bytes follow.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::mvcc::backend::DefragStats;
use crate::mvcc::store::KvHash;
use crate::proto::etcdserverpb::{Member, SnapshotResponse, StatusResponse};
use crate::server::Server;
use crate::snap::copies::{send_within, SnapshotCopy};

/// Bytes per snapshot chunk (etcd: 32 KiB, several OS pages).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// Numbers the temporary snapshot files of this process.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Server {
    /// etcd's Status for this member, with `version` filled by the caller's API level.
    pub fn maintenance_status(&self, version: &str) -> Result<StatusResponse> {
        let st = self.status();
        let backend = self.shared().store.backend();
        let mut errors = Vec::new();
        if st.leader == 0 {
            errors.push(Error::NoLeader.to_string());
        }
        errors.extend(self.shared().alarms.status_errors());
        Ok(StatusResponse {
            header: Some(self.header(st.revision)),
            version: version.to_string(),
            db_size: st.db_size as i64,
            leader: st.leader,
            raft_index: st.committed_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            db_size_in_use: backend.size_in_use()? as i64,
            is_learner: self
                .shared()
                .members
                .member(self.shared().member_id)
                .is_some_and(|m| m.is_learner),
            db_size_quota: self.quota_backend_bytes() as i64,
            ..Default::default()
        })
    }

    /// etcd's Hash: CRC32-C of the whole backend, and the revision it covers.
    pub async fn hash(&self) -> Result<(u32, i64)> {
        let store = self.shared().store.clone();
        blocking(move || store.hash()).await
    }

    /// etcd's HashKV at `revision` (0 = current).
    pub async fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let store = self.shared().store.clone();
        blocking(move || store.hash_kv(revision)).await
    }

    /// etcd's Defragment: rewrites the backend file compactly; reads and writes go on meanwhile.
    pub async fn defragment(&self) -> Result<DefragStats> {
        let backend = self.shared().store.backend().clone();
        blocking(move || backend.defragment()).await
    }

    /// etcd's Snapshot: a stream of chunks of a consistent copy of the backend in etcd's format,
    /// then the SHA-256 trailer (see the module docs). Refused with `too many requests` while
    /// `--max-snapshot-copies` calls hold copies. The copy is written before this returns; it is
    /// removed when the stream ends, fails, is dropped, or its reader takes no chunk for
    /// `--snapshot-send-timeout`. A stream that ends early for any reason but the client going away
    /// ends with an error, never a clean end.
    pub async fn snapshot(&self) -> Result<SnapshotStream> {
        let copies = &self.shared().snapshot_copies;
        let slot = copies.client_slot()?;
        let backend = self.shared().store.backend().clone();
        let path = self.config().data_dir.join("member").join(format!(
            "db.snapshot.{}.{}.tmp",
            std::process::id(),
            SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let copy = copies.start(path, backend.size_bytes().unwrap_or(0), Some(slot));
        // The copy moves into the blocking task and back: if this call is dropped while the file is
        // being written, the file stays accounted until the writing stops, and is removed then.
        let (copy, total) = blocking(move || write_copy(&backend, copy)).await?;
        tracing::info!(bytes = total, "sending a snapshot in etcd's format");
        let timeout = copies.send_timeout();
        let (tx, rx) = mpsc::channel(4);
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        tokio::spawn(async move {
            let result = send_copy(copy.path(), total, &tx, timeout).await;
            if let Err(e) = result {
                if matches!(e, Error::Timeout) {
                    tracing::warn!(
                        timeout_ms = timeout.as_millis() as u64,
                        "snapshot client took no data within --snapshot-send-timeout: \
                         abandoning the transfer and removing its copy"
                    );
                } else {
                    tracing::warn!(error = %e, "sending a snapshot failed");
                }
                // Set before `tx` is dropped, so the stream sees it before it sees the end.
                *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            }
            drop(copy);
        });
        Ok(SnapshotStream {
            rx,
            failure,
            ended: false,
        })
    }

    /// This member as etcd's MemberList shows it.
    pub fn member(&self) -> Member {
        let me = self.shared().member_id;
        match self.shared().members.member(me) {
            Some(m) => crate::server::membership::to_etcd(&m),
            None => Member {
                id: me,
                name: self.config().name.clone(),
                ..Default::default()
            },
        }
    }
}

/// Writes the backend's committed state into `copy`'s file as etcd's snapshot file (a bbolt
/// database, see `snap/etcd_format.rs`) and accounts the copy at the file's size, which it returns.
/// The file is written straight from one [`ReadView`] of the live backend, so it is one commit's
/// state (records, leases, auth, membership and the consistent index they cover), and it is the
/// only file written: nothing else on disk needs accounting.
///
/// [`ReadView`]: crate::mvcc::backend::ReadView
fn write_copy(
    backend: &crate::mvcc::Backend,
    mut copy: SnapshotCopy,
) -> Result<(SnapshotCopy, u64)> {
    let view = backend.read_view()?;
    let total = crate::snap::etcd_format::export(&view, copy.path())?;
    drop(view);
    copy.settle(total);
    Ok((copy, total))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("maintenance task failed: {e}")))?
}

/// The chunks of a client's snapshot (see [`Server::snapshot`]).
pub struct SnapshotStream {
    /// Chunks from the sending task.
    rx: mpsc::Receiver<SnapshotResponse>,
    /// Why the sending task gave up, if it did; yielded ahead of any chunk still queued.
    failure: Arc<Mutex<Option<Error>>>,
    /// Set once an error was yielded: nothing follows it.
    ended: bool,
}

impl SnapshotStream {
    fn take_failure(&mut self) -> Option<Error> {
        let e = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.ended |= e.is_some();
        e
    }
}

impl futures::Stream for SnapshotStream {
    type Item = Result<SnapshotResponse>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(e) = self.take_failure() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(chunk))),
            // The sender is gone: finished, or failed (it records why before it goes).
            Poll::Ready(None) => Poll::Ready(self.take_failure().map(Err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Streams the copy at `path` (`total` bytes) in chunks, then the SHA-256 trailer. Reading and
/// hashing run on a blocking thread a chunk at a time; no thread waits on the client. Ends quietly
/// when the client went away, with `Error::Timeout` when it took no chunk within `timeout`.
/// No chunk carries a header, as in etcd 3.4.
async fn send_copy(
    path: &Path,
    total: u64,
    tx: &mpsc::Sender<SnapshotResponse>,
    timeout: Duration,
) -> Result<()> {
    let mut reader = Some((File::open(path)?, Sha256::new()));
    let mut sent = 0u64;
    while sent < total {
        let want = SNAPSHOT_CHUNK_BYTES.min((total - sent) as usize);
        let (mut file, mut sha) = reader
            .take()
            .ok_or_else(|| Error::Internal("snapshot reader lost".into()))?;
        let (buf, file, sha) = blocking(move || {
            let mut buf = vec![0u8; want];
            file.read_exact(&mut buf)?;
            sha.update(&buf);
            Ok((buf, file, sha))
        })
        .await?;
        reader = Some((file, sha));
        sent += want as u64;
        let chunk = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: buf,
            ..Default::default()
        };
        if !send_within(tx, chunk, timeout).await? {
            return Ok(());
        }
    }
    let (_, sha) = reader.ok_or_else(|| Error::Internal("snapshot reader lost".into()))?;
    let trailer = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec(),
        ..Default::default()
    };
    send_within(tx, trailer, timeout).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::backend::{Backend, Table};
    use crate::mvcc::kv::KeyValue;
    use crate::mvcc::revision::Revision;
    use crate::snap::copies::SnapshotCopies;
    use prost::Message;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    /// While a client's copy of a few MiB is written, the member directory holds the backend and
    /// that one file, nothing else at any moment; the copies' accounting is then the file's size.
    #[test]
    fn a_client_copy_is_one_file_accounted_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let member = dir.path().join("member");
        let backend = Backend::open(&member.join("db")).unwrap();
        for i in 0..4000i64 {
            let kv = KeyValue {
                key: format!("k/{i:05}").into_bytes(),
                value: vec![b'v'; 1024],
                create_revision: i + 2,
                mod_revision: i + 2,
                version: 1,
                lease: 0,
            };
            let rev = Revision::new(i + 2, 0).to_bytes(false);
            backend.put(Table::Key, &rev, &kv.encode_to_vec());
        }
        backend.put(Table::Meta, b"consistent_index", &4001u64.to_be_bytes());
        backend.commit().unwrap();

        let copies = SnapshotCopies::new(1, Duration::from_secs(1));
        let slot = copies.client_slot().unwrap();
        let path = member.join("db.snapshot.1.0.tmp");
        let copy = copies.start(path.clone(), backend.size_bytes().unwrap(), Some(slot));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (done, member) = (done.clone(), member.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    for entry in std::fs::read_dir(&member).unwrap().flatten() {
                        seen.insert(entry.file_name().to_string_lossy().into_owned());
                    }
                    if finished {
                        return seen;
                    }
                }
            })
        };
        let (copy, total) = write_copy(&backend, copy).unwrap();
        done.store(true, Ordering::Release);
        let seen = watcher.join().unwrap();
        assert_eq!(
            seen,
            BTreeSet::from(["db".to_string(), "db.snapshot.1.0.tmp".to_string()]),
            "files beside the backend while the copy was written"
        );
        assert!(total > 4_000_000, "{total} bytes");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), total);
        assert_eq!(copies.bytes(), total, "accounted: the one file");
        drop(copy);
        assert_eq!(copies.bytes(), 0);
        assert!(!path.exists());
    }

    #[test]
    fn member_urls_print_without_trailing_slash() {
        use crate::config::url_text;
        let u = url::Url::parse("http://127.0.0.1:2379").unwrap();
        assert_eq!(url_text(&u), "http://127.0.0.1:2379");
        let u = url::Url::parse("http://127.0.0.1:2379/x").unwrap();
        assert_eq!(url_text(&u), "http://127.0.0.1:2379/x");
    }
}
