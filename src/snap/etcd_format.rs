//! etcd's snapshot format: its backend's buckets in a bbolt file, then a SHA-256 of that file.
//!
//! `etcdctl snapshot save` writes what the Snapshot RPC streams: the bbolt file (see [`super::bbolt`])
//! and a 32-byte SHA-256 of it. This module translates between that file and our backend's tables,
//! both ways, and implements what `etcdctl snapshot status` and `snapshot restore` check.
//!
//! The buckets, as etcd 3.4 writes them (and 3.5 reads them):
//!
//! | bucket | key | value | ours |
//! |---|---|---|---|
//! | `key` | main rev (8 BE) `_` sub rev (8 BE), `t` appended for a tombstone | `mvccpb.KeyValue`; a tombstone holds only the key | `key` table without the `_`; our tombstone also carries its `mod_revision` |
//! | `meta` | `consistent_index` | 8 BE | the same |
//! | `meta` | `finishedCompactRev`, `scheduledCompactRev` | a revision, 17 bytes as above | `finishedCompactRev`, 8 BE |
//! | `lease` | lease id, 8 BE | `leasepb.Lease {ID, TTL, RemainingTTL}` | the same |
//! | `auth` | `authEnabled`; `authRevision` | 1 byte 0/1; 8 BE | `auth` table: `enabled`, `revision` |
//! | `authUsers`, `authRoles` | name | `authpb.User`, `authpb.Role` | `auth` table: `user/<name>`, `role/<name>` |
//! | `members` | member id in hex | JSON `{id, peerURLs, isLearner?, name?, clientURLs?}` | `meta` `members` (`peerpb.Members`) |
//! | `members_removed` | member id in hex | `removed` | the same record |
//! | `cluster` | `clusterVersion` | `3.4.0` | implied |
//! | `alarm` | `etcdserverpb.AlarmMember` | empty | `meta` `alarm/<member><type>` |
//!
//! Guarantees: [`export`] writes every record of the backend's read view it is given (every retained
//! revision, tombstones, compaction mark, leases, auth, members, alarms, consistent index) in one
//! pass without holding more than a page and one bucket's page index in memory; all of it comes
//! from that one redb read transaction, so the file is one commit's state. [`import`] is its inverse
//! for files etcd 3.4 and 3.5 write. [`check_trailer`] refuses a file whose SHA-256 does not match,
//! as `etcdctl snapshot restore` does, before anything is read; [`read_trailer`] is the one place a
//! trailer is compared with its file. [`status`] computes etcdctl's hash (a
//! CRC-32C over bucket names, keys and values), revision, key count and size.
//!
//! Left out: etcd 3.5's `meta` keys `term` and `confState` (ignored on import, not written), and
//! etcd's v2 store (`member/snap/*.snap`), which a v3 snapshot does not carry. Membership is not
//! imported: a restored member takes the membership of its own flags, as etcd's restore does.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::bbolt::{Reader, Writer};
use crate::error::{Error, Result};
use crate::mvcc::backend::{Backend, ReadView, Table};
use crate::mvcc::kv::KeyValue;
use crate::mvcc::revision::{Revision, TOMBSTONE};
use crate::proto::etcdserverpb::AlarmMember;
use crate::proto::peerpb;

/// Length of the SHA-256 trailer etcd appends to a snapshot.
pub const SHA256_BYTES: usize = 32;

/// The cluster version a snapshot says it was written by (etcd's `cluster` bucket). We speak 3.4's API.
pub const CLUSTER_VERSION: &str = "3.4.0";

const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// Our `meta` keys that are not etcd's.
const OUR_META_MEMBERS: &[u8] = b"members";
const OUR_META_ALARM_PREFIX: &[u8] = b"alarm/";
/// Our `auth` table's keys.
const OUR_AUTH_ENABLED: &[u8] = b"enabled";
const OUR_AUTH_REVISION: &[u8] = b"revision";
const OUR_USER_PREFIX: &[u8] = b"user/";
const OUR_ROLE_PREFIX: &[u8] = b"role/";
/// Writes buffered before our backend is committed during an import (bounds memory).
const IMPORT_COMMIT_EVERY: usize = 10_000;

/// etcd's revision key: main, `_`, sub, and `t` for a tombstone.
fn etcd_rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE);
    }
    k
}

/// Decodes etcd's revision key.
fn parse_etcd_rev_key(k: &[u8]) -> Result<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == TOMBSTONE => true,
        _ => {
            return Err(Error::Corrupt(format!(
                "snapshot: key bucket entry of {} bytes is not a revision",
                k.len()
            )))
        }
    };
    if k[8] != b'_' {
        return Err(Error::Corrupt(
            "snapshot: key bucket entry lacks the '_' separator".into(),
        ));
    }
    let mut main = [0u8; 8];
    let mut sub = [0u8; 8];
    main.copy_from_slice(&k[..8]);
    sub.copy_from_slice(&k[9..17]);
    Ok((
        Revision::new(i64::from_be_bytes(main), i64::from_be_bytes(sub)),
        tombstone,
    ))
}

/// One member in etcd's `members` bucket (membership/member.go: `ID`, `RaftAttributes`,
/// `Attributes`, fields in that order, the optional ones omitted when empty).
#[derive(serde::Serialize, serde::Deserialize)]
struct EtcdMember {
    /// The member id (a JSON number).
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(
        rename = "isLearner",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
}

/// Writes the bbolt file of etcd's snapshot format (without the SHA-256) from `view` into `dest`;
/// returns its size. Everything comes from that one view, so the file is one commit's state: its
/// consistent index, compaction mark, leases, auth, membership and alarms are those of the records
/// beside them, whatever the live backend commits while the file is written.
pub fn export(view: &ReadView, dest: &Path) -> Result<u64> {
    let mut w = Writer::create(dest)?;

    // Buckets are written in any order; the writer sorts the root. etcd creates all of them, so do we.
    w.begin_bucket(b"key")?;
    view.scan(Table::Key, |k, v| {
        let (rev, tombstone) = Revision::from_bytes(k)?;
        if tombstone {
            // etcd's tombstone holds only the key (its revision is the record's key).
            let kv = KeyValue::decode(v)?;
            let bare = KeyValue {
                key: kv.key,
                ..KeyValue::default()
            };
            w.put(&etcd_rev_key(rev, true), &bare.encode_to_vec())?;
        } else {
            w.put(&etcd_rev_key(rev, false), v)?;
        }
        Ok(true)
    })?;

    let mut meta: BTreeMap<&[u8], Vec<u8>> = BTreeMap::new();
    let mut members = None;
    let mut alarms = BTreeMap::new();
    view.scan(Table::Meta, |k, v| {
        if k == META_CONSISTENT_INDEX {
            meta.insert(META_CONSISTENT_INDEX, v.to_vec());
        } else if k == META_FINISHED_COMPACT {
            let rev = u64_of(v, "finishedCompactRev")? as i64;
            if rev > 0 {
                let bytes = etcd_rev_key(Revision::new(rev, 0), false);
                meta.insert(META_FINISHED_COMPACT, bytes.clone());
                // Nothing is scheduled beyond what finished: a restore has nothing to resume.
                meta.insert(META_SCHEDULED_COMPACT, bytes);
            }
        } else if k == OUR_META_MEMBERS {
            members = Some(peerpb::Members::decode(v)?);
        } else if let Some(rest) = k.strip_prefix(OUR_META_ALARM_PREFIX) {
            if rest.len() == 12 {
                let mut member = [0u8; 8];
                let mut alarm = [0u8; 4];
                member.copy_from_slice(&rest[..8]);
                alarm.copy_from_slice(&rest[8..]);
                let am = AlarmMember {
                    member_id: u64::from_be_bytes(member),
                    alarm: i32::from_be_bytes(alarm),
                };
                alarms.insert(am.encode_to_vec(), ());
            }
        }
        Ok(true)
    })?;
    w.begin_bucket(b"meta")?;
    for (k, v) in &meta {
        w.put(k, v)?;
    }
    w.begin_bucket(b"alarm")?;
    for k in alarms.keys() {
        w.put(k, b"")?;
    }

    w.begin_bucket(b"lease")?;
    view.scan(Table::Lease, |k, v| {
        w.put(k, v)?;
        Ok(true)
    })?;

    let mut enabled = false;
    let mut auth_revision = None;
    let mut users = Vec::new();
    let mut roles = Vec::new();
    view.scan(Table::Auth, |k, v| {
        if k == OUR_AUTH_ENABLED {
            enabled = v.first() == Some(&1);
        } else if k == OUR_AUTH_REVISION {
            auth_revision = Some(v.to_vec());
        } else if let Some(name) = k.strip_prefix(OUR_USER_PREFIX) {
            users.push((name.to_vec(), v.to_vec()));
        } else if let Some(name) = k.strip_prefix(OUR_ROLE_PREFIX) {
            roles.push((name.to_vec(), v.to_vec()));
        }
        Ok(true)
    })?;
    w.begin_bucket(b"auth")?;
    w.put(b"authEnabled", &[u8::from(enabled)])?;
    if let Some(rev) = auth_revision {
        w.put(b"authRevision", &rev)?;
    }
    w.begin_bucket(b"authUsers")?;
    for (k, v) in &users {
        w.put(k, v)?;
    }
    w.begin_bucket(b"authRoles")?;
    for (k, v) in &roles {
        w.put(k, v)?;
    }

    let members = members.unwrap_or_default();
    let mut listed = BTreeMap::new();
    for m in &members.members {
        let json = serde_json::to_vec(&EtcdMember {
            id: m.id,
            peer_urls: m.peer_urls.clone(),
            is_learner: m.is_learner,
            name: m.name.clone(),
            client_urls: m.client_urls.clone(),
        })
        .map_err(|e| Error::Internal(format!("encoding a member: {e}")))?;
        listed.insert(format!("{:x}", m.id), json);
    }
    w.begin_bucket(b"members")?;
    for (k, v) in &listed {
        w.put(k.as_bytes(), v)?;
    }
    let removed: BTreeMap<String, ()> = members
        .removed
        .iter()
        .map(|id| (format!("{id:x}"), ()))
        .collect();
    w.begin_bucket(b"members_removed")?;
    for k in removed.keys() {
        w.put(k.as_bytes(), b"removed")?;
    }

    w.begin_bucket(b"cluster")?;
    w.put(b"clusterVersion", CLUSTER_VERSION.as_bytes())?;
    w.finish()
}

fn u64_of(v: &[u8], what: &str) -> Result<u64> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{what} has {} bytes, not 8", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// What [`import`] copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Records of the `key` bucket (every revision, tombstones included).
    pub revisions: u64,
    /// The last revision in the `key` bucket (0 if none).
    pub revision: i64,
    /// The compaction the file had finished or scheduled (0 if none).
    pub compact_revision: i64,
    /// The consistent index the file covers.
    pub consistent_index: u64,
    /// Leases.
    pub leases: u64,
    /// Users and roles.
    pub users: u64,
    /// Roles.
    pub roles: u64,
}

/// Copies an etcd snapshot's buckets into our `backend` (empty, fresh), committing as it goes.
/// `progress(pages_read, pages_total)` is called now and then. Membership is not copied (see the
/// module docs).
pub fn import(
    reader: &Reader,
    backend: &Backend,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Imported> {
    let total = reader.meta().high_water;
    let mut out = Imported::default();
    let mut pending = 0usize;
    let mut tick = |pending: &mut usize| -> Result<()> {
        *pending += 1;
        if *pending >= IMPORT_COMMIT_EVERY {
            backend.commit()?;
            *pending = 0;
            progress(reader.pages_read(), total);
        }
        Ok(())
    };

    let found = reader.for_each(&[b"key"], |e| {
        let (rev, tombstone) = parse_etcd_rev_key(e.key)?;
        let value = if tombstone {
            // Ours carries the deleting revision (watch history reads it from the record).
            let mut kv = KeyValue::decode(e.value)?;
            kv.mod_revision = rev.main;
            kv.encode_to_vec()
        } else {
            e.value.to_vec()
        };
        backend.put(Table::Key, &Revision::to_bytes(&rev, tombstone), &value);
        out.revisions += 1;
        out.revision = rev.main;
        tick(&mut pending)
    })?;
    if !found {
        return Err(Error::Corrupt(
            "snapshot has no 'key' bucket: not an etcd v3 backend".into(),
        ));
    }

    reader.for_each(&[b"meta"], |e| {
        if e.key == META_CONSISTENT_INDEX {
            out.consistent_index = u64_of(e.value, "consistent_index")?;
            backend.put(Table::Meta, META_CONSISTENT_INDEX, e.value);
        } else if e.key == META_FINISHED_COMPACT || e.key == META_SCHEDULED_COMPACT {
            // A compaction etcd had scheduled (agreed through Raft) but not finished counts as
            // done: etcd resumes it at start, and our store removes what lies below the mark.
            let (rev, _) = parse_etcd_rev_key(e.value)?;
            out.compact_revision = out.compact_revision.max(rev.main);
        }
        Ok(())
    })?;
    if out.compact_revision > 0 {
        backend.put(
            Table::Meta,
            META_FINISHED_COMPACT,
            &(out.compact_revision as u64).to_be_bytes(),
        );
    }

    reader.for_each(&[b"alarm"], |e| {
        let am = AlarmMember::decode(e.key)?;
        let mut k = OUR_META_ALARM_PREFIX.to_vec();
        k.extend_from_slice(&am.member_id.to_be_bytes());
        k.extend_from_slice(&am.alarm.to_be_bytes());
        backend.put(Table::Meta, &k, b"");
        Ok(())
    })?;

    reader.for_each(&[b"lease"], |e| {
        backend.put(Table::Lease, e.key, e.value);
        out.leases += 1;
        tick(&mut pending)
    })?;

    reader.for_each(&[b"auth"], |e| {
        if e.key == b"authEnabled" {
            backend.put(Table::Auth, OUR_AUTH_ENABLED, &[u8::from(e.value == [1])]);
        } else if e.key == b"authRevision" {
            u64_of(e.value, "authRevision")?;
            backend.put(Table::Auth, OUR_AUTH_REVISION, e.value);
        }
        Ok(())
    })?;
    for (bucket, prefix) in [
        (b"authUsers".as_slice(), OUR_USER_PREFIX),
        (b"authRoles".as_slice(), OUR_ROLE_PREFIX),
    ] {
        reader.for_each(&[bucket], |e| {
            let mut k = prefix.to_vec();
            k.extend_from_slice(e.key);
            backend.put(Table::Auth, &k, e.value);
            if prefix == OUR_USER_PREFIX {
                out.users += 1;
            } else {
                out.roles += 1;
            }
            Ok(())
        })?;
    }
    backend.commit()?;
    progress(total, total);
    Ok(out)
}

/// The members an etcd snapshot lists (`members` bucket), for information.
pub fn members(reader: &Reader) -> Result<Vec<peerpb::Member>> {
    let mut out = Vec::new();
    reader.for_each(&[b"members"], |e| {
        let m: EtcdMember = serde_json::from_slice(e.value)
            .map_err(|err| Error::Corrupt(format!("snapshot member record: {err}")))?;
        out.push(peerpb::Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        });
        Ok(())
    })?;
    Ok(out)
}

/// What `etcdctl snapshot status` prints about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// CRC-32C over every bucket's name, keys and values, in order.
    pub hash: u32,
    /// The main revision of the last record in the `key` bucket.
    pub revision: i64,
    /// Elements of every bucket.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    /// The database's size in bytes (high-water mark times page size).
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// etcdctl's `snapshot status` of the file at `path` (a trailing SHA-256 is ignored, as bbolt ignores
/// it). Walks every page, so a structurally damaged file is an error.
pub fn status(path: &Path) -> Result<Status> {
    let reader = Reader::open(path)?;
    let mut hash = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0u64;
    for bucket in reader.buckets(&[])? {
        hash = crc32c::crc32c_append(hash, &bucket);
        let is_key = bucket == b"key";
        reader.for_each(&[bucket.as_slice()], |e| {
            hash = crc32c::crc32c_append(hash, e.key);
            // bbolt hands a nested bucket's value over as nil.
            if !e.is_bucket {
                hash = crc32c::crc32c_append(hash, e.value);
            }
            if is_key && e.key.len() >= 8 {
                let mut main = [0u8; 8];
                main.copy_from_slice(&e.key[..8]);
                revision = i64::from_be_bytes(main);
            }
            total_key += 1;
            Ok(())
        })?;
    }
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size: reader.size(),
    })
}

impl Status {
    /// etcdctl's `-w table`.
    pub fn table(&self) -> String {
        let cells = [
            format!("{:x}", self.hash),
            self.revision.to_string(),
            self.total_key.to_string(),
            humanize_bytes(self.total_size),
        ];
        let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
        let widths: Vec<usize> = heads
            .iter()
            .zip(&cells)
            .map(|(h, c)| h.len().max(c.len()) + 2)
            .collect();
        let rule = format!(
            "+{}+",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("+")
        );
        let center = |s: &str, w: usize| {
            let pad = w - s.len();
            let left = pad / 2;
            format!("{}{}{}", " ".repeat(left), s, " ".repeat(pad - left))
        };
        let head = heads
            .iter()
            .zip(&widths)
            .map(|(h, w)| center(h, *w))
            .collect::<Vec<_>>()
            .join("|");
        let row = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>width$} ", width = w - 1))
            .collect::<Vec<_>>()
            .join("|");
        format!("{rule}\n|{head}|\n{rule}\n|{row}|\n{rule}\n")
    }

    /// etcdctl's `-w simple` (also its default).
    pub fn simple(&self) -> String {
        format!(
            "{:x}, {}, {}, {}\n",
            self.hash,
            self.revision,
            self.total_key,
            humanize_bytes(self.total_size)
        )
    }

    /// etcdctl's `-w json`.
    pub fn json(&self) -> String {
        format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            self.hash, self.revision, self.total_key, self.total_size
        )
    }
}

/// Bytes as etcdctl prints them (go-humanize's `Bytes`: SI units, one decimal below 10).
pub fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(units.len() - 1);
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", units[e])
    } else {
        format!("{val:.0} {}", units[e])
    }
}

/// Checks the SHA-256 trailer of a saved snapshot as `etcdctl snapshot restore` does: a file whose
/// size is a multiple of 512 plus 32 has one, and it must match; a file without one is refused.
/// `skip_hash_check` skips both checks. Returns the length of the bbolt part.
pub fn check_trailer(path: &Path, skip_hash_check: bool) -> Result<u64> {
    let len = std::fs::metadata(path)?.len();
    let has_hash = len % 512 == SHA256_BYTES as u64;
    if !has_hash {
        if skip_hash_check {
            return Ok(len);
        }
        return Err(Error::Corrupt(
            "snapshot missing hash but --skip-hash-check=false (a truncated or damaged file?)"
                .into(),
        ));
    }
    if skip_hash_check {
        // etcdctl does not compare a trailer it was told to skip either; the bbolt reader still
        // refuses a file whose pages are cut short.
        return Ok(len - SHA256_BYTES as u64);
    }
    let trailer = read_trailer(path)?;
    if !trailer.matches() {
        return Err(Error::Corrupt(format!(
            "expected sha256 {}, got {} (the snapshot is damaged)",
            hex(&trailer.stored),
            hex(&trailer.computed)
        )));
    }
    Ok(trailer.body)
}

/// A file read as a body followed by a 32-byte trailer that may be the body's SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes before the trailer.
    pub body: u64,
    /// The file's last 32 bytes.
    pub stored: [u8; SHA256_BYTES],
    /// The SHA-256 of the body.
    pub computed: [u8; SHA256_BYTES],
}

impl Trailer {
    /// True when the file ends in the SHA-256 of the rest of it.
    pub fn matches(&self) -> bool {
        self.stored == self.computed
    }
}

/// Reads the file at `path` (longer than [`SHA256_BYTES`]) as a body and a trailer, hashing the
/// body a MiB at a time. The one place a snapshot's SHA-256 trailer is checked: by
/// [`check_trailer`] for `snapshot restore`, and by `restore::prepare_restored_db` at start.
pub fn read_trailer(path: &Path) -> Result<Trailer> {
    let len = std::fs::metadata(path)?.len();
    if len <= SHA256_BYTES as u64 {
        return Err(Error::Corrupt(format!(
            "{}: {len} bytes cannot hold a sha256 trailer and data",
            path.display()
        )));
    }
    let body = len - SHA256_BYTES as u64;
    let mut file = File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body;
    while left > 0 {
        let n = buf.len().min(left as usize);
        file.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; SHA256_BYTES];
    file.read_exact(&mut stored)?;
    Ok(Trailer {
        body,
        stored,
        computed: sha.finalize().into(),
    })
}

/// Writes `bytes` followed by their SHA-256, as `etcdctl snapshot save` stores a snapshot.
#[cfg(test)]
pub(crate) fn write_with_sha256(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.write_all(&Sha256::digest(bytes))?;
    f.sync_all()?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot real etcd 3.4.23 wrote (`etcdctl snapshot save`, SHA-256 trailer included) after:
    /// put a=1, put b=2, put a=3, delete b, grant a lease and put c on it, compact at 3, add user
    /// root with role root, enable auth. Its buckets are mostly inline, as bbolt writes small ones.
    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/etcd-3.4.23-snapshot.db")
    }

    #[test]
    fn status_of_an_etcd_file_matches_etcdctl() {
        let st = status(&fixture()).unwrap();
        // `etcdctl snapshot status -w json` on the same file.
        assert_eq!(
            st.json(),
            "{\"hash\":3188408315,\"revision\":6,\"totalKey\":15,\"totalSize\":20480}\n"
        );
        assert_eq!(st.simple(), "be0b3ffb, 6, 15, 20 kB\n");
        assert!(st
            .table()
            .contains("| be0b3ffb |        6 |         15 |      20 kB |"));
        check_trailer(&fixture(), false).unwrap();
    }

    #[test]
    fn an_etcd_file_imports_with_its_history_lease_and_auth() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(&dir.path().join("db")).unwrap();
        let reader = Reader::open(&fixture()).unwrap();
        let imported = import(&reader, &backend, &mut |_, _| {}).unwrap();
        assert_eq!(imported.revisions, 5);
        assert_eq!(imported.revision, 6);
        assert_eq!(imported.compact_revision, 3);
        assert_eq!(imported.consistent_index, 15);
        assert_eq!((imported.leases, imported.users, imported.roles), (1, 1, 1));
        // The tombstone of b at 5 carries its revision in our format.
        let tomb = backend
            .get(Table::Key, &Revision::new(5, 0).to_bytes(true))
            .unwrap()
            .unwrap();
        let kv = KeyValue::decode(tomb.as_slice()).unwrap();
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (b"b".as_slice(), 5));
        assert_eq!(backend.get(Table::Auth, b"enabled").unwrap(), Some(vec![1]));
        let members = members(&reader).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, "e1");
    }

    /// etcd 3.5 writes the same buckets as 3.4, plus `term` and `confState` in `meta`: a file laid
    /// out so (written here, as no etcd 3.5 is at hand) imports with those two keys left out.
    #[test]
    fn an_etcd_3_5_layout_imports_and_ignores_term_and_conf_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        let mut w = crate::snap::bbolt::Writer::create(&path).unwrap();
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        w.begin_bucket(b"key").unwrap();
        w.put(
            &etcd_rev_key(Revision::new(2, 0), false),
            &kv.encode_to_vec(),
        )
        .unwrap();
        w.begin_bucket(b"meta").unwrap();
        w.put(br#"confState"#, br#"{"voters":[1]}"#).unwrap();
        w.put(META_CONSISTENT_INDEX, &9u64.to_be_bytes()).unwrap();
        w.put(b"term", &4u64.to_be_bytes()).unwrap();
        w.finish().unwrap();

        let backend = Backend::open(&dir.path().join("db")).unwrap();
        let reader = Reader::open(&path).unwrap();
        let imported = import(&reader, &backend, &mut |_, _| {}).unwrap();
        assert_eq!((imported.revisions, imported.revision), (1, 2));
        assert_eq!(imported.consistent_index, 9);
        assert_eq!(backend.get(Table::Meta, b"term").unwrap(), None);
        assert_eq!(backend.get(Table::Meta, b"confState").unwrap(), None);
        let stored = backend
            .get(Table::Key, &Revision::new(2, 0).to_bytes(false))
            .unwrap()
            .unwrap();
        assert_eq!(KeyValue::decode(stored.as_slice()).unwrap(), kv);
    }

    #[test]
    fn trailers_are_checked_good_flipped_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        // A multiple of 512 bytes, as a bbolt file is, then the trailer.
        let body: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let good = dir.path().join("good.db");
        write_with_sha256(&good, &body).unwrap();
        assert_eq!(check_trailer(&good, false).unwrap(), body.len() as u64);
        let t = read_trailer(&good).unwrap();
        assert!(t.matches());
        assert_eq!(t.body, body.len() as u64);

        let mut bytes = std::fs::read(&good).unwrap();
        bytes[100] ^= 0x01;
        let flipped = dir.path().join("flipped.db");
        std::fs::write(&flipped, &bytes).unwrap();
        let err = check_trailer(&flipped, false).unwrap_err().to_string();
        assert!(err.contains("expected sha256"), "{err}");
        assert!(!read_trailer(&flipped).unwrap().matches());
        // Told to skip the check, restore takes the body as it is.
        assert_eq!(check_trailer(&flipped, true).unwrap(), body.len() as u64);

        let truncated = dir.path().join("truncated.db");
        std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
        let err = check_trailer(&truncated, false).unwrap_err().to_string();
        assert!(err.contains("missing hash"), "{err}");
        assert!(!read_trailer(&truncated).unwrap().matches());
        let tiny = dir.path().join("tiny.db");
        std::fs::write(&tiny, [0u8; 32]).unwrap();
        assert!(read_trailer(&tiny).is_err());
    }

    #[test]
    fn sizes_print_as_go_humanize_does() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(53248), "53 kB");
        assert_eq!(humanize_bytes(1_500_000), "1.5 MB");
    }
}
