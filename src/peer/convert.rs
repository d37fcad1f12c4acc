//! Raft's messages between raft-rs's types (rust-protobuf) and the peer protocol's (prost).
//!
//! Everything a member receives is decoded by prost into `peerpb` types and converted here, field by
//! field; rust-protobuf never parses a byte from the network. A message whose type is not one a peer
//! may send (Raft's local messages: hup, beat, unreachable, snapshot status, check quorum) is refused
//! here, before it reaches Raft.

use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};

use crate::error::{Error, Result};
use crate::proto::peerpb;

/// A Raft message for the wire. A snapshot's data is left out: it travels on the Snapshot call.
pub fn to_wire(m: &Message) -> peerpb::Message {
    peerpb::Message {
        msg_type: m.msg_type as i32,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.entries.iter().map(entry_to_wire).collect(),
        commit: m.commit,
        snapshot: m.snapshot.as_ref().map(|s| meta_to_wire(s.get_metadata())),
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.to_vec(),
        priority: m.priority,
        commit_term: m.commit_term,
    }
}

fn entry_to_wire(e: &Entry) -> peerpb::Entry {
    peerpb::Entry {
        entry_type: e.entry_type as i32,
        term: e.term,
        index: e.index,
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

/// A metadata without a `ConfState` stays without one, so that the conversion is exact both ways.
fn meta_to_wire(m: &SnapshotMetadata) -> peerpb::SnapshotMetadata {
    let cs = m.get_conf_state();
    peerpb::SnapshotMetadata {
        conf_state: m.has_conf_state().then(|| peerpb::ConfState {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }),
        index: m.index,
        term: m.term,
    }
}

/// A Raft message from the wire; an error for a message no peer may send.
pub fn from_wire(m: peerpb::Message) -> Result<Message> {
    let msg_type = message_type(m.msg_type)?;
    let mut out = Message {
        msg_type,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        commit: m.commit,
        commit_term: m.commit_term,
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.into(),
        priority: m.priority,
        ..Default::default()
    };
    for e in m.entries {
        out.entries.push(entry_from_wire(e)?);
    }
    if let Some(meta) = m.snapshot {
        let mut snap = Snapshot::default();
        *snap.mut_metadata() = meta_from_wire(meta);
        out.set_snapshot(snap);
    }
    Ok(out)
}

fn entry_from_wire(e: peerpb::Entry) -> Result<Entry> {
    let entry_type = match e.entry_type {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        other => {
            return Err(Error::InvalidArgument(format!(
                "peer message: unknown entry type {other}"
            )))
        }
    };
    Ok(Entry {
        entry_type,
        term: e.term,
        index: e.index,
        data: e.data.into(),
        context: e.context.into(),
        ..Default::default()
    })
}

fn meta_from_wire(m: peerpb::SnapshotMetadata) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: m.index,
        term: m.term,
        ..Default::default()
    };
    if let Some(cs) = m.conf_state {
        meta.set_conf_state(ConfState {
            voters: cs.voters,
            learners: cs.learners,
            voters_outgoing: cs.voters_outgoing,
            learners_next: cs.learners_next,
            auto_leave: cs.auto_leave,
            ..Default::default()
        });
    }
    meta
}

/// The message types a peer may send; Raft's local ones are refused.
fn message_type(t: i32) -> Result<MessageType> {
    use MessageType::*;
    let ty = match t {
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        other => {
            return Err(Error::InvalidArgument(format!(
                "peer message: type {other} is not one a peer sends"
            )))
        }
    };
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() {
        let mut m = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            commit: 40,
            commit_term: 6,
            reject: true,
            reject_hint: 3,
            context: b"ctx".to_vec().into(),
            priority: -1,
            ..Default::default()
        };
        m.entries.push(Entry {
            entry_type: EntryType::EntryConfChange,
            term: 7,
            index: 42,
            data: b"data".to_vec().into(),
            context: b"c".to_vec().into(),
            ..Default::default()
        });
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.mut_metadata().mut_conf_state().learners = vec![4];
        m.set_snapshot(snap);
        let back = from_wire(to_wire(&m)).expect("converts");
        assert_eq!(back, m);
    }

    /// Found by the `proto` fuzz target (corpus file `fuzz/corpus/proto/regression-snapshot-without-conf-state`).
    #[test]
    fn a_snapshot_without_conf_state_survives_the_round_trip() {
        let wire = peerpb::Message {
            msg_type: MessageType::MsgSnapshot as i32,
            to: 2,
            from: 1,
            snapshot: Some(peerpb::SnapshotMetadata {
                conf_state: None,
                index: 10,
                term: 2,
            }),
            ..Default::default()
        };
        let m = from_wire(wire.clone()).expect("converts");
        assert!(!m.get_snapshot().get_metadata().has_conf_state());
        assert_eq!(to_wire(&m), wire);
        assert_eq!(from_wire(to_wire(&m)).expect("converts again"), m);
    }

    #[test]
    fn local_messages_are_refused() {
        for t in [0, 1, 10, 11, 12, 19, -1] {
            let m = peerpb::Message {
                msg_type: t,
                ..Default::default()
            };
            assert!(from_wire(m).is_err(), "type {t}");
        }
        let bad_entry = peerpb::Message {
            msg_type: 3,
            entries: vec![peerpb::Entry {
                entry_type: 9,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(from_wire(bad_entry).is_err());
    }
}
