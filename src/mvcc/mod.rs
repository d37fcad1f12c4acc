//! Multi-version concurrency control: etcd's key-value model over a batched redb backend.
//!
//! Every write transaction that changes something takes the next *revision* (a store-wide counter;
//! as in etcd an empty store is at revision 1, so the first write takes 2); each change inside it
//! takes a `sub` position, so `(main, sub)` names one change ([`Revision`]). Nothing is overwritten:
//! a put stores a new record under its revision, a delete stores a tombstone record. The backend's
//! `key` table maps encoded revision -> [`KeyValue`], in revision order, which makes it both the
//! history for watchers and the source from which the in-memory [`KeyIndex`]es are rebuilt at
//! start-up.
//!
//! The key index maps each key to its *generations*: one per life of the key, from the creating put
//! (version 1, `create_revision` = that revision) through each update (version + 1) to the tombstone,
//! after which the next put starts a new generation. A read at revision `r` finds, per key, the last
//! revision `<= r` and fetches its record; a tombstone there means the key did not exist at `r`.
//!
//! Invariants:
//!
//! - Only the apply step writes, through [`Store::write`]; one [`WriteTxn`] at a time. All changes of
//!   one transaction share one main revision with increasing `sub`; a transaction that changes nothing
//!   (including deleting missing keys) takes no revision.
//! - A transaction's records and the consistent index (the Raft index it applied) reach the backend in
//!   the same batch, and a batch is never split by a backend commit. So whenever the backend file is
//!   committed, its consistent index covers exactly the data in it, and replay after a crash resumes at
//!   the right entry.
//! - Reads never see part of a transaction: the index and the backend batch are updated under one
//!   exclusive lock that readers share.
//! - Compaction at `c` keeps, per key, the record visible at `c` (unless it is a tombstone) and all
//!   later ones; reads below `c` answer [`Error::Compacted`](crate::Error::Compacted), and history from
//!   revisions `<= c` does too. The compact revision is persisted, so a restart keeps it.
//! - Reads above the current revision answer [`Error::FutureRevision`](crate::Error::FutureRevision).
//!
//! The [`backend`] module explains the batching and why reads check the in-memory buffers before they
//! open a redb snapshot.
//!
//! Compaction has two halves: [`Store::mark_compacted`] (quick, under the locks: reads below the
//! revision answer `Compacted` from then on) and [`Store::prune`] (drops unreadable revisions in small
//! locked chunks, on any thread; an interrupted prune is finished by the next open). Hashing (`Hash`,
//! `HashKV`) lives in the store too.
//!
//! Left out: sorting and min/max revision filters on range (`server::kv` adds them on top of
//! [`RangeResult`]), and the lessor, which keeps its own table in the same backend.

pub mod backend;
pub mod key_index;
pub mod kv;
pub mod revision;
pub mod store;

pub use backend::{Backend, Table, WriteBatch};
pub use key_index::{KeyIndex, KeyRange};
pub use kv::{Event, EventKind, KeyValue};
pub use revision::Revision;
pub use store::{History, RangeOptions, RangeResult, RangeSink, Store, WriteTxn};
