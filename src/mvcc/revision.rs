//! Revisions and their on-disk encoding.
//!
//! A [`Revision`] names one change in the store: `main` is the store-wide revision a write transaction
//! takes (every key written by one transaction shares it), `sub` orders the changes inside that
//! transaction, starting at 0. The `key` table of the backend is keyed by the encoded revision, so the
//! table's byte order must be revision order: `main` then `sub`, each as 8 big-endian bytes. Revisions
//! are never negative, so big-endian two's complement sorts the same as the numbers.
//!
//! A deletion is stored as a tombstone: the same 16 bytes followed by one marker byte ([`TOMBSTONE`]).
//! No two changes share a revision, so the suffix never reorders anything; it lets a scan of the `key`
//! table tell puts from deletes without decoding the value.
//!
//! Left out: etcd's `_` separator byte between `main` and `sub`; our encoding is ours and need not be
//! byte-compatible with a bbolt file.

use crate::error::{Error, Result};

/// Length of an encoded revision without the tombstone marker.
pub const REVISION_LEN: usize = 16;

/// The byte appended to an encoded revision when the change is a deletion.
pub const TOMBSTONE: u8 = b't';

/// One change in the store: the transaction's revision and the change's position inside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store-wide revision, shared by every change of one write transaction.
    pub main: i64,
    /// The position of this change inside its transaction, from 0.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The backend key for this revision; `tombstone` appends the deletion marker.
    /// The backend key of the live record at this revision (no tombstone mark), on the stack.
    pub fn live_key(&self) -> [u8; REVISION_LEN] {
        let mut out = [0u8; REVISION_LEN];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    pub fn to_bytes(&self, tombstone: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(REVISION_LEN + 1);
        out.extend_from_slice(&self.main.to_be_bytes());
        out.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            out.push(TOMBSTONE);
        }
        out
    }

    /// Decodes a backend key into the revision and whether it marks a deletion.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Revision, bool)> {
        let tombstone = match bytes.len() {
            REVISION_LEN => false,
            n if n == REVISION_LEN + 1 && bytes[REVISION_LEN] == TOMBSTONE => true,
            _ => {
                return Err(Error::Corrupt(format!(
                    "bad revision key of {} bytes",
                    bytes.len()
                )))
            }
        };
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        sub.copy_from_slice(&bytes[8..REVISION_LEN]);
        Ok((
            Revision {
                main: i64::from_be_bytes(main),
                sub: i64::from_be_bytes(sub),
            },
            tombstone,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_encoding_sorts_in_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 255),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(255, 3),
            Revision::new(256, 0),
            Revision::new(1 << 40, 0),
            Revision::new(i64::MAX, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes(false) < w[1].to_bytes(false));
            // A tombstone marker never moves a revision past the next one.
            assert!(w[0].to_bytes(true) < w[1].to_bytes(false));
        }
    }

    #[test]
    fn revision_round_trips_with_tombstone_flag() {
        let r = Revision::new(42, 7);
        assert_eq!(
            Revision::from_bytes(&r.to_bytes(false)).unwrap(),
            (r, false)
        );
        assert_eq!(Revision::from_bytes(&r.to_bytes(true)).unwrap(), (r, true));
        assert!(Revision::from_bytes(b"short").is_err());
        let mut bad = r.to_bytes(false);
        bad.push(b'x');
        assert!(Revision::from_bytes(&bad).is_err());
    }
}
