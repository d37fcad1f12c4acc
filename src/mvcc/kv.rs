//! The stored record of a key at one revision, and the change events built from them.
//!
//! [`KeyValue`] is etcd's `mvccpb.KeyValue` with the same field numbers, encoded with prost. It is the
//! value stored under each revision in the backend's `key` table, and what reads and watch events
//! return. A deletion is stored as a `KeyValue` carrying only the key and the deleting revision.
//!
//! Left out: etcd's `Event.Type` numbering is the API layer's concern; here the kind is a Rust enum.

/// A key's state at one revision: etcd's own `mvccpb.KeyValue` wire type, so the bytes stored in the
/// backend are exactly what etcd stores and what the API sends, with no conversion on the read path.
pub use crate::proto::mvccpb::KeyValue;

/// Whether an event wrote or removed its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new state; for a delete, the key with `mod_revision` set to the deleting revision.
    pub kv: KeyValue,
    /// The key's state just before this change, when it existed and was cheap to find.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision this event happened at.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}
