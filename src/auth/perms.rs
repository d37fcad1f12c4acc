//! Key permissions as intervals: what a user may read and write, merged from its roles.
//!
//! A permission covers one key (`range_end` empty), a half-open range `[key, range_end)`, or every
//! key from `key` on (`range_end` = `"\0"`), exactly as a request names its keys. A user's
//! permissions of one kind are merged into sorted, disjoint intervals once per change of the auth
//! state ([`UserPerms::of`]), so a check is a binary search: a request is allowed when its whole
//! interval lies inside one merged interval. A single key `k` is the interval `[k, k + "\0")`, its
//! immediate successor, so neighbouring keys and ranges merge as they should.
//!
//! The `root` role allows everything; etcd's other built-in rules (who is an administrator) live in
//! the auth store, not here.

use crate::proto::authpb::permission::Type as PermType;
use crate::proto::authpb::Role;

/// The end of an interval: a key (exclusive), or no end at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

/// The interval a `(key, range_end)` pair names, in a request or a permission.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    match range_end {
        [] => {
            let mut next = Vec::with_capacity(key.len() + 1);
            next.extend_from_slice(key);
            next.push(0);
            (key.to_vec(), End::Key(next))
        }
        [0] => (key.to_vec(), End::Unbounded),
        end => (key.to_vec(), End::Key(end.to_vec())),
    }
}

/// Sorted, disjoint, non-adjacent intervals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Intervals(Vec<(Vec<u8>, End)>);

impl Intervals {
    /// Merges `list` (any order, overlapping or not). Empty intervals (end at or before start) are
    /// dropped: they allow nothing.
    fn merge(mut list: Vec<(Vec<u8>, End)>) -> Intervals {
        list.retain(|(start, end)| match end {
            End::Key(e) => e > start,
            End::Unbounded => true,
        });
        list.sort();
        let mut out: Vec<(Vec<u8>, End)> = Vec::with_capacity(list.len());
        for (start, end) in list {
            if let Some(last) = out.last_mut() {
                let touches = match &last.1 {
                    End::Unbounded => true,
                    End::Key(e) => start <= *e,
                };
                if touches {
                    if end > last.1 {
                        last.1 = end;
                    }
                    continue;
                }
            }
            out.push((start, end));
        }
        Intervals(out)
    }

    /// Whether `[key, range_end)` (in a request's terms) lies inside one interval.
    fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let (start, end) = interval(key, range_end);
        if let End::Key(e) = &end {
            if *e <= start {
                // An empty range reads nothing; etcd still checks its start key.
                return self.covers(key, &[]);
            }
        }
        // The last interval starting at or before `start`.
        let i = self
            .0
            .partition_point(|(s, _)| s.as_slice() <= start.as_slice());
        if i == 0 {
            return false;
        }
        let (_, have) = &self.0[i - 1];
        match (have, &end) {
            (End::Unbounded, _) => true,
            (End::Key(_), End::Unbounded) => false,
            (End::Key(h), End::Key(e)) => e <= h && start < *h,
        }
    }
}

/// One user's merged permissions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserPerms {
    /// The user has the `root` role: everything is allowed.
    root: bool,
    read: Intervals,
    write: Intervals,
}

impl UserPerms {
    /// The permissions that `roles` (the roles a user has, as stored) give.
    pub fn of<'a>(roles: impl IntoIterator<Item = &'a Role>, has_root: bool) -> UserPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for role in roles {
            for p in &role.key_permission {
                let iv = interval(&p.key, &p.range_end);
                match PermType::try_from(p.perm_type).unwrap_or(PermType::Read) {
                    PermType::Read => read.push(iv),
                    PermType::Write => write.push(iv),
                    PermType::Readwrite => {
                        read.push(iv.clone());
                        write.push(iv);
                    }
                }
            }
        }
        UserPerms {
            root: has_root,
            read: Intervals::merge(read),
            write: Intervals::merge(write),
        }
    }

    /// Whether the user may read `[key, range_end)`.
    pub fn can_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.root || self.read.covers(key, range_end)
    }

    /// Whether the user may write `[key, range_end)`.
    pub fn can_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.root || self.write.covers(key, range_end)
    }

    /// Whether the user has the `root` role.
    pub fn is_root(&self) -> bool {
        self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;

    fn role(perms: &[(PermType, &str, &str)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn single_keys_ranges_and_open_ends() {
        let r = role(&[
            (PermType::Read, "a", ""),
            (PermType::Readwrite, "b", "c"),
            (PermType::Write, "e", "f"),
            (PermType::Read, "g", "\0"),
        ]);
        let p = UserPerms::of([&r], false);
        assert!(p.can_read(b"a", b""));
        assert!(!p.can_read(b"a0", b""), "a single key is not a prefix");
        assert!(!p.can_write(b"a", b""));
        assert!(p.can_read(b"b", b"c") && p.can_write(b"b/x", b""));
        assert!(!p.can_read(b"b", b"d"), "beyond the granted range");
        assert!(!p.can_read(b"", b"\0"), "the whole key space");
        assert!(p.can_write(b"e1", b"") && !p.can_read(b"e1", b""));
        assert!(!p.can_write(b"f", b""), "range ends are exclusive");
        assert!(p.can_read(b"g", b"\0") && p.can_read(b"zzz", b"") && p.can_read(b"h", b"i"));
        assert!(!p.can_read(b"f", b"\0"));
    }

    #[test]
    fn neighbours_merge_and_root_allows_everything() {
        // [a, a\0) and [a\0, b) touch: together they cover [a, b).
        let r = role(&[(PermType::Read, "a", ""), (PermType::Read, "a\0", "b")]);
        let p = UserPerms::of([&r], false);
        assert!(p.can_read(b"a", b"b"));
        // Two roles' intervals merge too.
        let r2 = role(&[(PermType::Read, "b", "c")]);
        assert!(UserPerms::of([&r, &r2], false).can_read(b"a", b"c"));
        assert!(!UserPerms::of([&r, &r2], false).can_read(b"a", b"c\0"));
        assert!(UserPerms::of([], true).can_write(b"", b"\0"));
        assert!(!UserPerms::of([], false).can_read(b"x", b""));
    }
}
