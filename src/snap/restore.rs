//! `mini-etcd snapshot restore`: a new data directory from a snapshot in etcd's format.
//!
//! Guarantees: the snapshot's SHA-256 is checked before anything is written (a file without one is
//! refused unless the caller skips the check, as `etcdctl snapshot restore` does), and the data
//! directory appears whole or not at all. Everything is built in a hidden directory beside the
//! target (same parent, so same file system), committed and fsynced, then renamed into place and the
//! parent directory fsynced. A failure removes the hidden directory; an existing target is never
//! touched.
//!
//! What the directory holds: `member/db`, our redb backend with every revision, tombstone,
//! compaction mark, lease, user, role and alarm of the snapshot, its consistent index, and the
//! membership of the restoring member's flags; and whatever the caller's `finish` step adds before
//! the rename (the binary has the server write a new WAL for that membership,
//! `server::bootstrap_restored`). At the first start, the backend's consistent index is ahead of
//! that WAL, so the log restarts from the backend (`server/maintenance.rs`). The server must be
//! started with the same cluster flags the restore was given, as etcd's restored members must.
//!
//! [`prepare_restored_db`] keeps an older way working: a redb backend file with etcd's SHA-256
//! trailer (what an earlier mini-etcd streamed, saved by `etcdctl snapshot save`) placed by hand as
//! `member/db` of a data directory without a WAL has the trailer checked and stripped at start. It
//! checks the trailer with the same code as [`restore`] (`etcd_format::read_trailer`).
//!
//! Left out: etcd's v2 store and WAL from the snapshot's member (a v3 snapshot has neither).

use std::path::{Path, PathBuf};

use prost::Message;

use super::bbolt::Reader;
use super::etcd_format::{self, Imported};
use crate::error::{Error, Result};
use crate::mvcc::backend::{Backend, Table};
use crate::proto::peerpb;

/// `meta` key of our membership record (see `server/membership.rs`).
const META_MEMBERS: &[u8] = b"members";

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The snapshot file (`etcdctl snapshot save` output, or ours).
    pub snapshot: PathBuf,
    /// The data directory to create; it must not exist.
    pub data_dir: PathBuf,
    /// Restore a file without a SHA-256 trailer (a copied `member/snap/db`).
    pub skip_hash_check: bool,
    /// The membership the restored member starts with (from its cluster flags).
    pub members: peerpb::Members,
}

/// Restores `opts.snapshot` into `opts.data_dir` (see the module docs). `progress(done, total)` is
/// called now and then with pages read out of the file's pages. `finish(dir)` runs on the complete
/// staging directory before it is renamed into place (the server writes its WAL there); its failure
/// fails the restore like any other.
pub fn restore(
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
    finish: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<Imported> {
    if opts.data_dir.exists() {
        return Err(Error::InvalidArgument(format!(
            "data-dir {:?} exists",
            opts.data_dir.display().to_string()
        )));
    }
    etcd_format::check_trailer(&opts.snapshot, opts.skip_hash_check)?;
    let reader = Reader::open(&opts.snapshot)?;

    let parent = match opts.data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = opts
        .data_dir
        .file_name()
        .ok_or_else(|| Error::InvalidArgument("--data-dir has no directory name".into()))?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".restoring.{}", std::process::id()));
    let staging = parent.join(hidden);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let result = build(&reader, &staging, &opts.members, progress).and_then(|imported| {
        finish(&staging)?;
        sync_dir(&staging.join("member"))?;
        std::fs::rename(&staging, &opts.data_dir)?;
        sync_dir(&parent)?;
        Ok(imported)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Before a start on a data directory without a WAL: if `db` ends in a SHA-256 of the rest of it
/// (a redb backend an earlier mini-etcd streamed, saved by `etcdctl snapshot save` and placed as
/// `member/db`), strip that trailer so redb can open the file. A file whose last 32 bytes are not
/// such a hash (a plain backend, or one `restore` built) is left alone; so is a missing one.
pub fn prepare_restored_db(db: &Path) -> Result<()> {
    match std::fs::metadata(db) {
        Ok(m) if m.len() <= etcd_format::SHA256_BYTES as u64 => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let trailer = etcd_format::read_trailer(db)?;
    if !trailer.matches() {
        return Ok(());
    }
    tracing::info!(
        db = %db.display(),
        bytes = trailer.body,
        "restoring from a snapshot: its sha256 checksum matches; stripping it"
    );
    let f = std::fs::File::options().write(true).open(db)?;
    f.set_len(trailer.body)?;
    f.sync_all()?;
    Ok(())
}

/// Builds the data directory in `dir`, durably.
fn build(
    reader: &Reader,
    dir: &Path,
    members: &peerpb::Members,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Imported> {
    let member = dir.join("member");
    std::fs::create_dir_all(member.join("snap"))?;
    let imported = {
        let backend = Backend::open(&member.join("db"))?;
        let imported = etcd_format::import(reader, &backend, progress)?;
        backend.put(Table::Meta, META_MEMBERS, &members.encode_to_vec());
        // redb's commit is durable (fsync) before it returns.
        backend.commit()?;
        imported
    };
    sync_dir(&member.join("snap"))?;
    sync_dir(&member)?;
    sync_dir(dir)?;
    Ok(imported)
}

/// fsyncs a directory, so the names in it (and the renames into it) survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::kv::KeyValue;
    use crate::mvcc::revision::Revision;

    /// A backend with history: a put, an update, a delete, a lease, auth and a compaction mark.
    fn sample_backend(path: &Path) -> Backend {
        let b = Backend::open(path).unwrap();
        let kv = |key: &str, value: &str, create, modr, version, lease| KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease,
        };
        b.put(
            Table::Key,
            &Revision::new(2, 0).to_bytes(false),
            &kv("a", "1", 2, 2, 1, 0).encode_to_vec(),
        );
        b.put(
            Table::Key,
            &Revision::new(3, 0).to_bytes(false),
            &kv("a", "2", 2, 3, 2, 7).encode_to_vec(),
        );
        b.put(
            Table::Key,
            &Revision::new(4, 0).to_bytes(true),
            &kv("a", "", 0, 4, 0, 0).encode_to_vec(),
        );
        b.put(Table::Meta, b"consistent_index", &9u64.to_be_bytes());
        b.put(Table::Meta, b"finishedCompactRev", &2u64.to_be_bytes());
        b.put(Table::Lease, &7i64.to_be_bytes(), b"\x08\x07\x10\x3c");
        b.put(Table::Auth, b"enabled", &[0]);
        b.put(Table::Auth, b"revision", &5u64.to_be_bytes());
        b.put(Table::Auth, b"user/root", b"\x0a\x04root");
        b.put(Table::Auth, b"role/root", b"\x0a\x04root");
        let members = peerpb::Members {
            cluster_id: 1,
            members: vec![peerpb::Member {
                id: 0xabc,
                name: "m1".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: vec!["http://127.0.0.1:2379".into()],
                is_learner: false,
            }],
            removed: vec![0xdef],
        };
        b.put(Table::Meta, META_MEMBERS, &members.encode_to_vec());
        b.commit().unwrap();
        b
    }

    fn dump(b: &Backend, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.range(table, b"", None).unwrap()
    }

    fn with_sha256(src: &Path, dest: &Path) {
        etcd_format::write_with_sha256(dest, &std::fs::read(src).unwrap()).unwrap();
    }

    fn export(b: &Backend, dest: &Path) -> u64 {
        etcd_format::export(&b.read_view().unwrap(), dest).unwrap()
    }

    #[test]
    fn export_import_round_trip_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let src = sample_backend(&dir.path().join("src.db"));
        let bolt = dir.path().join("snap.bolt");
        let size = export(&src, &bolt);
        let snap = dir.path().join("snap.db");
        with_sha256(&bolt, &snap);

        let st = etcd_format::status(&snap).unwrap();
        assert_eq!(st.revision, 4);
        assert_eq!(st.total_size, size);
        // key 3, meta 3, lease 1, auth 2, users 1, roles 1, members 1, removed 1, cluster 1.
        assert_eq!(st.total_key, 14);
        let reader = Reader::open(&snap).unwrap();
        let m = etcd_format::members(&reader).unwrap();
        assert_eq!(m[0].id, 0xabc);
        assert_eq!(m[0].name, "m1");

        let target = dir.path().join("restored");
        let opts = RestoreOptions {
            snapshot: snap.clone(),
            data_dir: target.clone(),
            skip_hash_check: false,
            members: peerpb::Members::default(),
        };
        let mut calls = 0;
        let imported = restore(&opts, &mut |_, _| calls += 1, &mut |_| Ok(())).unwrap();
        assert!(calls > 0);
        assert_eq!(imported.revisions, 3);
        assert_eq!(imported.revision, 4);
        assert_eq!(imported.compact_revision, 2);
        assert_eq!(imported.consistent_index, 9);
        let back = Backend::open(&target.join("member").join("db")).unwrap();
        assert_eq!(dump(&back, Table::Key), dump(&src, Table::Key));
        assert_eq!(dump(&back, Table::Lease), dump(&src, Table::Lease));
        assert_eq!(dump(&back, Table::Auth), dump(&src, Table::Auth));
        assert_eq!(
            back.get(Table::Meta, b"finishedCompactRev").unwrap(),
            Some(2u64.to_be_bytes().to_vec())
        );

        // The target exists now: a second restore is refused and changes nothing.
        assert!(restore(&opts, &mut |_, _| {}, &mut |_| Ok(())).is_err());
    }

    #[test]
    fn a_restored_db_trailer_is_checked_and_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let body = vec![42u8; 5000];
        etcd_format::write_with_sha256(&db, &body).unwrap();
        prepare_restored_db(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), body, "trailer stripped");
        // No trailer: left alone (a second call changes nothing).
        prepare_restored_db(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), body);
        // A flipped byte: not a trailer of this file, so the file is not ours to cut.
        etcd_format::write_with_sha256(&db, &body).unwrap();
        let mut flipped = std::fs::read(&db).unwrap();
        flipped[10] ^= 1;
        std::fs::write(&db, &flipped).unwrap();
        prepare_restored_db(&db).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), flipped);
        std::fs::write(&db, [1u8; 20]).unwrap();
        prepare_restored_db(&db).unwrap();
        prepare_restored_db(&dir.path().join("missing")).unwrap();
    }

    /// A view's file holds what was committed when the view opened, its consistent index included,
    /// and nothing committed while the file was written.
    #[test]
    fn an_export_is_one_commit_whatever_commits_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let src = sample_backend(&dir.path().join("src.db"));
        let view = src.read_view().unwrap();
        let before = dump(&src, Table::Key);
        src.put(
            Table::Key,
            &Revision::new(5, 0).to_bytes(false),
            &KeyValue::default().encode_to_vec(),
        );
        src.put(Table::Meta, b"consistent_index", &10u64.to_be_bytes());
        src.commit().unwrap();
        let bolt = dir.path().join("snap.bolt");
        etcd_format::export(&view, &bolt).unwrap();
        drop(view);
        let snap = dir.path().join("snap.db");
        with_sha256(&bolt, &snap);
        let target = dir.path().join("restored");
        let opts = RestoreOptions {
            snapshot: snap,
            data_dir: target.clone(),
            skip_hash_check: false,
            members: peerpb::Members::default(),
        };
        let imported = restore(&opts, &mut |_, _| {}, &mut |_| Ok(())).unwrap();
        assert_eq!((imported.revision, imported.consistent_index), (4, 9));
        let back = Backend::open(&target.join("member").join("db")).unwrap();
        assert_eq!(dump(&back, Table::Key), before);
    }

    #[test]
    fn damaged_or_truncated_snapshots_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = sample_backend(&dir.path().join("src.db"));
        let bolt = dir.path().join("snap.bolt");
        export(&src, &bolt);
        let snap = dir.path().join("snap.db");
        with_sha256(&bolt, &snap);
        let good = std::fs::read(&snap).unwrap();

        let mut flipped = good.clone();
        flipped[5000] ^= 0x01;
        let bad = dir.path().join("flipped.db");
        std::fs::write(&bad, &flipped).unwrap();
        let truncated = dir.path().join("truncated.db");
        std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();

        for file in [&bad, &truncated] {
            let target = dir.path().join("out");
            let opts = RestoreOptions {
                snapshot: file.clone(),
                data_dir: target.clone(),
                skip_hash_check: false,
                members: peerpb::Members::default(),
            };
            let err = restore(&opts, &mut |_, _| {}, &mut |_| Ok(()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("hash") || err.contains("sha256"), "{err}");
            assert!(!target.exists());
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
                .collect();
            assert!(leftovers.is_empty());
        }
    }
}
