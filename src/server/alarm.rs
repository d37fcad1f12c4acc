//! Alarms: cluster-wide health flags (etcd's `NOSPACE` and `CORRUPT`), and the space quota that
//! raises `NOSPACE`.
//!
//! An alarm is a `(member, type)` pair. Alarms are cluster state, so raising or clearing one is a Raft
//! proposal (`Op::Alarm`) that every member applies the same way; listing them reads this member's copy.
//! The applied set lives in memory here and in the backend's `meta` table under
//! `alarm/<member id, 8 bytes BE><type, 4 bytes BE>` (empty value), written in the same batch as the
//! consistent index of the entry that changed it, so a restart neither loses nor re-applies a change.
//!
//! The quota works as etcd's does:
//!
//! - Before a write that can grow the backend (a put, a transaction with a put, a lease grant) is
//!   proposed, `Server::check_quota` estimates its cost (etcd: the key and value plus 256 bytes of
//!   overhead per put) and compares the backend's file size, plus the temporary snapshot copies of it
//!   on disk (`snap/copies.rs`; etcd streams without copies), plus that cost with
//!   `--quota-backend-bytes` (0 = etcd's default of 2 GiB). If it does not fit, the server proposes
//!   `ACTIVATE NOSPACE` for itself and answers the request with `Error::NoSpace`.
//! - While a `NOSPACE` alarm is active, the apply step refuses the same kinds of writes with
//!   `Error::NoSpace` ([`AlarmStore::refuses`]), on every member alike; deletes, compaction, lease
//!   revocation and the alarm requests themselves go through, so an operator can free space.
//! - Clearing the alarm (`etcdctl alarm disarm`) only lifts the apply-side refusal: the next write is
//!   checked against the quota again and, if the file is still too large, raises the alarm again. The
//!   way out is delete, compact, defragment (which shrinks the file), then disarm.
//!
//! Ours beyond etcd, so that the alarm fires before the disk is full:
//!
//! - The quota counts the backend file plus its temporary snapshot copies, not the WAL. The WAL is
//!   bounded by `--snapshot-count` (segments below a snapshot are removed), and counting it would
//!   make the way out above wait for the next snapshot.
//! - The same check raises `NOSPACE` when the write would leave less than `--disk-reserve-bytes` free
//!   on the data directory's filesystem (default: one WAL segment, which is preallocated whole),
//!   whatever uses the disk. Freeing space and disarming is the way out.
//! - If the disk fills anyway, the WAL append or backend commit that hits `ENOSPC` stops the member
//!   (`Shared::fail`) before anything it covers is acknowledged; it starts again once space is freed.
//!
//! Left out: `CORRUPT` is recorded and listed but does not yet stop the apply step (etcd then refuses
//! everything); nothing raises it until corruption checks between members exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::mvcc::{Backend, Store, Table, WriteBatch};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{
    request_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest,
};
use crate::server::request::Op;
use crate::server::Server;

/// Default of `--disk-reserve-bytes` (ours): one WAL segment, which is preallocated whole when the
/// log moves to it.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;
/// etcd's default `--quota-backend-bytes` (used when the flag is 0): 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The backend bytes a put is charged beyond its key and value (etcd's `kvOverhead`).
pub const KV_OVERHEAD: u64 = 256;
/// The backend bytes a lease grant is charged (etcd's `leaseOverhead`).
pub const LEASE_OVERHEAD: u64 = 64;
/// `meta` key prefix of the alarm records.
const META_ALARM_PREFIX: &[u8] = b"alarm/";

/// The applied alarms of the cluster.
#[derive(Debug, Default)]
pub struct AlarmStore {
    /// `(member id, alarm type)`; ordered, so listings are deterministic. A std Mutex: only in-memory
    /// set operations happen under it.
    alarms: Mutex<BTreeSet<(u64, i32)>>,
}

impl AlarmStore {
    /// Loads the alarms persisted in the backend.
    pub fn load(backend: &Backend) -> Result<AlarmStore> {
        let mut alarms = BTreeSet::new();
        let end = prefix_end(META_ALARM_PREFIX);
        backend.scan(Table::Meta, META_ALARM_PREFIX, Some(&end), |k, _| {
            alarms.insert(decode_key(k)?);
            Ok(true)
        })?;
        if !alarms.is_empty() {
            tracing::warn!(alarms = ?alarms, "alarms active at start");
        }
        Ok(AlarmStore {
            alarms: Mutex::new(alarms),
        })
    }

    /// Loads the alarms of `backend` again (after a snapshot replaced it).
    pub fn reload(&self, backend: &Backend) -> Result<()> {
        let fresh = AlarmStore::load(backend)?;
        *self.set() = fresh
            .alarms
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(())
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, i32)>> {
        self.alarms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The active alarms of type `alarm` (`NONE`: all), ordered by member then type.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.set()
            .iter()
            .filter(|(_, t)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// True while a `NOSPACE` alarm is active.
    pub fn no_space(&self) -> bool {
        self.set()
            .iter()
            .any(|(_, t)| *t == AlarmType::Nospace as i32)
    }

    /// The alarms as `Status.errors` shows them: etcd prints the `AlarmMember` message's text form.
    pub fn status_errors(&self) -> Vec<String> {
        self.get(AlarmType::None as i32)
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, type_name(a.alarm)))
            .collect()
    }

    /// `Error::NoSpace` if a `NOSPACE` alarm is active and `op` is a write it holds back (see the
    /// module docs). Deterministic: every member has applied the same alarms at the same index.
    pub fn refuses(&self, op: &Op) -> Result<()> {
        if grows_backend(op) && self.no_space() {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Applies an `ACTIVATE` or `DEACTIVATE` committed at `index`: updates the set and persists it with
    /// the consistent index in one batch. Answers as etcd does: the alarm that changed, or nothing if
    /// it was already in (or out of) the set. `GET` needs no log entry but is answered the same way.
    pub fn apply(&self, store: &Store, index: u64, req: &AlarmRequest) -> Result<AlarmResponse> {
        let member = (req.member_id, req.alarm);
        let mut changed = Vec::new();
        let mut batch = WriteBatch::new();
        let mut listed = None;
        match AlarmAction::try_from(req.action) {
            // Only through the log if a client chose to; it still counts as applied.
            Ok(AlarmAction::Get) => listed = Some(self.get(req.alarm)),
            Ok(AlarmAction::Activate) => {
                if AlarmType::try_from(req.alarm).is_err() {
                    return Err(Error::InvalidArgument(format!(
                        "etcdserver: unknown alarm type {}",
                        req.alarm
                    )));
                }
                if self.set().insert(member) {
                    batch.put(Table::Meta, encode_key(member), Vec::new());
                    changed.push(member);
                    tracing::warn!(
                        member = format!("{:x}", req.member_id),
                        alarm = type_name(req.alarm),
                        "alarm raised"
                    );
                }
            }
            Ok(AlarmAction::Deactivate) => {
                if self.set().remove(&member) {
                    batch.delete(Table::Meta, encode_key(member));
                    changed.push(member);
                    tracing::info!(
                        member = format!("{:x}", req.member_id),
                        alarm = type_name(req.alarm),
                        "alarm cleared"
                    );
                }
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "etcdserver: unknown alarm action {}",
                    req.action
                )))
            }
        }
        store.write_meta(index, batch);
        let alarms = listed.unwrap_or_else(|| {
            changed
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect()
        });
        Ok(AlarmResponse {
            header: None,
            alarms,
        })
    }
}

/// True for the writes a `NOSPACE` alarm holds back and the quota is checked for.
fn grows_backend(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(t) => txn_has_put(t),
        Op::DeleteRange(_)
        | Op::Compaction(_)
        | Op::LeaseRevoke(_)
        | Op::Alarm(_)
        | Op::MemberAttributes(_)
        | Op::LeaseCheckpoint(_)
        | Op::Auth(_) => false,
    }
}

fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|r| match &r.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
}

/// What a write is charged against the quota (etcd's quota cost).
fn cost(op: &Op) -> u64 {
    fn txn_cost(t: &TxnRequest) -> u64 {
        t.success
            .iter()
            .chain(&t.failure)
            .map(|r| match &r.request {
                Some(request_op::Request::RequestPut(p)) => {
                    KV_OVERHEAD + (p.key.len() + p.value.len()) as u64
                }
                Some(request_op::Request::RequestTxn(inner)) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    }
    match op {
        Op::Put(p) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
        Op::Txn(t) => txn_cost(t),
        Op::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

fn type_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map_or("UNKNOWN", |t| t.as_str_name())
}

fn encode_key((member, alarm): (u64, i32)) -> Vec<u8> {
    let mut k = META_ALARM_PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

fn decode_key(k: &[u8]) -> Result<(u64, i32)> {
    let rest = &k[META_ALARM_PREFIX.len().min(k.len())..];
    if rest.len() != 12 {
        return Err(Error::Corrupt(format!(
            "alarm record key of {} bytes",
            k.len()
        )));
    }
    let member = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let alarm = i32::from_be_bytes(rest[8..].try_into().expect("4 bytes"));
    Ok((member, alarm))
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// How long a reading of the free disk space is used before it is read again: the check runs before
/// every write that grows the backend, and a `statvfs` each time would cost more than the write's
/// own bookkeeping.
const FREE_SPACE_EVERY: Duration = Duration::from_millis(100);

/// The space left on the filesystem of the data directory.
#[derive(Debug)]
pub struct FreeSpace {
    /// A directory on that filesystem.
    dir: PathBuf,
    /// The last reading: when, and the bytes an unprivileged writer may still use.
    last: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    /// The free space of the filesystem holding `dir`.
    pub fn new(dir: PathBuf) -> FreeSpace {
        FreeSpace {
            dir,
            last: Mutex::new(None),
        }
    }

    /// Bytes still available, at most [`FREE_SPACE_EVERY`] old; `None` if the filesystem cannot
    /// say (then nothing is refused for it).
    pub fn available(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, bytes)) = *last {
            if at.elapsed() < FREE_SPACE_EVERY {
                return Some(bytes);
            }
        }
        match statvfs_available(&self.dir) {
            Ok(bytes) => {
                *last = Some((Instant::now(), bytes));
                Some(bytes)
            }
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot read free disk space");
                None
            }
        }
    }
}

/// `statvfs(2)`: the bytes of `dir`'s filesystem available to an unprivileged writer.
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
fn statvfs_available(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Server {
    /// The backend quota in bytes (`--quota-backend-bytes`, 0 = etcd's 2 GiB default).
    pub fn quota_backend_bytes(&self) -> u64 {
        match self.config().quota_backend_bytes {
            0 => DEFAULT_QUOTA_BACKEND_BYTES,
            q => q,
        }
    }

    /// The quota check before a write is proposed (see the module docs): if the backend would grow past
    /// the quota, raise `NOSPACE` through Raft and refuse the write.
    pub(crate) async fn check_quota(&self, op: &Op) -> Result<()> {
        if !grows_backend(op) {
            return Ok(());
        }
        let backend = self.shared().store.backend().size_bytes().unwrap_or(0);
        // Snapshot copies are copies of the backend on the same disk: they count.
        let copies = self.shared().snapshot_copies.bytes();
        let size = backend.saturating_add(copies);
        let over_quota = size.saturating_add(cost(op)) > self.quota_backend_bytes();
        let reserve = self.config().disk_reserve_bytes;
        let free = match reserve {
            0 => None,
            _ => self.shared().free_space.available(),
        };
        let disk_short = free.is_some_and(|f| f.saturating_sub(cost(op)) < reserve);
        if !over_quota && !disk_short {
            return Ok(());
        }
        if !self.shared().alarms.no_space() {
            if over_quota {
                tracing::warn!(
                    backend,
                    snapshot_copies = copies,
                    quota = self.quota_backend_bytes(),
                    "backend and its snapshot copies over the quota: raising NOSPACE"
                );
            } else {
                tracing::warn!(
                    free,
                    reserve,
                    "free disk space below --disk-reserve-bytes: raising NOSPACE"
                );
            }
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.shared().member_id,
                alarm: AlarmType::Nospace as i32,
            };
            // The write is refused whether or not the alarm could be raised right now.
            // Boxed: proposing goes through `propose`, which called us.
            if let Err(e) = Box::pin(self.alarm(raise)).await {
                tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
            }
        }
        Err(Error::NoSpace)
    }

    /// etcd's Alarm: `GET` lists this member's copy of the alarms; `ACTIVATE` and `DEACTIVATE` go
    /// through Raft and answer the alarm that changed. No header, as in etcd 3.4.
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse> {
        let mut resp = if req.action == AlarmAction::Get as i32 {
            AlarmResponse {
                header: None,
                alarms: self.shared().alarms.get(req.alarm),
            }
        } else {
            self.propose_for(Op::Alarm(req)).await?
        };
        // etcd 3.4's maintenance server answers the applier's response as it is: no header (3.5
        // added one; clients read only the alarms).
        resp.header = None;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp};

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    #[test]
    fn alarm_activate_deactivate_persist_and_answer_like_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            let alarms = AlarmStore::load(store.backend()).unwrap();
            assert!(alarms.get(AlarmType::None as i32).is_empty());

            let r = alarms
                .apply(
                    &store,
                    5,
                    &req(AlarmAction::Activate, 7, AlarmType::Nospace),
                )
                .unwrap();
            assert_eq!(r.alarms.len(), 1, "a new alarm is answered");
            // Activating it again changes nothing and answers nothing (etcd).
            let r = alarms
                .apply(
                    &store,
                    6,
                    &req(AlarmAction::Activate, 7, AlarmType::Nospace),
                )
                .unwrap();
            assert!(r.alarms.is_empty());
            alarms
                .apply(
                    &store,
                    7,
                    &req(AlarmAction::Activate, 3, AlarmType::Corrupt),
                )
                .unwrap();
            assert_eq!(store.consistent_index(), 7);
            assert!(alarms.no_space());
            assert_eq!(alarms.get(AlarmType::Nospace as i32).len(), 1);
            assert_eq!(
                alarms.status_errors(),
                vec!["memberID:3 alarm:CORRUPT ", "memberID:7 alarm:NOSPACE "]
            );
            store.commit_backend().unwrap();
        }
        // Reopened: the same alarms.
        let store = Store::open(&path).unwrap();
        let alarms = AlarmStore::load(store.backend()).unwrap();
        assert_eq!(alarms.get(AlarmType::None as i32).len(), 2);
        let r = alarms
            .apply(
                &store,
                8,
                &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
            )
            .unwrap();
        assert_eq!(r.alarms.len(), 1);
        let r = alarms
            .apply(
                &store,
                9,
                &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
            )
            .unwrap();
        assert!(
            r.alarms.is_empty(),
            "deactivating a cleared alarm answers nothing"
        );
        assert!(!alarms.no_space());
        assert_eq!(store.consistent_index(), 9);
        store.commit_backend().unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let alarms = AlarmStore::load(store.backend()).unwrap();
        assert_eq!(
            alarms.get(AlarmType::None as i32),
            vec![AlarmMember {
                member_id: 3,
                alarm: AlarmType::Corrupt as i32
            }]
        );
    }

    #[test]
    fn alarm_nospace_refuses_growing_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let alarms = AlarmStore::load(store.backend()).unwrap();
        assert!(alarms.refuses(&put("a", "1")).is_ok());
        alarms
            .apply(
                &store,
                1,
                &req(AlarmAction::Activate, 1, AlarmType::Nospace),
            )
            .unwrap();
        assert!(matches!(
            alarms.refuses(&put("a", "1")),
            Err(Error::NoSpace)
        ));
        let delete = Op::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        });
        assert!(alarms.refuses(&delete).is_ok());
        let txn_delete = Op::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest::default(),
                )),
            }],
            ..Default::default()
        });
        assert!(alarms.refuses(&txn_delete).is_ok());
        let txn_put = Op::Txn(TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest::default())),
            }],
            ..Default::default()
        });
        assert!(alarms.refuses(&txn_put).is_err());
        assert_eq!(cost(&put("ab", "cde")), KV_OVERHEAD + 5);
        assert_eq!(cost(&txn_put), KV_OVERHEAD);
    }
}
