//! The in-memory index from a key to the revisions at which it changed.
//!
//! Each key's [`KeyIndex`] is a list of generations. A generation is one life of the key: it starts with
//! the put that creates the key and ends with the tombstone (deletion) revision, after which a new, empty
//! generation is opened. So the invariants are:
//!
//! - there is always at least one generation, and the last one is open (holds no tombstone; it may be
//!   empty);
//! - every generation but the last is closed: its last revision is the tombstone;
//! - revisions increase strictly across the whole key index.
//!
//! The index holds revisions only; values live in the backend under the revision. A read at revision
//! `r` asks the index which revision of the key was visible at `r` and then fetches that record.
//! Compaction trims the index and reports exactly which backend records became unreachable, including
//! whether each was a tombstone, so the backend can delete them without scanning.
//!
//! Also here: [`KeyRange`], etcd's `range_end` convention turned into bounds once, in one place.
//!
//! Left out: etcd keeps the index in a B-tree guarded by its own lock; we use a `BTreeMap` that the
//! store guards together with its revision counters.

use std::ops::Bound;

use smallvec::SmallVec;

use super::revision::Revision;

/// A key's revisions in one generation: most keys have one, kept inline (no heap allocation).
pub type Revs = SmallVec<[Revision; 1]>;
/// A key's generations: most keys have one, kept inline.
pub type Generations = SmallVec<[Generation; 1]>;

/// One life of a key, from its creating put to its tombstone (if any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Main revision of the put that created this generation.
    pub created: i64,
    /// Number of changes appended to this generation so far (puts, plus the tombstone). It outlives
    /// compaction, which drops old revisions but not the count, so versions stay right.
    pub version: i64,
    /// The revisions of this generation, ascending; in a closed generation the last is the tombstone.
    pub revs: Revs,
}

/// What the index knows about a key at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// The revision holding the key's record at the asked revision.
    pub modified: Revision,
    /// Main revision that created the visible generation.
    pub created: i64,
    /// The key's version at `modified`.
    pub version: i64,
}

/// All the generations of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// Oldest first; the last one is open.
    generations: Generations,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::new()
    }
}

/// Pushes without over-allocating when the inline slot overflows: a second revision moves the list to
/// the heap with room for exactly two (a `Vec`-style first growth would reserve four), and later growth
/// doubles as usual.
fn push_tight(v: &mut Revs, rev: Revision) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(rev);
}

impl KeyIndex {
    /// A key with no history: one empty, open generation.
    pub fn new() -> KeyIndex {
        KeyIndex {
            generations: smallvec::smallvec![Generation::default()],
        }
    }

    /// The generations, oldest first.
    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }

    fn open_generation(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// Records a put at `rev` whose record says `created` and `version` (the caller computed them from
    /// the previous record, or read them from disk when rebuilding).
    pub fn put(&mut self, rev: Revision, created: i64, version: i64) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.version = version;
        push_tight(&mut g.revs, rev);
    }

    /// Records a deletion at `rev`: closes the open generation and opens an empty one.
    pub fn tombstone(&mut self, rev: Revision) {
        let g = self.open_generation();
        push_tight(&mut g.revs, rev);
        g.version += 1;
        self.generations.reserve_exact(1);
        self.generations.push(Generation::default());
    }

    /// True when the key is alive now (its open generation has revisions).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// The key's state visible at main revision `at`, or `None` if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyState> {
        let n = self.generations.len();
        for (gi, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            // `first.main <= at`, so at least one revision qualifies.
            let idx = g.revs.partition_point(|r| r.main <= at) - 1;
            let closed = gi + 1 < n;
            if closed && idx == g.revs.len() - 1 {
                // The visible revision is this generation's tombstone.
                return None;
            }
            let behind = (g.revs.len() - 1 - idx) as i64;
            return Some(KeyState {
                modified: g.revs[idx],
                created: g.created,
                version: g.version - behind,
            });
        }
        None
    }

    /// The revision that immediately precedes `rev` in `rev`'s generation: the record a change at `rev`
    /// replaced. `None` when `rev` began its generation (or is unknown).
    pub fn prev_of(&self, rev: Revision) -> Option<Revision> {
        for g in &self.generations {
            if let Ok(pos) = g.revs.binary_search(&rev) {
                return pos.checked_sub(1).map(|p| g.revs[p]);
            }
        }
        None
    }

    /// Compacts at main revision `at`: keeps only the revision visible at `at` (unless it is a tombstone)
    /// and everything after it. Every dropped revision is appended to `removed` with `true` when it was
    /// a tombstone. Returns true when the key has no revisions left and should leave the index.
    pub fn compact(&mut self, at: i64, removed: &mut Vec<(Revision, bool)>) -> bool {
        let n = self.generations.len();
        let mut dropped_generations = 0;
        for (gi, g) in self.generations.iter_mut().enumerate() {
            let (Some(first), Some(last)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if first.main > at {
                break;
            }
            let closed = gi + 1 < n;
            if closed && last.main <= at {
                // The generation ended at or before `at`: nothing in it is visible any more.
                let tomb = g.revs.len() - 1;
                removed.extend(g.revs.iter().enumerate().map(|(i, r)| (*r, i == tomb)));
                dropped_generations += 1;
                continue;
            }
            let idx = g.revs.partition_point(|r| r.main <= at) - 1;
            removed.extend(g.revs.drain(..idx).map(|r| (r, false)));
            break;
        }
        self.generations.drain(..dropped_generations);
        self.generations.iter().all(|g| g.revs.is_empty())
    }
}

/// Lower and upper bound over raw keys, as `BTreeMap::range` takes them.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// etcd's reading of `key` + `range_end`, as bounds over raw keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Empty `range_end`: exactly `key`.
    Single(&'a [u8]),
    /// `range_end` is the single byte `\0`: every key `>= key`.
    From(&'a [u8]),
    /// `[key, range_end)`.
    Between(&'a [u8], &'a [u8]),
    /// `range_end <= key`: matches nothing.
    Empty,
}

impl<'a> KeyRange<'a> {
    /// Interprets a request's `key` and `range_end` the way etcd does.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        if range_end.is_empty() {
            KeyRange::Single(key)
        } else if range_end == [0] {
            KeyRange::From(key)
        } else if range_end <= key {
            KeyRange::Empty
        } else {
            KeyRange::Between(key, range_end)
        }
    }

    /// Bounds for `BTreeMap::range`, or `None` when the range is empty (where `range` would panic).
    pub fn bounds(&self) -> Option<KeyBounds<'a>> {
        match *self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(k) => Some((Bound::Included(k), Bound::Unbounded)),
            KeyRange::Between(k, e) => Some((Bound::Included(k), Bound::Excluded(e))),
            KeyRange::Empty => None,
        }
    }

    /// Whether `k` falls in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(s) => k == s,
            KeyRange::From(s) => k >= s,
            KeyRange::Between(s, e) => k >= s && k < e,
            KeyRange::Empty => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put(2), put(4), delete(6), put(8), put(10): two generations, the second open.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2), 2, 1);
        ki.put(r(4), 2, 2);
        ki.tombstone(r(6));
        ki.put(r(8), 8, 1);
        ki.put(r(10), 8, 2);
        ki
    }

    #[test]
    fn key_index_generations_and_visibility() {
        let ki = sample();
        assert_eq!(ki.generations().len(), 2);
        assert_eq!(ki.generations()[0].revs.as_slice(), [r(2), r(4), r(6)]);
        assert_eq!(ki.generations()[1].created, 8);
        assert_eq!(ki.get(1), None);
        let s = ki.get(3).unwrap();
        assert_eq!((s.modified, s.created, s.version), (r(2), 2, 1));
        let s = ki.get(5).unwrap();
        assert_eq!((s.modified, s.created, s.version), (r(4), 2, 2));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        let s = ki.get(8).unwrap();
        assert_eq!((s.modified, s.created, s.version), (r(8), 8, 1));
        let s = ki.get(100).unwrap();
        assert_eq!((s.modified, s.created, s.version), (r(10), 8, 2));
        assert!(ki.is_live());
        assert_eq!(ki.prev_of(r(4)), Some(r(2)));
        assert_eq!(ki.prev_of(r(6)), Some(r(4)));
        assert_eq!(ki.prev_of(r(8)), None);
        assert_eq!(ki.prev_of(r(2)), None);
    }

    #[test]
    fn key_index_compaction_keeps_visible_revision() {
        let mut ki = sample();
        let mut removed = Vec::new();
        // At 5 the visible revision is 4: revision 2 goes.
        assert!(!ki.compact(5, &mut removed));
        assert_eq!(removed, vec![(r(2), false)]);
        assert_eq!(ki.get(5).unwrap().version, 2);
        // At 7 the first generation ended (tombstone 6): all of it goes.
        removed.clear();
        assert!(!ki.compact(7, &mut removed));
        assert_eq!(removed, vec![(r(4), false), (r(6), true)]);
        assert_eq!(ki.generations().len(), 1);
        // At 9 revision 8 stays (visible); at 10, 8 goes and versions stay right.
        removed.clear();
        assert!(!ki.compact(9, &mut removed));
        assert!(removed.is_empty());
        assert!(!ki.compact(10, &mut removed));
        assert_eq!(removed, vec![(r(8), false)]);
        assert_eq!(ki.get(10).unwrap().version, 2);
        assert_eq!(ki.get(10).unwrap().created, 8);
    }

    #[test]
    fn key_index_compaction_of_deleted_key_empties_it() {
        let mut ki = KeyIndex::new();
        ki.put(r(1), 1, 1);
        ki.tombstone(r(2));
        let mut removed = Vec::new();
        assert!(ki.compact(2, &mut removed));
        assert_eq!(removed, vec![(r(1), false), (r(2), true)]);
        assert!(!ki.is_live());
    }

    #[test]
    fn key_range_forms() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a"));
        assert_eq!(KeyRange::new(b"a", b"\0"), KeyRange::From(b"a"));
        assert_eq!(KeyRange::new(b"b", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"a", b"a"), KeyRange::Empty);
        let between = KeyRange::new(b"a", b"c");
        assert!(between.contains(b"a") && between.contains(b"bzz") && !between.contains(b"c"));
        assert!(KeyRange::new(b"", b"\0").contains(b""));
        assert!(KeyRange::Empty.bounds().is_none());
    }
}
