//! Membership: which members the cluster has, as every member agrees on it.
//!
//! The membership is state like the keys: it lives in the backend (`meta` table, key `members`,
//! a `peerpb::Members`), is written only by the apply step, and changes only through entries of
//! the Raft log, so every member holds the same list at the same index. Raft's own configuration
//! (voters and learners) is derived from it: a restarted member hands Raft the configuration of its
//! backend, which is exactly the one at its consistent index.
//!
//! Two kinds of entries change it. Raft configuration changes (add a voter or a learner, promote a
//! learner, remove a member) carry the member in their context; a member's attributes (its name and
//! client URLs, published once it starts, and its peer URLs, changed by `MemberUpdate`) travel as
//! ordinary requests, as in etcd. Applying either is idempotent, so an entry seen again after a
//! snapshot changes nothing.
//!
//! A removed member's id is remembered: it may never come back, and its messages are refused.

use std::sync::RwLock;

use prost::Message as _;

use crate::config::{url_text, Config};
use crate::error::{Error, Result};
use crate::mvcc::backend::{Backend, Table, WriteBatch};
use crate::proto::etcdserverpb;
use crate::proto::peerpb;

/// `meta` key of the membership record.
pub const META_MEMBERS: &[u8] = b"members";

/// The membership as applied here.
#[derive(Debug, Default)]
pub struct Membership {
    members: RwLock<peerpb::Members>,
}

/// What a configuration change does to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Adds a voter, or promotes a learner.
    AddVoter,
    /// Adds a learner.
    AddLearner,
    /// Removes a member.
    Remove,
}

impl Membership {
    /// The membership stored in `backend`, if any.
    pub fn load(backend: &Backend) -> Result<Option<peerpb::Members>> {
        match backend.get(Table::Meta, META_MEMBERS)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(peerpb::Members::decode(bytes.as_slice())?)),
        }
    }

    /// A membership holding `members`.
    pub fn new(members: peerpb::Members) -> Membership {
        Membership {
            members: RwLock::new(members),
        }
    }

    /// The bootstrap membership of `--initial-cluster`: every member a voter, with its name and peer
    /// URLs; client URLs are known once each member publishes them (`Server::publish_attributes`).
    pub fn bootstrap(config: &Config) -> peerpb::Members {
        peerpb::Members {
            cluster_id: config.cluster_id(),
            members: config
                .initial_members()
                .into_iter()
                .map(|(id, name, urls)| peerpb::Member {
                    id,
                    name,
                    peer_urls: urls.iter().map(url_text).collect(),
                    client_urls: Vec::new(),
                    is_learner: false,
                })
                .collect(),
            removed: Vec::new(),
        }
    }

    /// The current membership.
    pub fn get(&self) -> peerpb::Members {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, peerpb::Members> {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the membership (after a snapshot was installed).
    pub fn replace(&self, members: peerpb::Members) {
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
    }

    /// The member `id`, if it is one.
    pub fn member(&self, id: u64) -> Option<peerpb::Member> {
        self.read().members.iter().find(|m| m.id == id).cloned()
    }

    /// Whether `id` was removed from the cluster (asked for every message a peer sends: no copy).
    pub fn is_removed(&self, id: u64) -> bool {
        self.read().removed.contains(&id)
    }

    /// Raft's configuration for this membership: (voters, learners).
    pub fn conf(&self) -> (Vec<u64>, Vec<u64>) {
        conf_of(&self.read())
    }

    /// Whether `id` is the only voter, with no learner; and whether it is a learner. The server
    /// keeps both in flags its hot paths read (`Shared::solo`, `Shared::learner`).
    pub fn roles_of(&self, id: u64) -> (bool, bool) {
        let (voters, learners) = self.conf();
        (
            voters == [id] && learners.is_empty(),
            learners.contains(&id),
        )
    }

    /// Applies a configuration change of `member` and adds the record to `batch`.
    pub fn apply_change(&self, change: Change, member: &peerpb::Member, batch: &mut WriteBatch) {
        self.update(batch, |m| match change {
            Change::AddVoter | Change::AddLearner => {
                let learner = change == Change::AddLearner;
                match m.members.iter_mut().find(|x| x.id == member.id) {
                    Some(x) => {
                        // A promotion keeps what the member published.
                        x.is_learner = learner;
                        if x.peer_urls.is_empty() {
                            x.peer_urls = member.peer_urls.clone();
                        }
                    }
                    None => {
                        let mut added = member.clone();
                        added.is_learner = learner;
                        m.members.push(added);
                    }
                }
            }
            Change::Remove => {
                m.members.retain(|x| x.id != member.id);
                if !m.removed.contains(&member.id) {
                    m.removed.push(member.id);
                }
            }
        });
    }

    /// Records what member `id` published (its name and client URLs) or what `MemberUpdate` changed
    /// (its peer URLs, when `peer_urls` is not empty).
    pub fn apply_attributes(&self, attrs: &peerpb::Member, batch: &mut WriteBatch) {
        self.update(batch, |m| {
            if let Some(x) = m.members.iter_mut().find(|x| x.id == attrs.id) {
                if !attrs.name.is_empty() {
                    x.name = attrs.name.clone();
                }
                if !attrs.client_urls.is_empty() {
                    x.client_urls = attrs.client_urls.clone();
                }
                if !attrs.peer_urls.is_empty() {
                    x.peer_urls = attrs.peer_urls.clone();
                }
            }
        });
    }

    /// Writes the whole membership into `batch` (a bootstrap, before any entry).
    pub fn save(&self, batch: &mut WriteBatch) {
        batch.put(
            Table::Meta,
            META_MEMBERS.to_vec(),
            self.get().encode_to_vec(),
        );
    }

    fn update(&self, batch: &mut WriteBatch, f: impl FnOnce(&mut peerpb::Members)) {
        let mut m = self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut m);
        batch.put(Table::Meta, META_MEMBERS.to_vec(), m.encode_to_vec());
    }

    /// The members as etcd's `MemberList` shows them, ordered by id as etcd does.
    pub fn etcd_members(&self) -> Vec<etcdserverpb::Member> {
        let mut v: Vec<etcdserverpb::Member> = self.get().members.iter().map(to_etcd).collect();
        v.sort_by_key(|m| m.id);
        v
    }
}

/// Raft's (voters, learners) of a membership.
pub fn conf_of(m: &peerpb::Members) -> (Vec<u64>, Vec<u64>) {
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for x in &m.members {
        if x.is_learner {
            learners.push(x.id);
        } else {
            voters.push(x.id);
        }
    }
    voters.sort_unstable();
    learners.sort_unstable();
    (voters, learners)
}

/// One member in etcd's wire form.
pub fn to_etcd(m: &peerpb::Member) -> etcdserverpb::Member {
    etcdserverpb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// etcd's strict reconfiguration check for adding a voter (`IsReadyToAddVotingMember`): the
/// started voters (those with a name: bootstrapped, or published since) must still be a quorum of
/// the voters after the change. A one-member cluster may always add a second.
pub fn ready_to_add_voter(m: &peerpb::Members) -> bool {
    let voters: Vec<&peerpb::Member> = m.members.iter().filter(|x| !x.is_learner).collect();
    let started = voters.iter().filter(|x| !x.name.is_empty()).count();
    let after = voters.len() + 1;
    if started == 1 && after == 2 {
        return true;
    }
    started > after / 2
}

/// etcd's check for removing voter `id` (`IsReadyToRemoveVotingMember`): the started voters left
/// must be a quorum of the voters left.
pub fn ready_to_remove_voter(m: &peerpb::Members, id: u64) -> bool {
    let left: Vec<&peerpb::Member> = m
        .members
        .iter()
        .filter(|x| !x.is_learner && x.id != id)
        .collect();
    let started = left.iter().filter(|x| !x.name.is_empty()).count();
    started > left.len() / 2
}

/// etcd's check for promoting learner `id` (`IsReadyToPromoteMember`): counted as a voter added.
pub fn ready_to_promote(m: &peerpb::Members, id: u64) -> bool {
    let voters: Vec<&peerpb::Member> = m.members.iter().filter(|x| !x.is_learner).collect();
    let mut started = voters.iter().filter(|x| !x.name.is_empty()).count();
    if m.members.iter().any(|x| x.id == id && !x.name.is_empty()) {
        started += 1;
    }
    let after = voters.len() + 1;
    if started == 1 && after == 2 {
        return true;
    }
    started > after / 2
}

/// Checks peer URLs given to `MemberAdd` or `MemberUpdate`: valid http(s) URLs, none already used by
/// another member (`except`, the member being updated).
pub fn check_peer_urls(
    members: &peerpb::Members,
    urls: &[String],
    except: Option<u64>,
) -> Result<Vec<String>> {
    if urls.is_empty() {
        return Err(Error::InvalidArgument(
            "etcdserver: peer URLs are required".into(),
        ));
    }
    let mut out = Vec::new();
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|e| {
            Error::InvalidArgument(format!("etcdserver: invalid peer URL {u:?}: {e}"))
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" || parsed.port().is_none() {
            return Err(Error::InvalidArgument(format!(
                "etcdserver: invalid peer URL {u:?}: must be http(s)://host:port"
            )));
        }
        out.push(url_text(&parsed));
    }
    for m in &members.members {
        if Some(m.id) == except {
            continue;
        }
        if m.peer_urls.iter().any(|p| out.contains(p)) {
            return Err(Error::PeerUrlExists);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str) -> peerpb::Member {
        peerpb::Member {
            id,
            peer_urls: vec![url.into()],
            ..Default::default()
        }
    }

    #[test]
    fn changes_are_idempotent_and_derive_raft_conf() {
        let m = Membership::new(peerpb::Members {
            cluster_id: 9,
            members: vec![member(1, "http://a:1"), member(2, "http://b:1")],
            removed: vec![],
        });
        let mut batch = WriteBatch::new();
        let learner = member(3, "http://c:1");
        m.apply_change(Change::AddLearner, &learner, &mut batch);
        m.apply_change(Change::AddLearner, &learner, &mut batch);
        assert_eq!(m.conf(), (vec![1, 2], vec![3]));
        m.apply_attributes(
            &peerpb::Member {
                id: 3,
                name: "c".into(),
                client_urls: vec!["http://c:2".into()],
                ..Default::default()
            },
            &mut batch,
        );
        m.apply_change(Change::AddVoter, &member(3, ""), &mut batch);
        assert_eq!(m.conf(), (vec![1, 2, 3], vec![]));
        let c = m.member(3).expect("member 3");
        assert_eq!(c.name, "c", "a promotion keeps the published name");
        assert_eq!(c.peer_urls, vec!["http://c:1".to_string()]);
        m.apply_change(Change::Remove, &member(1, ""), &mut batch);
        m.apply_change(Change::Remove, &member(1, ""), &mut batch);
        assert_eq!(m.conf(), (vec![2, 3], vec![]));
        assert!(m.is_removed(1));
        assert_eq!(m.get().removed, vec![1]);
    }

    fn named(id: u64, name: &str, learner: bool) -> peerpb::Member {
        peerpb::Member {
            id,
            name: name.into(),
            is_learner: learner,
            ..Default::default()
        }
    }

    #[test]
    fn strict_reconfiguration_follows_etcds_counts() {
        let one = peerpb::Members {
            members: vec![named(1, "a", false)],
            ..Default::default()
        };
        assert!(ready_to_add_voter(&one), "1 -> 2 is allowed");
        // Three voters, one never started (added, not yet published): 2 of 4 is no quorum.
        let three = peerpb::Members {
            members: vec![
                named(1, "a", false),
                named(2, "b", false),
                named(3, "", false),
            ],
            ..Default::default()
        };
        assert!(!ready_to_add_voter(&three));
        assert!(ready_to_remove_voter(&three, 3));
        assert!(!ready_to_remove_voter(&three, 1), "1 started of 2 left");
        let with_learner = peerpb::Members {
            members: vec![
                named(1, "a", false),
                named(2, "b", false),
                named(3, "c", false),
                named(4, "d", true),
            ],
            ..Default::default()
        };
        assert!(ready_to_promote(&with_learner, 4));
        assert!(ready_to_add_voter(&with_learner));
    }

    #[test]
    fn peer_urls_must_be_new_and_valid() {
        let members = peerpb::Members {
            members: vec![member(1, "http://127.0.0.1:2380")],
            ..Default::default()
        };
        assert!(matches!(
            check_peer_urls(&members, &["http://127.0.0.1:2380/".into()], None),
            Err(Error::PeerUrlExists)
        ));
        assert!(check_peer_urls(&members, &["http://127.0.0.1:2380".into()], Some(1)).is_ok());
        assert!(check_peer_urls(&members, &["nonsense".into()], None).is_err());
        assert!(check_peer_urls(&members, &[], None).is_err());
        assert_eq!(
            check_peer_urls(&members, &["http://127.0.0.1:2381".into()], None).unwrap(),
            vec!["http://127.0.0.1:2381".to_string()]
        );
    }
}
