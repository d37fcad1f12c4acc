//! The Raft Ready loop: the one thread that owns the consensus state and the WAL.
//!
//! Each turn it takes every message that is waiting (proposals, snapshot requests), so all proposals
//! that arrived during the previous fsync are appended together and share the next one: that is the
//! group commit. The order inside a turn is raft-rs's: committed entries are applied, new entries and
//! the hard state are written to the WAL and fsynced, and only then does `advance` let Raft count them
//! as persisted. On a single voter an entry commits only once it is persisted, so nothing is applied,
//! and therefore nothing is acknowledged, before its fsync.
//!
//! Committed entries are applied on this thread (`apply.rs`), right after the fsync that committed
//! them. An apply thread of its own would let applying one batch overlap the next fsync, but it costs
//! two thread hand-offs per batch, and on a machine whose cores are busy (clients and server sharing
//! two cores) those wake-ups cost more CPU, and more waiting for a core, than the overlap saves:
//! measured under `benchmark put --clients 64`, about a quarter fewer context switches and less CPU
//! per put. Applying a batch of plain puts takes a few microseconds per entry, against ~150-300 µs
//! for the fsync.
//!
//! Left out until peers exist: sending messages, receiving snapshots, read index.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::*;
use raft::storage::MemStorage;
use raft::StateRole;

use crate::error::{Error, Result};
use crate::server::apply::Applier;
use crate::server::Shared;
use crate::wal::{SnapshotMark, Wal};

/// How often Raft's logical clock ticks.
pub const TICK: Duration = Duration::from_millis(100);
/// At most this many queued messages are taken into one turn (bounds the size of one WAL write).
const MAX_BATCH: usize = 4096;

/// What other threads ask of the Raft loop.
pub enum RaftMsg {
    /// Propose an encoded `RaftRequest` whose waiter has id `id`.
    Propose {
        /// Waiter id, answered with an error if Raft drops the proposal.
        id: u64,
        /// The encoded request.
        data: Vec<u8>,
    },
    /// The backend durably holds everything up to `index`: record a snapshot there and release the
    /// WAL segments below it.
    Snapshot {
        /// The applied index the snapshot covers.
        index: u64,
    },
    /// Stop the loop.
    Stop,
}

/// The state the loop owns.
pub struct RaftLoop {
    /// The consensus core.
    pub node: RawNode<MemStorage>,
    /// The durable log.
    pub wal: Wal,
    /// Incoming requests.
    pub rx: Receiver<RaftMsg>,
    /// Applies committed entries, in order.
    pub applier: Applier,
    /// State shared with the rest of the server.
    pub shared: Arc<Shared>,
}

impl RaftLoop {
    /// Runs until `Stop` or every sender is gone. An error here is fatal: the WAL could not be written.
    pub fn run(mut self) -> Result<()> {
        let mut last_tick = Instant::now();
        // A campaign made before the loop started (single voter) is ready at once.
        self.on_ready()?;
        loop {
            let timeout = TICK.saturating_sub(last_tick.elapsed());
            let first = match self.rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut stop = false;
            if let Some(m) = first {
                stop |= self.handle(m)?;
                // Group commit: everything already queued joins this turn.
                for _ in 0..MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(m) => stop |= self.handle(m)?,
                        Err(_) => break,
                    }
                }
            }
            if last_tick.elapsed() >= TICK {
                self.node.tick();
                last_tick = Instant::now();
            }
            self.on_ready()?;
            if stop {
                break;
            }
        }
        self.applier.finish()
    }

    /// Handles one message; true means stop.
    fn handle(&mut self, m: RaftMsg) -> Result<bool> {
        match m {
            RaftMsg::Propose { id, data } => {
                if let Err(e) = self.node.propose(vec![], data) {
                    // A dropped proposal is answered now; the client never hangs.
                    self.shared.wait.trigger(id, Err(Error::from(e)));
                }
            }
            RaftMsg::Snapshot { index } => self.snapshot(index)?,
            RaftMsg::Stop => return Ok(true),
        }
        Ok(false)
    }

    fn snapshot(&mut self, index: u64) -> Result<()> {
        let store = self.node.raft.raft_log.store.clone();
        let term = raft::Storage::term(&store, index)?;
        let mark = SnapshotMark {
            index,
            term,
            conf_state: self.node.raft.prs().conf().to_conf_state(),
        };
        // The mark is durable before any segment goes: a restart then starts from it.
        self.wal.save_snapshot(&mark)?;
        // Keep the entry at `index` itself, so the log's last term stays known to Raft.
        store.wl().compact(index)?;
        let released = self.wal.release_to(index + 1)?;
        tracing::info!(
            index,
            term,
            released,
            "snapshot: released WAL segments below it"
        );
        self.shared.snapshot_index.store(index, Ordering::Relaxed);
        Ok(())
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let store = self.node.raft.raft_log.store.clone();
        let mut rd = self.node.ready();

        if let Some(ss) = rd.ss() {
            self.shared.leader.store(ss.leader_id, Ordering::Relaxed);
            if ss.raft_state == StateRole::Leader {
                tracing::info!(term = self.node.raft.term, "became leader");
                // Only the leader tracks expiry; a new leader gives every lease its full TTL.
                self.shared.lessor.promote();
            }
        }
        // Single voter: no messages to peers yet (later issues send rd.messages() here).
        if !rd.snapshot().is_empty() {
            return Err(Error::Internal(
                "received a Raft snapshot, which a single-node cluster never sends".into(),
            ));
        }
        self.send_committed(rd.take_committed_entries())?;

        // Persist before acknowledging: one write and one fsync for the whole batch.
        if !rd.entries().is_empty() || rd.hs().is_some() {
            self.wal.save(rd.hs(), rd.entries())?;
            self.shared.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        if !rd.entries().is_empty() {
            store.wl().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
            self.shared.term.store(hs.term, Ordering::Relaxed);
        }

        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
        }
        self.send_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(())
    }

    fn send_committed(&mut self, entries: Vec<Entry>) -> Result<()> {
        if let Some(last) = entries.last() {
            self.shared
                .committed_index
                .store(last.index, Ordering::Relaxed);
            self.applier.apply_batch(&entries)?;
        }
        Ok(())
    }
}
