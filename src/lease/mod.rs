//! Leases: keys that disappear when their owner stops saying it is alive.
//!
//! A client grants a lease with a TTL, attaches keys to it by writing them with its id, and keeps it
//! alive with keep-alives (renews). When a lease is revoked, by the client or because it expired, its
//! keys are deleted in the same revision as the revoke. The [`Lessor`] holds the lease table; this is
//! etcd's `lessor.go`, with etcd's semantics and error texts.
//!
//! # Two kinds of state
//!
//! *Replicated state* is the set of leases, each with its id and granted TTL, and the keys attached to
//! each. It changes only on the apply path, in log order, through [`Lessor::grant`],
//! [`Lessor::revoke`], [`Lessor::attach`] and [`Lessor::detach`], so every member holds the same table.
//! Grant and revoke do not write to the backend themselves: they put their record (or its deletion)
//! into the caller's [`WriteBatch`](crate::mvcc::backend::WriteBatch), which the apply step commits
//! atomically with the key deletions and the consistent index. A crash therefore never leaves a lease
//! revoked with its keys alive, or the reverse, and WAL replay redoes exactly the entries the backend
//! missed.
//!
//! *Leader-local state* is each lease's expiry instant. It is never persisted nor replicated: time on
//! one machine means nothing on another. Only the leader acts on it. [`Lessor::expired`] lists the
//! leases past their expiry and the server *proposes* a revoke for each through Raft; the lessor never
//! deletes anything on its own (a lease is gone only when the revoke entry applies, on every member at
//! the same index). [`Lessor::renew`], [`Lessor::time_to_live`] and [`Lessor::promote`] also work on
//! expiries, and are only meaningful on the leader; the server forwards keep-alives there.
//!
//! # Invariants
//!
//! - Every lease has exactly one entry `(due, id)` in the expiry queue, and `due >= expiry`. `due` is
//!   the expiry until [`Lessor::expired`] reports the lease, then the retry instant
//!   ([`EXPIRED_LEASE_RETRY_INTERVAL`] later): a reported lease is not reported again while its revoke
//!   is in flight, but is reported again if that revoke was lost.
//! - A lease never expires earlier than its TTL after the last event that vouched for it: its grant,
//!   its last renew, a restart ([`Lessor::new`] gives every loaded lease its full TTL from the load) or
//!   a leader change ([`Lessor::promote`] does the same). The price is that a lease may live up to one
//!   TTL longer than the client asked for across a restart or election; it never lives forever.
//! - An expired lease cannot be renewed (etcd's rule): its revoke is already on its way.
//! - The granted TTL is in `[min_ttl, MAX_LEASE_TTL]`. The minimum must be the same on every member,
//!   since grant applies it on the apply path.
//!
//! # Persistence
//!
//! [`Table::Lease`](crate::mvcc::backend::Table::Lease) maps [`lease_key`] (the id as 8 bytes
//! big-endian) to a prost-encoded [`LeaseRecord`] `{ id = 1, ttl = 2 }`, field numbers as etcd's
//! `leasepb.Lease`. Attachments are not persisted: each key's own `lease` field in the MVCC store is
//! the truth, and at startup the server hands them to [`Lessor::rebuild_attachments`].
//!
//! # Concurrency
//!
//! One `std::sync::Mutex` guards the table and the queue. Every critical section is short, in-memory,
//! and never awaits, so the async expiry task and the gRPC handlers can call in directly. Time comes
//! from an injected [`Clock`]; tests use [`ManualClock`] and never sleep.
//!
//! # Left out
//!
//! - Checkpoints (etcd's `LeaseCheckpoint`, which replicates remaining TTLs so a leader change does not
//!   reset them to the full TTL): not written, and etcd's `RemainingTTL` field is not persisted.
//! - Spreading expiries after a promote so that thousands of leases do not expire in the same second
//!   (etcd's revoke-rate smoothing); callers bound each batch with the `limit` of
//!   [`Lessor::expired`] instead.
//! - A demote step: a follower's expiries simply go unused, and [`Lessor::promote`] resets them.
//! - The key -> lease reverse map (`GetLease`): the MVCC store knows a key's lease from its value.
//! - Running the expiry task itself: the server owns it, sleeping until [`Lessor::next_expiry`].

mod clock;
mod lessor;

pub use clock::{Clock, ManualClock, SystemClock};
pub use lessor::{
    lease_key, LeaseRecord, LeaseTtl, Lessor, EXPIRED_LEASE_RETRY_INTERVAL, MAX_LEASE_TTL,
};
