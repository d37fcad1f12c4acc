//! Maintenance of one member: status, hashes, defragmentation, snapshots of the backend, membership
//! as far as a single member knows it.
//!
//! None of this goes through Raft: each call looks at (or rewrites) this member's backend only, as in
//! etcd. The backend does the heavy lifting (`mvcc/backend.rs`: consistent copies and defragmentation
//! that never stop reads); this file adds the server's view and etcd's framing.
//!
//! # Snapshots and restoring them
//!
//! [`Server::snapshot`] streams a consistent copy of the backend: the backend is committed, copied
//! from one redb read transaction into a temporary file beside the data (`member/db.snapshot.*.tmp`;
//! bounded, accounted and removed as `snap/copies.rs` describes), and that file is sent in 32 KiB
//! chunks whose `remaining_bytes` counts down to 0, followed, as etcd
//! does since 3.x, by one last chunk holding the SHA-256 of everything sent before it (also with
//! `remaining_bytes` 0). `etcdctl snapshot save` writes the whole stream, trailer included, to a file.
//!
//! The file is etcd's: a bbolt database holding etcd's buckets (`snap/etcd_format.rs`), built from
//! one redb read transaction, so `etcdctl snapshot status` and `etcdctl snapshot restore` read it and
//! real etcd starts from what they restore. `mini-etcd snapshot restore` reads it too (and etcd's own
//! snapshots): it builds a data directory whose `member/db` is our redb backend; the server started
//! there finds no WAL, creates one, and because the backend's consistent index is ahead of it, the
//! log restarts from the backend as its snapshot (the same path as after `mini-etcd repair`). The
//! member keeps the id and cluster id of its own configuration, not those of the member the
//! snapshot came from.
//!
//! [`prepare_restored_db`] keeps the older way working: a redb backend file (an earlier mini-etcd's
//! snapshot) placed as `member/db` of a fresh data directory has its SHA-256 trailer checked and
//! stripped at start.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::mvcc::backend::DefragStats;
use crate::mvcc::store::KvHash;
use crate::proto::etcdserverpb::{Member, SnapshotResponse, StatusResponse};
use crate::server::Server;
use crate::snap::copies::send_within;

/// Bytes per snapshot chunk (etcd: 32 KiB, several OS pages).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Length of the SHA-256 trailer etcd appends to a snapshot.
pub const SHA256_BYTES: usize = 32;

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

    /// etcd's Snapshot: a stream of chunks of a consistent copy of the backend, then the SHA-256
    /// trailer (see the module docs). Refused with `too many requests` while `--max-snapshot-copies`
    /// calls hold copies. The copy is taken before this returns; it is removed when the stream ends,
    /// fails, is dropped, or its reader takes no chunk for `--snapshot-send-timeout`. A stream that
    /// ends early for any reason but the client going away ends with an error, never a clean end.
    pub async fn snapshot(&self) -> Result<SnapshotStream> {
        let copies = &self.shared().snapshot_copies;
        let slot = copies.client_slot()?;
        let backend = self.shared().store.backend().clone();
        let path = self.config().data_dir.join("member").join(format!(
            "db.snapshot.{}.{}.tmp",
            std::process::id(),
            SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut copy = copies.start(path, backend.size_bytes().unwrap_or(0), Some(slot));
        let dest = copy.path().to_path_buf();
        let total = blocking(move || etcd_snapshot(&backend, &dest)).await?;
        copy.settle(total);
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

/// Writes the backend's committed state to `dest` as etcd's snapshot file (a bbolt database, see
/// `snap/etcd_format.rs`); returns its size. The state is first copied, consistently, from one redb
/// read transaction into a redb file beside `dest` (so the live backend is never held while the
/// slower conversion runs, and the state is exactly one commit's: records, leases, auth, membership
/// and the consistent index they cover); that intermediate copy is removed before this returns.
fn etcd_snapshot(backend: &crate::mvcc::Backend, dest: &Path) -> Result<u64> {
    let mut name = dest.as_os_str().to_owned();
    // Still `db.snapshot.*.tmp`, so a crash leaves nothing `remove_stale` does not recognise.
    name.push(".redb.tmp");
    let redb_copy = std::path::PathBuf::from(name);
    let result = backend.snapshot_to(&redb_copy).and_then(|_| {
        let copy = crate::mvcc::Backend::open(&redb_copy)?;
        crate::snap::etcd_format::export(&copy, dest)
    });
    if let Err(e) = std::fs::remove_file(&redb_copy) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %redb_copy.display(), error = %e, "cannot remove a snapshot copy");
        }
    }
    result
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
        blob: sha.finish().to_vec(),
        ..Default::default()
    };
    send_within(tx, trailer, timeout).await?;
    Ok(())
}

/// Before a start on a data directory without a WAL: if `db` ends in a SHA-256 of the rest of it
/// (a snapshot saved by `etcdctl snapshot save`), strip that trailer so redb can open the file. A file
/// whose last 32 bytes are not such a hash is left alone (a plain database file).
pub fn prepare_restored_db(db: &Path) -> Result<()> {
    let len = match std::fs::metadata(db) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if len <= SHA256_BYTES as u64 {
        return Ok(());
    }
    let body = len - SHA256_BYTES as u64;
    let mut file = File::open(db)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body;
    while left > 0 {
        let n = buf.len().min(left as usize);
        file.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; SHA256_BYTES];
    file.read_exact(&mut trailer)?;
    if sha.finish() != trailer {
        return Ok(());
    }
    tracing::info!(
        db = %db.display(),
        bytes = body,
        "restoring from a snapshot: its sha256 checksum matches; stripping it"
    );
    let f = File::options().write(true).open(db)?;
    f.set_len(body)?;
    f.sync_all()?;
    Ok(())
}

/// SHA-256 (FIPS 180-4), for the snapshot trailer etcd clients check. Small and self-contained; speed
/// is not a concern next to the disk reads it accompanies.
pub struct Sha256 {
    /// The chaining state.
    h: [u32; 8],
    /// Bytes of an unfinished block.
    block: [u8; 64],
    /// How many of `block` are filled.
    filled: usize,
    /// Total bytes hashed.
    len: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Sha256 {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            len: 0,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let n = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 64 {
                let block = self.block;
                self.compress(&block);
                self.filled = 0;
            }
        }
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        let mut block = self.block;
        block[56..].copy_from_slice(&bits.to_be_bytes());
        self.compress(&block);
        let mut out = [0u8; 32];
        for (o, h) in out.chunks_exact_mut(4).zip(self.h) {
            o.copy_from_slice(&h.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.h.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// Writes `bytes` followed by their SHA-256, as `etcdctl snapshot save` stores a snapshot (tests).
pub fn write_with_sha256(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut sha = Sha256::new();
    sha.update(bytes);
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.write_all(&sha.finish())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sha(data: &[u8]) -> String {
        let mut s = Sha256::new();
        s.update(data);
        hex(&s.finish())
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Fed in odd pieces: the same digest.
        let data = vec![7u8; 1000];
        let mut s = Sha256::new();
        for c in data.chunks(13) {
            s.update(c);
        }
        assert_eq!(hex(&s.finish()), sha(&data));
    }

    #[test]
    fn restored_db_trailer_is_checked_and_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let body = vec![42u8; 5000];
        write_with_sha256(&db, &body).unwrap();
        prepare_restored_db(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), body, "trailer stripped");
        // No trailer: left alone (a second call changes nothing).
        prepare_restored_db(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), body);
        prepare_restored_db(&dir.path().join("missing")).unwrap();
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
