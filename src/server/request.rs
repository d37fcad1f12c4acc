//! What travels through the Raft log: one [`RaftRequest`] per entry, protobuf-encoded.
//!
//! The encoding is protobuf (prost, derived here rather than generated) for the same reason etcd's
//! `InternalRaftRequest` is: fields can be added later without breaking entries already in a WAL. Each
//! request carries the id of the waiter that is parked on its result (see `wait.rs`); after a restart
//! replayed entries find no waiter and their results are simply dropped.

/// One proposal.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// The request id the proposer waits on. Unique across restarts (time-based prefix).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The operation.
    #[prost(oneof = "Op", tags = "2, 3, 4")]
    pub op: Option<Op>,
}

/// The operations the apply step knows.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// Put one key.
    #[prost(message, tag = "2")]
    Put(PutOp),
    /// Delete a key or a range.
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeOp),
    /// Compact history below a revision.
    #[prost(message, tag = "4")]
    Compact(CompactOp),
}

/// Put `key` = `value`, optionally attached to a lease.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOp {
    /// The key (never empty: checked before proposing).
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Lease id, 0 for none.
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

/// Delete `[key, range_end)` (etcd's range conventions).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteRangeOp {
    /// First key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range; empty for the single key.
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

/// Compact the key-value history below `revision`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompactOp {
    /// The compaction revision.
    #[prost(int64, tag = "1")]
    pub revision: i64,
}

/// Identity written as the WAL's metadata record: who this log belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalMetadata {
    /// This member's id (also its Raft id).
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// The cluster's id.
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
}
