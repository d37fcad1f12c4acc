//! etcd's KV semantics on top of the MVCC store: Range with every option, Put, DeleteRange and Txn.
//!
//! The MVCC store knows revisions and key ranges; this module adds what etcd's API means by them:
//! sorting and revision filters on ranges, `prev_kv` / `ignore_value` / `ignore_lease` on puts,
//! transaction compares and branches, and the request checks etcd makes before anything is proposed
//! (empty keys, too many operations, two writes to one key in a transaction).
//!
//! Writes run inside one MVCC [`WriteTxn`], so a whole etcd transaction takes one revision and a failure
//! half-way discards it. Lease attachments are not changed while a transaction runs: the functions
//! collect [`LeaseEffect`]s, and the apply step carries them out only after the transaction has ended.
//! Lease existence is checked through [`LeaseCheck`] so this module does not depend on the lessor.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::mvcc::{KeyValue, RangeOptions, RangeResult, Store, WriteTxn};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

/// Something a range can be read from: the store itself, or a write transaction (which sees its own
/// writes).
pub trait KvRead {
    /// An MVCC range read.
    fn read(&self, opts: &RangeOptions) -> Result<RangeResult>;
}

impl KvRead for Store {
    fn read(&self, opts: &RangeOptions) -> Result<RangeResult> {
        self.range(opts)
    }
}

/// The store read at one revision: a read-only txn's view. The first read without a revision of its
/// own is made at the current one and pins it; every later one is made at that revision. Each read
/// takes the store's lock only for itself, so a long txn holds up neither writes nor other reads;
/// writes that land in between are at later revisions and change nothing it sees. A compaction past
/// the pinned revision in between makes the next read fail with `Compacted`, as a range at that
/// revision would. A read that names its own revision keeps it.
#[derive(Debug)]
pub struct AtRevision<'a> {
    store: &'a Store,
    /// The pinned revision; 0 until the first read pins it.
    revision: std::cell::Cell<i64>,
}

impl<'a> AtRevision<'a> {
    /// Reads of `store` at the revision the first one finds current.
    pub fn new(store: &'a Store) -> Self {
        Self::at(store, 0)
    }

    /// Reads of `store` at `revision` (0: pinned by the first read).
    pub fn at(store: &'a Store, revision: i64) -> Self {
        AtRevision {
            store,
            revision: std::cell::Cell::new(revision),
        }
    }

    /// The revision the reads were made at (the current one if none pinned it).
    pub fn revision(&self) -> i64 {
        match self.revision.get() {
            0 => self.store.current_revision(),
            r => r,
        }
    }
}

impl KvRead for AtRevision<'_> {
    fn read(&self, opts: &RangeOptions) -> Result<RangeResult> {
        if opts.revision > 0 {
            return self.store.range(opts);
        }
        let pinned = self.revision.get();
        if pinned == 0 {
            // At the current revision, which the result reports: that pins it.
            let result = self.store.range(opts)?;
            self.revision.set(result.revision);
            return Ok(result);
        }
        self.store.range(&RangeOptions {
            revision: pinned,
            ..opts.clone()
        })
    }
}

impl KvRead for WriteTxn<'_> {
    fn read(&self, opts: &RangeOptions) -> Result<RangeResult> {
        self.range(opts)
    }
}

/// Whether a lease exists; implemented by the lessor.
pub trait LeaseCheck {
    /// True when lease `id` exists.
    fn lease_exists(&self, id: i64) -> bool;
    /// False only when no lease exists at all, so that no key can be attached to one.
    fn any_leases(&self) -> bool;
}

impl LeaseCheck for crate::lease::Lessor {
    fn lease_exists(&self, id: i64) -> bool {
        self.lookup(id)
    }

    fn any_leases(&self) -> bool {
        !self.is_empty()
    }
}

/// No leases at all: every lease id is unknown.
pub struct NoLeases;

impl LeaseCheck for NoLeases {
    fn lease_exists(&self, _id: i64) -> bool {
        false
    }

    fn any_leases(&self) -> bool {
        false
    }
}

/// A change to lease attachments, carried out after the transaction that caused it has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEffect {
    /// `key` is now attached to lease `.0`.
    Attach(i64, Vec<u8>),
    /// `key` is no longer attached to lease `.0`.
    Detach(i64, Vec<u8>),
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// etcd's Range. Filters and sorting are applied after the read; with a limit, one extra key is read so
/// `more` is known without counting twice.
pub fn range(r: &impl KvRead, req: &RangeRequest) -> Result<RangeResponse> {
    use range_request::{SortOrder, SortTarget};
    let sort_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = is_filtered(req);
    // As etcd: sorting or filtering needs every key first; the limit is applied afterwards.
    let mut limit = if reads_every_record(req) {
        0
    } else {
        req.limit.max(0) as usize
    };
    if limit > 0 {
        limit += 1;
    }
    // Sorting by value needs the values even when the answer leaves them out.
    let by_value = sort_target == SortTarget::Value;
    let res = r.read(&RangeOptions {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        revision: req.revision,
        limit,
        count_only: req.count_only && !filtered,
        keys_only: req.keys_only && !by_value,
    })?;
    let mut kvs = res.kvs;
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    // etcd: a sort target other than the key with no order sorts ascending (the store already returns
    // keys ascending).
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable sorts, so equal elements keep key order as etcd's do.
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.count_only {
        kvs.clear();
    }
    if req.keys_only && by_value {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(res.revision),
        kvs,
        more,
        count: res.count as i64,
    })
}

/// etcd's Put inside a write transaction.
pub fn put(
    txn: &mut WriteTxn<'_>,
    leases: &dyn LeaseCheck,
    req: &PutRequest,
    effects: &mut Vec<LeaseEffect>,
) -> Result<PutResponse> {
    let current = if req.ignore_value || req.ignore_lease {
        let cur = single(txn, &req.key)?;
        if cur.is_none() {
            return Err(Error::PutKeyNotFound);
        }
        cur
    } else {
        None
    };
    let value = match (&current, req.ignore_value) {
        (Some(cur), true) => cur.value.clone(),
        _ => req.value.clone(),
    };
    let lease = match (&current, req.ignore_lease) {
        (Some(cur), true) => cur.lease,
        _ => req.lease,
    };
    if lease != 0 && !leases.lease_exists(lease) {
        return Err(Error::LeaseNotFound);
    }
    // The replaced record is read only when something needs it: the client's `prev_kv`, or its lease
    // (to move the key between leases). With no lease in existence no key holds one, so a plain put
    // takes its versions from the index alone.
    let read_prev = req.prev_kv || leases.any_leases();
    let prev = txn.put(&req.key, &value, lease, read_prev)?;
    let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
    if prev_lease != lease {
        if prev_lease != 0 {
            effects.push(LeaseEffect::Detach(prev_lease, req.key.clone()));
        }
        if lease != 0 {
            effects.push(LeaseEffect::Attach(lease, req.key.clone()));
        }
    }
    Ok(PutResponse {
        header: None,
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

/// etcd's DeleteRange inside a write transaction.
pub fn delete_range(
    txn: &mut WriteTxn<'_>,
    req: &DeleteRangeRequest,
    effects: &mut Vec<LeaseEffect>,
) -> Result<DeleteRangeResponse> {
    let prev = txn.delete_range(&req.key, &req.range_end)?;
    for kv in &prev {
        if kv.lease != 0 {
            effects.push(LeaseEffect::Detach(kv.lease, kv.key.clone()));
        }
    }
    Ok(DeleteRangeResponse {
        header: None,
        deleted: prev.len() as i64,
        prev_kvs: if req.prev_kv { prev } else { Vec::new() },
    })
}

/// etcd's Txn: evaluate every compare against the current state, then run one branch, all at one
/// revision. Nested transactions run inside the same MVCC transaction.
pub fn txn(
    txn: &mut WriteTxn<'_>,
    leases: &dyn LeaseCheck,
    req: &TxnRequest,
    effects: &mut Vec<LeaseEffect>,
) -> Result<TxnResponse> {
    let (succeeded, ops) = txn_branch(&*txn, req)?;
    run_branch(succeeded, ops, |request| {
        let mut response = match request {
            request_op::Request::RequestRange(r) => range_op(&*txn, r)?,
            request_op::Request::RequestPut(r) => {
                response_op::Response::ResponsePut(put(txn, leases, r, effects)?)
            }
            request_op::Request::RequestDeleteRange(r) => {
                response_op::Response::ResponseDeleteRange(delete_range(txn, r, effects)?)
            }
            request_op::Request::RequestTxn(r) => {
                response_op::Response::ResponseTxn(self::txn(txn, leases, r, effects)?)
            }
        };
        // etcd's header revision for an operation inside a write txn is the store's revision as
        // the txn sees it once the operation ran: the new revision after the txn's first change,
        // the one it started from before (a range or a delete of nothing ahead of any write). A
        // nested txn's own header stays empty; its operations carry theirs.
        let seen = if txn.changed() {
            txn.revision()
        } else {
            txn.revision() - 1
        };
        match &mut response {
            response_op::Response::ResponseRange(r) => r.header = header(seen),
            response_op::Response::ResponsePut(r) => r.header = header(seen),
            response_op::Response::ResponseDeleteRange(r) => r.header = header(seen),
            response_op::Response::ResponseTxn(r) => r.header = Some(ResponseHeader::default()),
        }
        Ok(response)
    })
}

/// A txn without puts or deletes (see [`txn_has_writes`]), served from a read: compares and ranges all
/// at the revision `r` reads. Not proposed through Raft, as etcd serves it; a write found in it is an
/// internal error, since the caller checked.
pub fn read_txn(r: &impl KvRead, req: &TxnRequest) -> Result<TxnResponse> {
    let (succeeded, ops) = txn_branch(r, req)?;
    run_branch(succeeded, ops, |request| match request {
        request_op::Request::RequestRange(q) => range_op(r, q),
        request_op::Request::RequestTxn(t) => {
            Ok(response_op::Response::ResponseTxn(read_txn(r, t)?))
        }
        _ => Err(Error::Internal("a read-only txn holds a write".into())),
    })
}

/// A range inside a txn: its header is the txn's, set once at the end.
fn range_op(r: &impl KvRead, req: &RangeRequest) -> Result<response_op::Response> {
    let mut resp = range(r, req)?;
    resp.header = None;
    Ok(response_op::Response::ResponseRange(resp))
}

/// Runs `each` on every operation of a txn's chosen branch, in order, and gathers the responses.
fn run_branch(
    succeeded: bool,
    ops: &[RequestOp],
    mut each: impl FnMut(&request_op::Request) -> Result<response_op::Response>,
) -> Result<TxnResponse> {
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(request) = &op.request else {
            return Err(Error::InvalidArgument("empty operation in txn".into()));
        };
        responses.push(ResponseOp {
            response: Some(each(request)?),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// Evaluates a txn's compares (all must hold) and picks its branch.
fn txn_branch<'q>(r: &impl KvRead, req: &'q TxnRequest) -> Result<(bool, &'q [RequestOp])> {
    for c in &req.compare {
        if !compare(r, c)? {
            return Ok((false, &req.failure));
        }
    }
    Ok((true, &req.success))
}

/// Sets the revision of a read-only txn's headers, as etcd reports them: every operation's is the
/// read revision; a nested txn's own header is left empty. (A write txn's operations get theirs
/// as they run, in [`txn`].)
pub fn set_txn_revision(resp: &mut TxnResponse, revision: i64) {
    resp.header = header(revision);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(r)) => r.header = header(revision),
            Some(response_op::Response::ResponsePut(r)) => r.header = header(revision),
            Some(response_op::Response::ResponseDeleteRange(r)) => r.header = header(revision),
            Some(response_op::Response::ResponseTxn(r)) => {
                set_txn_revision(r, revision);
                // etcd leaves a nested txn's own header empty, though present (its applyTxn fills
                // only the operations' headers).
                r.header = Some(ResponseHeader::default());
            }
            None => {}
        }
    }
}

fn single(r: &impl KvRead, key: &[u8]) -> Result<Option<KeyValue>> {
    Ok(r.read(&RangeOptions {
        key: key.to_vec(),
        ..Default::default()
    })?
    .kvs
    .into_iter()
    .next())
}

/// One compare: true when every key in its range satisfies it. A missing key compares as zero values,
/// except that a value compare on a missing key is false (etcd's rule).
fn compare(r: &impl KvRead, c: &Compare) -> Result<bool> {
    use compare::CompareTarget;
    let res = r.read(&RangeOptions {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        ..Default::default()
    })?;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if res.kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    // The operand: the union's value when it matches the target, else the target's zero value.
    let operand = match (&c.target_union, target) {
        (Some(TargetUnion::Version(x)), CompareTarget::Version)
        | (Some(TargetUnion::CreateRevision(x)), CompareTarget::Create)
        | (Some(TargetUnion::ModRevision(x)), CompareTarget::Mod)
        | (Some(TargetUnion::Lease(x)), CompareTarget::Lease) => *x,
        _ => 0,
    };
    let ord = match target {
        CompareTarget::Version => kv.version.cmp(&operand),
        CompareTarget::Create => kv.create_revision.cmp(&operand),
        CompareTarget::Mod => kv.mod_revision.cmp(&operand),
        CompareTarget::Lease => kv.lease.cmp(&operand),
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

// ---- request checks made before proposing (etcd's v3rpc key checks) ----

/// Checks a Range request.
pub fn check_range(req: &RangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if range_request::SortOrder::try_from(req.sort_order).is_err() {
        return Err(Error::InvalidArgument(
            "etcdserver: invalid sort option".into(),
        ));
    }
    if range_request::SortTarget::try_from(req.sort_target).is_err() {
        return Err(Error::InvalidArgument(
            "etcdserver: invalid sort option".into(),
        ));
    }
    Ok(())
}

/// Checks a Put request.
pub fn check_put(req: &PutRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn check_delete(req: &DeleteRangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn request: operation counts (each list at most `max_ops`), every operation's own check,
/// and no two writes to one key in a branch.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<()> {
    if req.compare.len() > max_ops || req.success.len() > max_ops || req.failure.len() > max_ops {
        return Err(Error::TooManyTxnOps);
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(r)) => check_put(r)?,
            Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r)?,
            Some(request_op::Request::RequestTxn(r)) => check_txn(r, max_ops)?,
            None => return Err(Error::InvalidArgument("empty operation in txn".into())),
        }
    }
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// A deleted range: `[start, end)`, `end` empty = the single key, `[0]` = everything from `start`.
struct DeleteInterval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl DeleteInterval {
    fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return key == self.start.as_slice();
        }
        if self.end == [0] {
            return key >= self.start.as_slice();
        }
        key >= self.start.as_slice() && key < self.end.as_slice()
    }
}

/// etcd's duplicate-write rule for one branch: a key may be put once, and not inside a range the same
/// branch deletes. The two branches of a nested txn may each put the same key (only one of them runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<DeleteInterval>)> {
    let mut dels: Vec<DeleteInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(DeleteInterval {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Ranges with a limit above this, or none, may read any number of records.
const WIDE_RANGE_LIMIT: i64 = 1000;

/// Whether `req` may read many records: a key range with no limit or a large one, or one that is
/// sorted or filtered by revision (which reads every record of the range before it applies the
/// limit, as etcd does: [`range`]). Such reads run on a blocking thread, never on an async worker
/// that every other request needs.
pub fn is_wide(req: &RangeRequest) -> bool {
    !req.range_end.is_empty()
        && (req.limit <= 0 || req.limit > WIDE_RANGE_LIMIT || reads_every_record(req))
}

/// Whether `req` filters by revision.
fn is_filtered(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

/// Whether [`range`] reads every record of `req`'s range before it applies the limit: when it sorts
/// or filters, as etcd does.
fn reads_every_record(req: &RangeRequest) -> bool {
    req.sort_order != range_request::SortOrder::None as i32 || is_filtered(req)
}

/// Whether the answer to `req` is its records as stored, in key order, with nothing to sort, filter
/// or strip: then it can be encoded straight from the stored bytes (`Server::range_frame`).
pub fn answers_as_stored(req: &RangeRequest) -> bool {
    use range_request::{SortOrder, SortTarget};
    let key_order = matches!(
        (
            SortTarget::try_from(req.sort_target),
            SortOrder::try_from(req.sort_order)
        ),
        (Ok(SortTarget::Key), Ok(SortOrder::None | SortOrder::Ascend))
    );
    key_order
        && !req.keys_only
        && !req.count_only
        && req.min_mod_revision == 0
        && req.max_mod_revision == 0
        && req.min_create_revision == 0
        && req.max_create_revision == 0
}

/// Whether a read-only transaction has a wide range ([`is_wide`]) in any branch.
pub fn txn_reads_wide(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => is_wide(r),
            Some(request_op::Request::RequestTxn(t)) => txn_reads_wide(t),
            _ => false,
        })
}

pub fn txn_has_writes(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_has_writes(t),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<()> {
        check_txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    fn range_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn value_of(resp: &ResponseOp) -> Vec<u8> {
        match &resp.response {
            Some(response_op::Response::ResponseRange(r)) => {
                r.kvs.first().map(|kv| kv.value.clone()).unwrap_or_default()
            }
            other => panic!("not a range response: {other:?}"),
        }
    }

    #[test]
    fn a_read_only_txn_is_served_beside_an_open_write_and_reads_at_its_start_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut w = store.write();
        w.put(b"a", b"1", 0, false).unwrap();
        w.end(1);
        let req = TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec(),
                target: compare::CompareTarget::Value as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Value(b"1".to_vec())),
                ..Default::default()
            }],
            success: vec![range_op("a"), txn_op(vec![range_op("a")], vec![])],
            failure: vec![],
        };
        let check_sees_one = |resp: &TxnResponse| {
            assert!(
                resp.succeeded,
                "the compare sees the value at the start revision"
            );
            assert_eq!(value_of(&resp.responses[0]), b"1");
            match &resp.responses[1].response {
                Some(response_op::Response::ResponseTxn(t)) => {
                    assert_eq!(value_of(&t.responses[0]), b"1")
                }
                other => panic!("not a txn response: {other:?}"),
            }
        };
        // The apply step holds the writer for its whole batch; a read-only txn does not wait for it.
        // On another thread, so that a read that waited for the writer fails the test, not hangs it.
        let mut open = store.write();
        open.put(b"a", b"2", 0, false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let resp = std::thread::scope(|s| {
            s.spawn(|| {
                let _ = tx.send(read_txn(&AtRevision::new(&store), &req));
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            open.end(2); // lets a blocked reader finish before the scope joins it
            got.expect("a read-only txn waited for the open write transaction")
        })
        .unwrap();
        check_sees_one(&resp);
        // A write that lands after the txn's start revision changes nothing it reads.
        assert_eq!(store.current_revision(), 3);
        let at_start = AtRevision::at(&store, 2);
        check_sees_one(&read_txn(&at_start, &req).unwrap());
        // A write in a txn handed to the read path is refused, not half-served.
        let bad = TxnRequest {
            success: vec![put_op("b")],
            ..Default::default()
        };
        assert!(matches!(read_txn(&at_start, &bad), Err(Error::Internal(_))));
    }

    #[test]
    fn duplicate_writes_in_a_txn_are_refused() {
        assert!(check(vec![put_op("a"), put_op("b")]).is_ok());
        assert!(matches!(
            check(vec![put_op("a"), put_op("a")]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![put_op("b"), del_op("a", "c")]),
            Err(Error::DuplicateKey)
        ));
        assert!(check(vec![put_op("c"), del_op("a", "c")]).is_ok());
        assert!(check(vec![del_op("a", "c"), del_op("b", "d")]).is_ok());
        // Both branches of a nested txn may put the same key, but not the parent as well.
        assert!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        assert!(matches!(
            check(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del_op("a", ""), txn_op(vec![], vec![put_op("a")])]),
            Err(Error::DuplicateKey)
        ));
    }

    #[test]
    fn op_counts_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert!(matches!(check(many), Err(Error::TooManyTxnOps)));
        assert!(matches!(check(vec![put_op("")]), Err(Error::EmptyKey)));
        assert!(check_put(&PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn compares_follow_etcd() {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let kv = KeyValue {
            key: b"k".to_vec(),
            version: 3,
            value: b"abc".to_vec(),
            ..Default::default()
        };
        let c = |target: CompareTarget, result: CompareResult, u: TargetUnion| Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(u),
        };
        let v = CompareTarget::Version;
        assert!(compare_kv(
            &c(v, CompareResult::Equal, TargetUnion::Version(3)),
            v,
            &kv
        ));
        assert!(compare_kv(
            &c(v, CompareResult::Greater, TargetUnion::Version(2)),
            v,
            &kv
        ));
        assert!(compare_kv(
            &c(v, CompareResult::Less, TargetUnion::Version(4)),
            v,
            &kv
        ));
        assert!(compare_kv(
            &c(v, CompareResult::NotEqual, TargetUnion::Version(4)),
            v,
            &kv
        ));
        let val = CompareTarget::Value;
        assert!(compare_kv(
            &c(
                val,
                CompareResult::Greater,
                TargetUnion::Value(b"abb".to_vec())
            ),
            val,
            &kv
        ));
    }

    #[test]
    fn ranges_that_read_every_record_are_wide() {
        use range_request::{SortOrder, SortTarget};
        let interval = |limit| RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit,
            ..Default::default()
        };
        assert!(!is_wide(&interval(10)), "a small limit bounds the read");
        assert!(is_wide(&interval(0)), "no limit");
        assert!(is_wide(&interval(WIDE_RANGE_LIMIT + 1)));
        // clientv3's WithFirstCreate, WithLastKey, WithMaxCreateRev: limit 1, yet every record.
        let mut first_create = interval(1);
        first_create.sort_target = SortTarget::Create as i32;
        first_create.sort_order = SortOrder::Ascend as i32;
        assert!(is_wide(&first_create));
        let mut last_key = interval(1);
        last_key.sort_order = SortOrder::Descend as i32;
        assert!(is_wide(&last_key));
        let mut filtered = interval(1);
        filtered.max_create_revision = 5;
        assert!(is_wide(&filtered));
        let mut one_key = first_create.clone();
        one_key.range_end.clear();
        assert!(!is_wide(&one_key), "one key is one record, sorted or not");
    }
}
