//! Which synced watchers an event's key reaches, without a check per watcher.
//!
//! A watch covers one key, a prefix (`range_end` is the prefix's end, as `--prefix` sends), every
//! key from a start on (`range_end` `"\0"`), or any other range. Each kind has an index that finds
//! exactly the watches covering a key, in time that does not grow with the number of watches:
//!
//! - one key: a hash map from the key;
//! - a prefix: a hash map from the prefix, probed with those prefixes of the key whose lengths some
//!   watch uses (Kubernetes-style key spaces use a handful of lengths);
//! - from a start on: an ordered map, whose entries at or below the key all cover it;
//! - any other range: a list checked one by one (etcd's `watcherGroup` keeps an interval tree for
//!   these; clients hardly ever send them, so the list stays short).
//!
//! It holds ids only; the hub keeps the watchers themselves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use super::{in_range, WatchId};

/// The kind of range a watch covers, by its `key` and `range_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Prefix,
    From,
    Range,
}

fn kind(key: &[u8], range_end: &[u8]) -> Kind {
    if range_end.is_empty() {
        Kind::Key
    } else if range_end == [0] {
        Kind::From
    } else if range_end == prefix_end(key).as_slice() {
        Kind::Prefix
    } else {
        Kind::Range
    }
}

/// The end of the range of every key starting with `prefix` (etcd's `GetPrefixRangeEnd`): `"\0"`
/// (every key from `prefix` on) when `prefix` is empty or all `0xff`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The synced watchers, indexed by the keys they cover.
#[derive(Default)]
pub(super) struct SyncedIndex {
    keys: HashMap<Vec<u8>, HashSet<WatchId>>,
    prefixes: HashMap<Vec<u8>, HashSet<WatchId>>,
    /// How many indexed prefixes have each length: the lengths a key is probed at.
    prefix_lens: BTreeMap<usize, usize>,
    from: BTreeMap<Vec<u8>, HashSet<WatchId>>,
    ranges: HashMap<WatchId, (Vec<u8>, Vec<u8>)>,
}

impl SyncedIndex {
    /// Indexes watch `id` over `key`..`range_end` (etcd's conventions, see [`in_range`]).
    pub(super) fn insert(&mut self, id: WatchId, key: &[u8], range_end: &[u8]) {
        match kind(key, range_end) {
            Kind::Key => {
                self.keys.entry(key.to_vec()).or_default().insert(id);
            }
            Kind::Prefix => {
                if self.prefixes.entry(key.to_vec()).or_default().insert(id) {
                    *self.prefix_lens.entry(key.len()).or_default() += 1;
                }
            }
            Kind::From => {
                self.from.entry(key.to_vec()).or_default().insert(id);
            }
            Kind::Range => {
                self.ranges.insert(id, (key.to_vec(), range_end.to_vec()));
            }
        }
    }

    /// Removes watch `id`, indexed with the same `key` and `range_end` (a no-op if it is not there).
    pub(super) fn remove(&mut self, id: WatchId, key: &[u8], range_end: &[u8]) {
        fn take(map: &mut HashMap<Vec<u8>, HashSet<WatchId>>, key: &[u8], id: WatchId) -> bool {
            let Some(ids) = map.get_mut(key) else {
                return false;
            };
            let removed = ids.remove(&id);
            if ids.is_empty() {
                map.remove(key);
            }
            removed
        }
        match kind(key, range_end) {
            Kind::Key => {
                take(&mut self.keys, key, id);
            }
            Kind::Prefix => {
                if take(&mut self.prefixes, key, id) {
                    if let Some(n) = self.prefix_lens.get_mut(&key.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&key.len());
                        }
                    }
                }
            }
            Kind::From => {
                if let Some(ids) = self.from.get_mut(key) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.from.remove(key);
                    }
                }
            }
            Kind::Range => {
                self.ranges.remove(&id);
            }
        }
    }

    /// Calls `f` once for every watch whose range covers `key`.
    pub(super) fn for_each_match(&self, key: &[u8], mut f: impl FnMut(WatchId)) {
        if let Some(ids) = self.keys.get(key) {
            ids.iter().copied().for_each(&mut f);
        }
        for &len in self.prefix_lens.keys() {
            if len > key.len() {
                break;
            }
            if let Some(ids) = self.prefixes.get(&key[..len]) {
                ids.iter().copied().for_each(&mut f);
            }
        }
        let at_or_below = (Bound::Unbounded, Bound::Included(key));
        for ids in self.from.range::<[u8], _>(at_or_below).map(|(_, ids)| ids) {
            ids.iter().copied().for_each(&mut f);
        }
        for (id, (start, end)) in &self.ranges {
            if in_range(key, start, end) {
                f(*id);
            }
        }
    }

    /// Forgets every watch.
    pub(super) fn clear(&mut self) {
        *self = SyncedIndex::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    /// The index agrees with checking every watch by [`in_range`], for every kind of range, through
    /// inserts and removals.
    #[test]
    fn matches_exactly_what_in_range_says() {
        let watches: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), vec![]),
            (b"ab".to_vec(), vec![]),
            (b"a".to_vec(), prefix_end(b"a")),
            (b"ab".to_vec(), prefix_end(b"ab")),
            (b"abc".to_vec(), prefix_end(b"abc")),
            (b"b".to_vec(), prefix_end(b"b")),
            (vec![0xff, 0xff], prefix_end(&[0xff, 0xff])), // from 0xffff on
            (b"ab".to_vec(), vec![0]),
            (vec![0], vec![0]), // everything
            (b"a".to_vec(), b"ac".to_vec()),
            (b"b".to_vec(), b"bb".to_vec()),
            (b"a".to_vec(), prefix_end(b"a")), // a second watch on the same prefix
        ];
        let keys: Vec<&[u8]> = vec![
            b"",
            b"a",
            b"a0",
            b"ab",
            b"abc",
            b"abcd",
            b"ac",
            b"b",
            b"ba",
            b"bb",
            b"c",
            &[0xff],
            &[0xff, 0xff],
            &[0xff, 0xff, 0],
            b"\0",
        ];
        let mut index = SyncedIndex::default();
        for (i, (k, e)) in watches.iter().enumerate() {
            index.insert(WatchId(i as u64), k, e);
        }
        let check = |index: &SyncedIndex, live: &[usize]| {
            for key in &keys {
                let mut got = Vec::new();
                index.for_each_match(key, |id| got.push(id.0 as usize));
                got.sort_unstable();
                let want: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&i| in_range(key, &watches[i].0, &watches[i].1))
                    .collect();
                assert_eq!(got, want, "key {key:?}");
            }
        };
        let mut live: Vec<usize> = (0..watches.len()).collect();
        check(&index, &live);
        for victim in [2, 7, 9, 0, 11, 4] {
            index.remove(
                WatchId(victim as u64),
                &watches[victim].0,
                &watches[victim].1,
            );
            live.retain(|&i| i != victim);
            check(&index, &live);
        }
        assert!(index
            .prefix_lens
            .keys()
            .all(|&len| index.prefixes.keys().any(|p| p.len() == len)));
    }
}
