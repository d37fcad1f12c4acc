//! What travels through the Raft log: one [`RaftRequest`] per entry, protobuf-encoded.
//!
//! Like etcd's `InternalRaftRequest`, a request carries the etcd v3 wire message itself (`PutRequest`,
//! `TxnRequest`, ...), so the log speaks the same language as the API and fields added later do not break
//! entries already in a WAL. Each request also carries the id of the waiter parked on its result (see
//! `wait.rs`); after a restart, replayed entries find no waiter and their results are dropped.

use crate::proto::etcdserverpb::{
    AlarmRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, TxnRequest,
};

/// One proposal.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// The request id the proposer waits on. Unique across restarts (time-based prefix).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The operation.
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub op: Option<Op>,
    /// Who proposed it, when auth was enabled then: the apply step checks the user's permissions
    /// against the auth state of the entry's index (`auth`). Absent for the server's own requests.
    #[prost(message, optional, tag = "20")]
    pub auth: Option<crate::auth::AuthHeader>,
}

/// The operations the apply step knows.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// Put one key.
    #[prost(message, tag = "2")]
    Put(PutRequest),
    /// Delete a key or a range.
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    /// Compact history below a revision.
    #[prost(message, tag = "4")]
    Compaction(CompactionRequest),
    /// A transaction (compares, then one branch of operations, at one revision).
    #[prost(message, tag = "5")]
    Txn(TxnRequest),
    /// Grant a lease (the id is chosen before proposing, so every replica grants the same one).
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    /// Revoke a lease and delete its keys.
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    /// Activate or deactivate an alarm.
    #[prost(message, tag = "8")]
    Alarm(AlarmRequest),
    /// A member's attributes: published by the member itself (name, client URLs) or changed by
    /// `MemberUpdate` (peer URLs).
    #[prost(message, tag = "9")]
    MemberAttributes(crate::proto::peerpb::Member),
    /// The leader's checkpoint of leases' remaining TTLs (etcd's lease checkpointing).
    #[prost(message, tag = "10")]
    LeaseCheckpoint(crate::proto::etcdserverpb::LeaseCheckpointRequest),
    /// A change of users, roles or the auth switch, or an Authenticate's simple token.
    #[prost(message, tag = "11")]
    Auth(crate::auth::AuthRequest),
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
    /// This member's name (empty in WALs written before names were recorded).
    #[prost(string, tag = "3")]
    pub name: String,
}
