//! The Raft Ready loop: the consensus state and the WAL, and the turns that move them.
//!
//! Each turn takes every proposal that is waiting, so all proposals that arrived during the previous
//! fsync are appended together and share the next one: that is the group commit. The order inside a
//! turn is raft-rs's: committed entries are applied, new entries and the hard state are written to
//! the WAL and fsynced, and only then does `advance` let Raft count them as persisted. On a single
//! voter an entry commits only once it is persisted, so nothing is applied, and therefore nothing is
//! acknowledged, before its fsync.
//!
//! **Where a turn runs.** The state sits behind one mutex, and a turn runs on whichever thread holds
//! it. The Raft thread ([`RaftLoop::run`]) waits for messages on its channel, ticks Raft's clock
//! and runs a turn for whatever arrives. A connection's task runs the turn itself when it can
//! ([`RaftLoop::try_turn`], called by `server::inline` with the proposals its calls made in one
//! round): when the mutex is free, the loop has not ended, and recent turns were short (a moving
//! average under `--experimental-inline-turn-limit`, 100 µs by default). Handing a proposal to
//! another thread and the answer back costs two wake-ups, and on two vCPUs shared with the clients
//! those cost more than the turn itself: an echo thread that did no work at all took 17-28 % of
//! put-64c's throughput (docs/performance.md, session 9). A turn with a slow fsync (a disk that
//! takes hundreds of microseconds) would hold up every other connection on that worker, so slow
//! turns stay on the Raft thread; the average follows every turn, wherever it ran, so the choice
//! adapts in both directions. Turns that can be told to be slow before they start are left to the
//! Raft thread too: one that will commit the backend (10,000 writes pending) or take a snapshot,
//! and one whose batch holds anything but puts and put-only transactions (a delete or a range may
//! touch any number of keys) or more than 128 KiB of requests. So is every turn while proposals
//! sent to the Raft thread wait for it: a connection's turn would overtake them, and could keep the
//! thread from the mutex for as long as connections keep winning it. A turn that fails ends the
//! loop for every thread, before the mutex is released.
//!
//! Committed entries are applied in the turn, right after the fsync that committed them. An apply
//! thread of its own would let applying one batch overlap the next fsync, but it costs two thread
//! hand-offs per batch, which cost more than the overlap saves here (session 4: 29 % fewer context
//! switches and 11 % less CPU per put without it). When the applied entries make a snapshot due, it
//! is recorded at the end of the same turn.
//!
//! Raft keeps the log in raft-rs's `MemStorage`, but only the part it can still need: the entries not
//! yet applied and a catch-up window of `--experimental-snapshot-catchup-entries` applied ones before
//! them (etcd keeps 5,000 after a snapshot for a slow follower). Older entries live only in the WAL
//! until a snapshot releases their segments, and a restart reads them from there. The window is
//! trimmed a window's worth at a time, because trimming moves the kept entries to the front of the
//! storage's vector. A snapshot therefore takes its term from the apply step, which saw the entry,
//! not from the storage, which may have dropped it.
//!
//! Left out until peers exist: sending messages, receiving snapshots, read index.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use raft::prelude::*;
use raft::storage::MemStorage;
use raft::StateRole;

use crate::error::{Error, Result};
use crate::server::apply::{Applier, SnapshotDue};
use crate::server::Shared;
use crate::wal::{SnapshotMark, Wal};

/// How often Raft's logical clock ticks.
pub const TICK: Duration = Duration::from_millis(100);
/// At most this many queued messages (each one or more proposals) are taken into one turn.
const MAX_BATCH: usize = 4096;
/// A batch whose encoded requests add up to more than this is not run on a connection's task: its
/// WAL write alone would hold the task's thread for long.
const INLINE_BATCH_BYTES: usize = 128 * 1024;

/// What other threads ask of the Raft loop.
pub enum RaftMsg {
    /// Propose these requests, in order.
    Propose(Vec<Proposal>),
    /// Stop the loop.
    Stop,
}

/// One encoded `RaftRequest` to propose.
pub struct Proposal {
    /// Waiter id, answered with an error if Raft drops the proposal.
    pub id: u64,
    /// The encoded request.
    pub data: Vec<u8>,
    /// If applying it costs about as little as a put, at most how many backend writes it makes
    /// (`inline::inline_writes`); only batches of such proposals run on a connection's task.
    pub inline_writes: Option<usize>,
}

/// The state a turn works on, behind the loop's mutex.
pub struct RaftLoop {
    /// The consensus core.
    pub node: RawNode<MemStorage>,
    /// The durable log.
    pub wal: Wal,
    /// Applies committed entries, in order.
    pub applier: Applier,
    /// State shared with the rest of the server.
    pub shared: Arc<Shared>,
    /// Applied entries kept in memory (`--experimental-snapshot-catchup-entries`).
    pub catch_up: u64,
    /// How long turns take, and whether one may run on a connection's task.
    pub turn_cost: TurnCost,
    /// Set when the loop has ended (stopped, or a turn failed): no turn runs after that.
    pub ended: bool,
}

/// What [`RaftLoop::try_turn`] did with a batch.
pub enum Inline {
    /// Proposed, and the turn ran on the calling thread.
    Ran,
    /// The turn failed: the node must stop (the WAL could not be written).
    Failed(Error),
    /// Not run here (the loop is busy, has ended, or its turns are slow): the Raft thread's to take.
    Declined(Vec<Proposal>),
}

/// A moving average of how long turns take (each turn weighs 1/8), against the limit under which a
/// turn may run on a connection's task. A limit of zero keeps every turn on the Raft thread.
#[derive(Debug, Clone)]
pub struct TurnCost {
    average_ns: u64,
    limit_ns: u64,
}

impl TurnCost {
    /// No turn measured yet, and `limit` for running one inline.
    pub fn new(limit: Duration) -> TurnCost {
        TurnCost {
            average_ns: 0,
            limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Counts a turn that took `took`.
    pub fn record(&mut self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // avg += (took - avg) / 8, in integers that cannot overflow.
        self.average_ns = self.average_ns - self.average_ns / 8 + took / 8;
    }

    /// Whether the next turn may run on a connection's task.
    pub fn inline_ok(&self) -> bool {
        self.average_ns < self.limit_ns
    }

    /// The current average (for tests' messages).
    #[cfg(test)]
    pub fn average(&self) -> Duration {
        Duration::from_nanos(self.average_ns)
    }
}

/// The first index of the in-memory log once `applied` is applied: the last `catch_up` applied entries
/// stay (at least the entry at `applied`, whose term Raft needs as the log's last applied term).
pub fn catch_up_start(applied: u64, catch_up: u64) -> u64 {
    applied.saturating_sub(catch_up.max(1)) + 1
}

/// Drops the entries of `store` before the catch-up window behind `applied`, once a whole window's
/// worth has accumulated; returns the first index held afterwards. Never drops an entry after
/// `applied`, nor the last entry.
pub fn trim_log(store: &MemStorage, applied: u64, catch_up: u64) -> Result<u64> {
    let first = raft::Storage::first_index(store)?;
    let last = raft::Storage::last_index(store)?;
    let keep_from = catch_up_start(applied, catch_up).min(last);
    if keep_from >= first.saturating_add(catch_up.max(1)) {
        store.wl().compact(keep_from)?;
        return Ok(keep_from);
    }
    Ok(first)
}

impl RaftLoop {
    /// The Raft thread: runs until `Stop`, every sender is gone, or a turn fails (an error here is
    /// fatal: the WAL could not be written). Marks the loop ended on the way out, so no
    /// connection's task runs a turn after it.
    pub fn run(core: Arc<Mutex<RaftLoop>>, rx: Receiver<RaftMsg>) -> Result<()> {
        let _end = EndOnExit(&core); // also when a turn panics
        Self::turns(&core, &rx)
    }

    fn turns(core: &Mutex<RaftLoop>, rx: &Receiver<RaftMsg>) -> Result<()> {
        let mut last_tick = Instant::now();
        // A campaign made before the loop started (single voter) is ready at once.
        lock(core)?.on_ready()?;
        loop {
            let timeout = TICK.saturating_sub(last_tick.elapsed());
            let first = match rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut this = lock(core)?;
            if this.ended {
                // A turn on a connection's task failed, and the node is stopping: whatever was
                // sent meanwhile is answered, not dropped.
                for m in first.into_iter().chain(rx.try_iter()) {
                    this.refuse(m);
                }
                break;
            }
            let mut stop = false;
            if let Some(m) = first {
                stop |= this.handle(m);
                // Group commit: everything already queued joins this turn.
                for _ in 0..MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => stop |= this.handle(m),
                        Err(_) => break,
                    }
                }
            }
            if last_tick.elapsed() >= TICK {
                this.node.tick();
                last_tick = Instant::now();
            }
            this.on_ready()?;
            if stop {
                // No turn after the last one: a connection's task that took the mutex next would
                // write the WAL while the server shuts down.
                this.ended = true;
                break;
            }
        }
        // The backend commit that makes a clean stop quick to restart is the server's (`Inner::stop`).
        Ok(())
    }

    /// Proposes `batch` and runs the turn on the calling thread, if it may (see [`RaftLoop::inline_ok`]);
    /// otherwise hands the batch back. Never blocks on the mutex.
    pub fn try_turn(core: &Mutex<RaftLoop>, batch: Vec<Proposal>) -> Inline {
        let mut this = match core.try_lock() {
            Ok(this) => this,
            // Busy, or poisoned by a panic in a turn: the Raft thread finds out and stops the node.
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {
                return Inline::Declined(batch)
            }
        };
        if !this.inline_ok(&batch) {
            return Inline::Declined(batch);
        }
        this.propose(batch);
        match this.on_ready() {
            Ok(ran) => {
                if ran {
                    this.shared.inline_turns.fetch_add(1, Ordering::Relaxed);
                }
                Inline::Ran
            }
            Err(e) => Inline::Failed(e),
        }
    }

    /// Whether `batch` may be run on a connection's task: the loop has not ended; nothing waits for
    /// the Raft thread (which would otherwise be overtaken, and could be kept from the mutex for
    /// long); recent turns were short; the batch is small and its requests cheap to apply; and the
    /// turn will neither commit the backend nor take a snapshot.
    fn inline_ok(&self, batch: &[Proposal]) -> bool {
        if self.ended
            || self.shared.raft_queued.load(Ordering::Acquire) != 0
            || !self.turn_cost.inline_ok()
        {
            return false;
        }
        // Total backend writes and bytes, or `None` as soon as one proposal is not light.
        let sized = batch.iter().try_fold((0, 0), |(writes, bytes), p| {
            Some((writes + p.inline_writes?, bytes + p.data.len()))
        });
        let Some((writes, bytes)) = sized else {
            return false;
        };
        let last = self.node.raft.raft_log.last_index();
        bytes <= INLINE_BATCH_BYTES && !self.applier.heavy_ahead(last, batch.len(), writes)
    }

    /// Handles one message; true means stop.
    fn handle(&mut self, m: RaftMsg) -> bool {
        match m {
            RaftMsg::Propose(batch) => {
                self.shared.raft_queued.fetch_sub(1, Ordering::AcqRel);
                self.propose(batch);
                false
            }
            RaftMsg::Stop => true,
        }
    }

    /// Answers a message that arrived after the loop ended.
    fn refuse(&mut self, m: RaftMsg) {
        if let RaftMsg::Propose(batch) = m {
            self.shared.raft_queued.fetch_sub(1, Ordering::AcqRel);
            for p in batch {
                self.shared.wait.trigger(p.id, Err(Error::Stopped));
            }
        }
    }

    fn propose(&mut self, batch: Vec<Proposal>) {
        for Proposal { id, data, .. } in batch {
            if let Err(e) = self.node.propose(vec![], data) {
                // A dropped proposal is answered now; the client never hangs.
                self.shared.wait.trigger(id, Err(Error::from(e)));
            }
        }
    }

    /// Records a snapshot at `index` (of term `term`) and releases the WAL below it. The in-memory log
    /// is left to `trim_log`: it keeps its catch-up window across snapshots, as etcd does.
    fn snapshot(&mut self, index: u64, term: u64) -> Result<()> {
        let mark = SnapshotMark {
            index,
            term,
            conf_state: self.node.raft.prs().conf().to_conf_state(),
        };
        // The mark is durable before any segment goes: a restart then starts from it.
        self.wal.save_snapshot(&mark)?;
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

    /// Runs a turn if Raft has one ready (true if it did), and counts how long it took. A failed
    /// turn ends the loop before its mutex is released, so no other thread runs a turn after it
    /// (raft-rs has already counted the failed turn's entries as handed out).
    fn on_ready(&mut self) -> Result<bool> {
        if !self.node.has_ready() {
            return Ok(false);
        }
        let started = Instant::now();
        let result = self.ready_turn();
        self.turn_cost.record(started.elapsed());
        if result.is_err() {
            self.ended = true;
        }
        result.map(|()| true)
    }

    fn ready_turn(&mut self) -> Result<()> {
        let store = self.node.raft.raft_log.store.clone();
        let mut rd = self.node.ready();

        if let Some(ss) = rd.ss() {
            let leading = ss.raft_state == StateRole::Leader;
            if leading {
                // A new leader's first entry (the empty one raft-rs appends on election): once it
                // is applied, so is every entry an earlier term left in the log. Published before
                // the leader, for `Server::wait_caught_up`.
                let first = self.node.raft.raft_log.last_index();
                self.shared.leader_since.store(first, Ordering::Release);
            }
            self.shared.leader.store(ss.leader_id, Ordering::Release);
            if leading {
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
        let mut snapshot = self.apply_committed(rd.take_committed_entries())?;

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
        snapshot = self
            .apply_committed(light.take_committed_entries())?
            .or(snapshot);
        self.node.advance_apply();
        let first = trim_log(&store, self.node.raft.raft_log.applied, self.catch_up)?;
        self.shared.log_first_index.store(first, Ordering::Relaxed);
        if let Some(due) = snapshot {
            self.snapshot(due.index, due.term)?;
        }
        Ok(())
    }

    /// Applies committed entries; returns the snapshot they made due, if any.
    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<Option<SnapshotDue>> {
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        self.shared
            .committed_index
            .store(last.index, Ordering::Relaxed);
        self.applier.apply_batch(&entries)
    }
}

/// Marks the loop ended when the Raft thread leaves it, however it leaves (a panic included).
struct EndOnExit<'a>(&'a Mutex<RaftLoop>);

impl Drop for EndOnExit<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).ended = true;
    }
}

/// The loop's state for the Raft thread; a poisoned mutex (a turn panicked) stops the node.
fn lock(core: &Mutex<RaftLoop>) -> Result<MutexGuard<'_, RaftLoop>> {
    core.lock()
        .map_err(|_| Error::Internal("a Raft turn panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(first: u64, last: u64) -> MemStorage {
        let store = MemStorage::new();
        let entries: Vec<Entry> = (first..=last)
            .map(|index| Entry {
                index,
                term: 1 + index / 1000,
                ..Default::default()
            })
            .collect();
        store.wl().append(&entries).expect("append");
        store
    }

    #[test]
    fn catch_up_start_keeps_the_applied_entry() {
        assert_eq!(catch_up_start(0, 5000), 1);
        assert_eq!(catch_up_start(4999, 5000), 1);
        assert_eq!(catch_up_start(5000, 5000), 1);
        assert_eq!(catch_up_start(5001, 5000), 2);
        assert_eq!(catch_up_start(10, 0), 10);
    }

    #[test]
    fn trim_keeps_the_window_and_everything_unapplied() {
        let store = log(1, 12_000);
        // Less than a window to drop: nothing moves.
        assert_eq!(trim_log(&store, 9_000, 5_000).expect("trim"), 1);
        // A window's worth: keep the 5,000 entries up to the applied index, and the unapplied ones.
        assert_eq!(trim_log(&store, 10_000, 5_000).expect("trim"), 5_001);
        assert_eq!(raft::Storage::first_index(&store).expect("first"), 5_001);
        assert_eq!(raft::Storage::last_index(&store).expect("last"), 12_000);
        assert_eq!(raft::Storage::term(&store, 10_000).expect("term"), 11);
        assert_eq!(raft::Storage::term(&store, 12_000).expect("term"), 13);
        assert!(
            raft::Storage::term(&store, 5_000).is_err(),
            "5,000 was dropped"
        );
        // The next trim waits for another window.
        assert_eq!(trim_log(&store, 10_001, 5_000).expect("trim"), 5_001);
        assert_eq!(trim_log(&store, 12_000, 5_000).expect("trim"), 5_001);
        let entries = raft::Storage::entries(
            &store,
            5_001,
            12_001,
            None,
            raft::storage::GetEntriesContext::empty(false),
        )
        .expect("entries");
        assert_eq!(entries.len(), 7_000);
    }

    #[test]
    fn trim_never_drops_the_last_entry() {
        let store = log(1, 100);
        assert_eq!(trim_log(&store, 100, 1).expect("trim"), 100);
        assert_eq!(raft::Storage::term(&store, 100).expect("term"), 1);
        // Even when asked beyond it.
        assert_eq!(trim_log(&store, 500, 1).expect("trim"), 100);
    }

    #[test]
    fn turn_cost_moves_turns_off_the_callers_thread_and_back() {
        let fast = Duration::from_micros(5);
        let mut cost = TurnCost::new(Duration::from_micros(100));
        assert!(cost.inline_ok(), "nothing measured yet");
        for _ in 0..50 {
            cost.record(fast);
        }
        assert!(cost.inline_ok(), "{:?}", cost.average());
        // One slow turn (a snapshot, a forced backend commit) sends the next ones to the thread...
        cost.record(Duration::from_millis(10));
        assert!(!cost.inline_ok(), "{:?}", cost.average());
        // ...until enough fast ones bring the average under the limit again: from about 1.25 ms,
        // 7/8 per turn, that takes about 20 turns.
        let mut turns = 0;
        while !cost.inline_ok() {
            cost.record(fast);
            turns += 1;
            assert!(turns < 100, "never came back: {:?}", cost.average());
        }
        assert!((15..=25).contains(&turns), "{turns} turns");
        // A disk whose fsyncs take 300 µs keeps every turn on the thread.
        for _ in 0..100 {
            cost.record(Duration::from_micros(300));
        }
        assert!(!cost.inline_ok(), "{:?}", cost.average());
    }

    #[test]
    fn turn_cost_limits_zero_and_unbounded() {
        let never = TurnCost::new(Duration::ZERO);
        assert!(
            !never.inline_ok(),
            "a zero limit keeps every turn on the thread"
        );
        let mut always = TurnCost::new(Duration::MAX);
        always.record(Duration::from_secs(3600));
        assert!(always.inline_ok());
    }
}
