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
//! and runs a turn for whatever arrives. It does so on a single-threaded runtime of its own, which
//! also runs the peer transport's streams (`peer`): with peers, messages between members go in and
//! out on this thread, and only a client's request and its answer cross to the server's runtime.
//! A member with peers whose runtime has a single worker (members sharing a small machine, see
//! `main`) has no Raft thread ([`LoopPlace::ServerThread`]): the same loop runs as a task
//! ([`RaftLoop::run_here`]) on the one thread that also serves the member's requests and its peer
//! streams, so nothing a put does crosses threads until the backend commit. That thread then
//! blocks in the WAL's fsync; moving the fsync to a blocking thread cost more CPU in hand-offs than
//! the overlap gave back, on disk as on tmpfs (docs/performance.md, "One thread per member").
//! A connection's task runs the turn itself when it can ([`RaftLoop::try_turn`], called by
//! `server::inline` with the proposals its calls made in one round): when the mutex is free, the
//! loop has not ended, and recent turns were short (a moving average under
//! `--experimental-inline-turn-limit`, 100 µs by default). Handing a proposal to another thread and
//! the answer back costs two wake-ups, and on two vCPUs shared with the clients those cost more
//! than the turn itself (docs/performance-archive.md has the measurements). A turn with a slow
//! fsync (a disk that takes hundreds of microseconds) would hold up every other connection on that
//! worker, so slow turns stay on the Raft thread; the average follows every turn, wherever it ran,
//! so the choice adapts in both directions. Turns that can be told to be slow before they start are
//! left to the Raft thread too: one that will commit the backend (10,000 writes pending) or take a
//! snapshot, and one whose batch holds anything but puts and put-only transactions (a delete or a
//! range may touch any number of keys) or more than 128 KiB of requests. So is every turn while
//! proposals sent to the Raft thread wait for it: a connection's turn would overtake them, and
//! could keep the thread from the mutex for as long as connections keep winning it. A turn that
//! fails ends the loop for every thread, before the mutex is released.
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
//! **With peers** the turn follows raft-rs's documented order: messages Raft may send before its
//! entries are durable (a leader's appends) go first, then a received snapshot is installed, the
//! committed entries applied, the new entries and hard state written and fsynced, and only then go
//! the messages that must follow persistence (votes, a follower's append responses); `advance`
//! then hands out what became committed, with more messages. Messages go to the peer transport
//! (`peer`), which never blocks: a peer it cannot reach is reported back to Raft. Since the
//! transport writes on this thread, a turn that will persist or apply after sending yields to the
//! runtime once in between ([`RaftLoop::flushing_ready`]): a leader's appends are on the wire
//! before its fsync, as they were when other threads wrote them. Read index requests are issued
//! and their states collected here (`read.rs`); membership changes are applied here too, because
//! they change Raft's own configuration (`apply_conf_change`) as well as the membership in the
//! backend. Turns on a connection's task are only for a cluster of one voter: with
//! peers, every turn runs in the loop, on the Raft thread or as the server thread's task.
//!
//! A turn's proposals go to Raft as one proposal message, and the appends a turn makes for one
//! follower go as one message (raft-rs's `batch_append`): a follower forwards a batch to the leader
//! once, and answers the leader's appends once per turn rather than once per request. A starting
//! member fast-forwards its election clock once its peers are connected, as etcd does
//! (`--initial-election-tick-advance`, [`advance_election_clock`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use raft::prelude::*;
use raft::storage::MemStorage;
use raft::StateRole;
use tokio::sync::mpsc::UnboundedReceiver;

use prost::Message as _;

use crate::error::{Error, Result};
use crate::peer::Transport;
use crate::proto::peerpb;
use crate::server::apply::{Applier, SnapshotDue};
use crate::server::membership::{self, Change, Membership};
use crate::server::read::InFlight;
use crate::server::wait::ApplyResult;
use crate::server::Shared;
use crate::wal::{SnapshotMark, Wal};
/// At most this many queued messages (each one or more proposals) are taken into one turn.
const MAX_BATCH: usize = 4096;
/// A batch whose encoded requests add up to more than this is not run on a connection's task: its
/// WAL write alone would hold the task's thread for long.
const INLINE_BATCH_BYTES: usize = 128 * 1024;

/// What other threads ask of the Raft loop.
pub enum RaftMsg {
    /// Propose these requests, in order.
    Propose(Vec<Proposal>),
    /// A message from a peer.
    Step(Box<Message>),
    /// Messages to this peer were lost.
    Unreachable(u64),
    /// Sending a snapshot to this peer ended (true: it was stored there).
    SnapshotStatus(u64, bool),
    /// Linearizable reads are parked in `Shared::reads`.
    ReadIndex,
    /// Propose this membership change; the waiter is answered when it is applied (or refused).
    ConfChange(Box<ConfChange>, u64),
    /// Hand leadership to this member.
    TransferLeader(u64),
    /// On the leader: whether this learner may be promoted (`None`: not the leader).
    LearnerReady(u64, tokio::sync::oneshot::Sender<Option<bool>>),
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

/// Where the loop runs (see the module notes, "Where a turn runs").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopPlace {
    /// The Raft thread, with a single-threaded runtime of its own for the peer streams.
    OwnThread,
    /// A task on the thread that starts the server: a current-thread runtime in a `LocalSet`,
    /// which then serves the member's requests, its peer streams and its turns alike.
    ServerThread,
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
    /// The peer transport.
    pub transport: Arc<Transport>,
    /// How often Raft's logical clock ticks (`--heartbeat-interval`).
    pub tick: Duration,
    /// Read index requests in flight.
    pub reads: InFlight,
    /// The leader seen at the last turn.
    pub last_leader: u64,
    /// Peers the transport could not queue messages for during the turn, reported after it.
    pub unreachable: Vec<u64>,
    /// Read index requests to issue again after the turn (the leader changed).
    pub reissue_reads: bool,
    /// Followers' read index requests that arrived while this member led without having committed
    /// an entry of its term; see [`RaftLoop::leader_may_read`].
    pub held_reads: VecDeque<Message>,
    /// This member's own reads wait for the same commit.
    pub own_reads_held: bool,
    /// Messages were sent since the loop last let the streams' tasks run (`turns`,
    /// `flushing_turn`).
    pub unwritten: bool,
    /// Until when the election clock may still be fast-forwarded at start
    /// (`--initial-election-tick-advance`); `None` once done, given up, or not wanted.
    pub tick_advance_until: Option<Instant>,
}

/// How long a starting member waits for its peers' connections before it gives up fast-forwarding
/// its election clock (etcd waits as long).
pub const TICK_ADVANCE_WAIT: Duration = Duration::from_secs(5);

/// Fast-forwards a starting member's election clock, as etcd does, once more than one peer is
/// connected (`active_peers`): to two ticks short of the election timeout. raft-rs draws the
/// timeout from [t, 2t), so the first election comes 2 to t + 2 ticks later instead of t to 2t, and
/// a fresh cluster elects its leader in a few heartbeats. Before the peers are connected a campaign
/// would reach nobody, so the clock is left alone. Returns whether it advanced.
pub fn advance_election_clock<T: raft::Storage>(
    node: &mut RawNode<T>,
    active_peers: usize,
) -> bool {
    if active_peers <= 1 {
        return false;
    }
    for _ in 0..node.raft.election_timeout().saturating_sub(2) {
        node.tick();
    }
    true
}

/// Most followers' read index requests a new leader holds; beyond it the oldest are dropped (their
/// members ask again after `read::REISSUE_AFTER`). Each follower has about one in flight at a time.
const HELD_READS: usize = 1024;

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
    pub fn run(
        core: Arc<Mutex<RaftLoop>>,
        rx: UnboundedReceiver<RaftMsg>,
        runtime: LoopRuntime,
    ) -> Result<()> {
        runtime.block_on(Self::run_here(core, rx))
    }

    /// The loop itself: on the Raft thread ([`RaftLoop::run`]), or as a task on the server's own
    /// thread ([`LoopPlace::ServerThread`]). Marks the loop ended on the way out.
    pub async fn run_here(
        core: Arc<Mutex<RaftLoop>>,
        rx: UnboundedReceiver<RaftMsg>,
    ) -> Result<()> {
        let _end = EndOnExit(&core); // also when a turn panics
        Self::turns(&core, rx).await
    }

    // The guard is held across the one yield inside a turn (`flushing_turn`), on purpose: the
    // turn is not over. Nothing else takes the mutex but with `try_lock` (`try_turn`): the peer
    // streams and, on the server's thread, the requests' tasks only queue on the channel. So no
    // one waits on it meanwhile, and nothing that runs on this thread during the yield can
    // deadlock on it.
    #[allow(clippy::await_holding_lock)]
    async fn turns(core: &Mutex<RaftLoop>, mut rx: UnboundedReceiver<RaftMsg>) -> Result<()> {
        let mut last_tick = Instant::now();
        // A campaign made before the loop started (single voter) is ready at once.
        lock(core)?.on_ready()?;
        let tick = lock(core)?.tick;
        loop {
            let timeout = tick.saturating_sub(last_tick.elapsed());
            let first = match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Err(_) => None,
                Ok(None) => break,
            };
            let mut this = lock(core)?;
            if this.ended {
                // A turn on a connection's task failed, and the node is stopping: whatever was
                // sent meanwhile is answered, not dropped.
                if let Some(m) = first {
                    this.refuse(m);
                }
                while let Ok(m) = rx.try_recv() {
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
            if last_tick.elapsed() >= tick {
                this.node.tick();
                last_tick = Instant::now();
                if let Some(until) = this.tick_advance_until {
                    let active = this.transport.active_peers();
                    if advance_election_clock(&mut this.node, active) || last_tick >= until {
                        this.tick_advance_until = None;
                    }
                }
                this.issue_reads(false);
            }
            Self::flushing_ready(&mut this).await?;
            if this.shared.removed.load(Ordering::Acquire) {
                // Applied this member's own removal: it serves no more (etcd's words).
                this.ended = true;
                this.reads.fail_all(|| Error::MemberRemoved);
                this.shared.fail("membership", &Error::MemberRemoved);
                break;
            }
            if stop {
                // No turn after the last one: a connection's task that took the mutex next would
                // write the WAL while the server shuts down.
                this.ended = true;
                break;
            }
            let unwritten = std::mem::take(&mut this.unwritten);
            drop(this);
            if unwritten && !rx.is_empty() {
                // What the turn sent is written by the streams' tasks on this thread, which run
                // only when the loop waits; with more already queued it would not wait, and a
                // follower's append responses would sit behind its next turns.
                tokio::task::yield_now().await;
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
            || !self.shared.solo.load(Ordering::Acquire)
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
            }
            RaftMsg::Step(msg)
                if msg.msg_type == MessageType::MsgReadIndex && !self.leader_may_read() =>
            {
                if self.held_reads.len() >= HELD_READS {
                    self.held_reads.pop_front();
                }
                self.held_reads.push_back(*msg);
            }
            RaftMsg::Step(msg) => {
                if let Err(e) = self.node.step(*msg) {
                    tracing::debug!(error = %e, "peer message refused by Raft");
                }
            }
            RaftMsg::Unreachable(id) => self.node.report_unreachable(id),
            RaftMsg::SnapshotStatus(id, finished) => {
                let status = if finished {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.node.report_snapshot(id, status);
            }
            RaftMsg::ReadIndex => self.issue_reads(false),
            RaftMsg::ConfChange(cc, waiter) => self.propose_conf_change(*cc, waiter),
            RaftMsg::TransferLeader(id) => self.node.transfer_leader(id),
            RaftMsg::LearnerReady(id, tx) => {
                let _ = tx.send(self.learner_ready(id));
            }
            RaftMsg::Stop => return true,
        }
        false
    }

    /// Issues one read index request for every parked read (and, with `again` or after a while,
    /// the requests Raft left unanswered).
    fn issue_reads(&mut self, again: bool) {
        if self.node.raft.leader_id == raft::INVALID_ID {
            return; // asked again once a leader is known
        }
        if !self.leader_may_read() {
            self.own_reads_held = true;
            return; // asked once this leader has committed an entry of its term
        }
        if let Some(ctx) = self.reads.issue(&self.shared.reads, Instant::now(), again) {
            self.node.read_index(ctx);
        }
        self.shared
            .slow_read_indexes
            .store(self.reads.slow, Ordering::Relaxed);
    }

    /// False on a leader that has not yet committed an entry of its term. raft-rs drops a read
    /// index request there without a word (the leader cannot yet tell which index every earlier
    /// leader committed), and the reader would ask again only after `read::REISSUE_AFTER`: every
    /// linearizable read in the first moments of a new leader took half a second. Such requests
    /// are held instead and stepped as soon as the leader's first entry commits
    /// ([`RaftLoop::release_held_reads`]), as etcd 3.5's raft does with its pending read index
    /// messages.
    fn leader_may_read(&self) -> bool {
        self.node.raft.state != StateRole::Leader || self.node.raft.commit_to_current_term()
    }

    /// Steps the read index requests held for this leader's first commit, once it is there (or
    /// drops them once this member no longer leads: their members ask the new leader); true if it
    /// stepped any (their heartbeats then go out in one more turn).
    fn release_held_reads(&mut self) -> bool {
        if self.held_reads.is_empty() && !self.own_reads_held {
            return false;
        }
        if !self.leader_may_read() {
            return false;
        }
        let held = std::mem::take(&mut self.held_reads);
        let stepped = self.node.raft.state == StateRole::Leader && !held.is_empty();
        if stepped {
            for msg in held {
                if let Err(e) = self.node.step(msg) {
                    tracing::debug!(error = %e, "held read index request refused by Raft");
                }
            }
        }
        if std::mem::take(&mut self.own_reads_held) {
            self.reissue_reads = true;
        }
        stepped
    }

    /// On the leader, whether learner `id` holds at least 90 % of the leader's log (etcd's rule for
    /// a promotion); `None` elsewhere.
    fn learner_ready(&self, id: u64) -> Option<bool> {
        if self.node.raft.state != StateRole::Leader {
            return None;
        }
        let leader_match = self.node.raft.raft_log.last_index();
        let learner_match = self.node.raft.prs().get(id).map_or(0, |p| p.matched);
        Some(learner_match as f64 >= leader_match as f64 * 0.9)
    }

    /// Proposes a membership change, after the checks only the Raft thread can make.
    fn propose_conf_change(&mut self, cc: ConfChange, waiter: u64) {
        let promoting = cc.get_change_type() == ConfChangeType::AddNode
            && self.node.raft.prs().conf().learners().contains(&cc.node_id);
        if promoting && self.learner_ready(cc.node_id) == Some(false) {
            self.shared
                .wait
                .trigger(waiter, Err(Error::LearnerNotReady));
            return;
        }
        if self.node.raft.has_pending_conf() {
            // One change at a time: the next waits until this one is applied.
            self.shared
                .wait
                .trigger(waiter, Err(Error::ConfChangePending));
            return;
        }
        if let Err(e) = self.node.propose_conf_change(vec![], cc) {
            self.shared.wait.trigger(waiter, Err(Error::from(e)));
        }
    }

    /// Sends messages to peers; reports those that could not be queued.
    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        self.unwritten = true;
        // Reported after the turn: stepping Raft between `ready` and `advance` may make messages
        // that raft-rs refuses to find there on a follower.
        let unreachable = self.transport.send(msgs);
        self.unreachable.extend(unreachable);
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

    /// Proposes a batch as one message, as `RawNode::propose` does for one entry: a leader appends
    /// it at once and sends each follower one append for it, and a follower forwards it to the
    /// leader as one message. A proposal per request would cost one of each per request, and one
    /// append response per request back.
    fn propose(&mut self, batch: Vec<Proposal>) {
        let mut ids = Vec::with_capacity(batch.len());
        let entries: Vec<Entry> = batch
            .into_iter()
            .map(|Proposal { id, data, .. }| {
                ids.push(id);
                Entry {
                    data: data.into(),
                    ..Default::default()
                }
            })
            .collect();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.node.raft.id;
        m.set_entries(entries.into());
        if let Err(e) = self.node.raft.step(m) {
            // A dropped batch is answered now; no client hangs.
            for id in ids {
                self.shared.wait.trigger(id, Err(Error::from(&e)));
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
        crate::fault::panic_point("raft");
        if !self.node.has_ready() {
            return Ok(false);
        }
        let started = Instant::now();
        let mut result = self.ready_turn();
        if self.turn_again(&result) {
            result = self.ready_turn();
        }
        self.turn_done(started, result)
    }

    /// [`RaftLoop::on_ready`] on the Raft thread: a turn that will persist or apply after sending
    /// messages first lets the runtime write them (the peer streams run on this thread), so that
    /// followers store a leader's appends while the leader does, not after it.
    async fn flushing_ready(this: &mut MutexGuard<'_, RaftLoop>) -> Result<bool> {
        crate::fault::panic_point("raft");
        if !this.node.has_ready() {
            return Ok(false);
        }
        let started = Instant::now();
        let mut result = Self::flushing_turn(this).await;
        if this.turn_again(&result) {
            result = Self::flushing_turn(this).await;
        }
        this.turn_done(started, result)
    }

    async fn flushing_turn(this: &mut MutexGuard<'_, RaftLoop>) -> Result<()> {
        let rd = this.start_turn();
        let work_after = !rd.entries().is_empty()
            || !rd.committed_entries().is_empty()
            || !rd.snapshot().is_empty();
        if this.unwritten && work_after {
            // Nothing on this thread waits for the loop's mutex meanwhile: the streams' tasks (and,
            // on the server's thread, the requests' tasks) only queue messages on the loop's
            // channel, or `try_lock` it.
            tokio::task::yield_now().await;
            this.unwritten = false;
        }
        this.finish_turn(rd)
    }

    /// After a turn: what had to wait for its end steps Raft now; true if that made another turn
    /// (a read index request, a probe), which then runs at once rather than at the next tick.
    fn turn_again(&mut self, result: &Result<()>) -> bool {
        let released = self.release_held_reads();
        if result.is_err() || (self.unreachable.is_empty() && !self.reissue_reads && !released) {
            return false;
        }
        for id in std::mem::take(&mut self.unreachable) {
            self.node.report_unreachable(id);
        }
        if std::mem::take(&mut self.reissue_reads) {
            self.issue_reads(true);
        }
        self.node.has_ready()
    }

    /// Counts how long the turns took; a failed turn ends the loop before its mutex is released,
    /// so no other thread runs a turn after it (raft-rs has already counted the failed turn's
    /// entries as handed out).
    fn turn_done(&mut self, started: Instant, result: Result<()>) -> Result<bool> {
        self.turn_cost.record(started.elapsed());
        if result.is_err() {
            self.ended = true;
        }
        result.map(|()| true)
    }

    fn ready_turn(&mut self) -> Result<()> {
        let rd = self.start_turn();
        self.finish_turn(rd)
    }

    /// The first part of a turn: takes Raft's Ready, publishes a leader change, and sends the
    /// messages that may go before the turn's entries are durable.
    fn start_turn(&mut self) -> Ready {
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
            if ss.leader_id != self.last_leader {
                if ss.leader_id != raft::INVALID_ID {
                    self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
                }
                self.last_leader = ss.leader_id;
                // Read requests the old leader held are lost: ask the new one (after the turn).
                self.reissue_reads = true;
            }
            if leading {
                tracing::info!(term = self.node.raft.term, "became leader");
                // Only the leader tracks expiry; a new leader gives every lease its full TTL.
                self.shared.lessor.promote();
            }
        }
        // A leader's appends may go before its own entries are durable (raft-rs's order).
        self.send(rd.take_messages());
        rd
    }

    /// The rest of a turn: install, apply, persist, then the messages that promise what is durable,
    /// and `advance`.
    fn finish_turn(&mut self, mut rd: Ready) -> Result<()> {
        let store = self.node.raft.raft_log.store.clone();
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        for rs in rd.take_read_states() {
            self.reads.confirmed(&rs.request_ctx, rs.index);
        }
        let mut snapshot = self.apply_committed(rd.take_committed_entries())?;

        // Persist before acknowledging: one write and one fsync for the whole batch. A Ready whose
        // only change is the commit index need not be durable (raft-rs's `must_sync`, etcd's
        // `MustSync`): a lost commit index is learned again from the leader, or, on a member
        // alone, re-established at start (`Server::open`, `caught_up`). Such Readies, most of a
        // leader's turns with peers (each append response that commits), are not written at all;
        // the next written hard state carries the commit index.
        if !rd.entries().is_empty() || rd.must_sync() {
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

        // Votes and a follower's append responses promise what is now durable.
        self.send(rd.take_persisted_messages());

        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
        }
        self.send(light.take_messages());
        snapshot = self
            .apply_committed(light.take_committed_entries())?
            .or(snapshot);
        self.node.advance_apply();
        self.reads
            .answer(self.shared.applied_index.load(Ordering::Acquire));
        let first = trim_log(&store, self.node.raft.raft_log.applied, self.catch_up)?;
        self.shared.log_first_index.store(first, Ordering::Relaxed);
        if let Some(due) = snapshot {
            self.snapshot(due.index, due.term)?;
        }
        Ok(())
    }

    /// Applies committed entries; returns the snapshot they made due, if any. Membership changes
    /// are applied here, between the runs of other entries around them.
    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<Option<SnapshotDue>> {
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        self.shared
            .committed_index
            .store(last.index, Ordering::Relaxed);
        let mut due = None;
        let mut start = 0;
        for (i, e) in entries.iter().enumerate() {
            if e.get_entry_type() == EntryType::EntryConfChange {
                if start < i {
                    due = self.applier.apply_batch(&entries[start..i])?.or(due);
                }
                self.apply_conf_change(e)?;
                start = i + 1;
            }
        }
        if start < entries.len() {
            due = self.applier.apply_batch(&entries[start..])?.or(due);
        }
        Ok(due)
    }

    /// Applies one membership change: to Raft's configuration (always, also when the backend
    /// already holds it, so that Raft's view is rebuilt after a snapshot), to the membership in the
    /// backend, and to the transport's peers; answers the proposer's waiter if it is this member's.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<()> {
        let wire = peerpb::ConfChange::decode(&e.data[..])?;
        let ctx = peerpb::ConfChangeContext::decode(&wire.context[..])?;
        let (ty, change) = match wire.change_type {
            0 => (ConfChangeType::AddNode, Change::AddVoter),
            1 => (ConfChangeType::RemoveNode, Change::Remove),
            2 => (ConfChangeType::AddLearnerNode, Change::AddLearner),
            other => {
                return Err(Error::Corrupt(format!(
                    "entry {}: unknown membership change type {other}",
                    e.index
                )))
            }
        };
        let cc = ConfChange {
            change_type: ty,
            node_id: wire.node_id,
            ..Default::default()
        };
        let store = self.shared.store.clone();
        let fresh = e.index > store.consistent_index();
        let result = match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.node.raft.raft_log.store.wl().set_conf_state(cs);
                let member = ctx.member.clone().unwrap_or(peerpb::Member {
                    id: wire.node_id,
                    ..Default::default()
                });
                let mut batch = crate::mvcc::WriteBatch::new();
                if fresh {
                    self.shared
                        .members
                        .apply_change(change, &member, &mut batch);
                }
                match change {
                    Change::Remove => self.transport.remove_peer(wire.node_id),
                    _ => {
                        if let Some(m) = self.shared.members.member(wire.node_id) {
                            self.transport.add_peer(m.id, m.peer_urls);
                        }
                    }
                }
                if fresh {
                    store.write_meta(e.index, batch);
                }
                tracing::info!(
                    index = e.index,
                    member = format!("{:x}", wire.node_id),
                    change = ?change,
                    "membership changed"
                );
                Ok(ApplyResult::Members(self.shared.members.etcd_members()))
            }
            // Refused the same way on every member (removing the last voter, say).
            Err(err) => {
                if fresh {
                    store.set_consistent_index(e.index);
                }
                Err(Error::InvalidArgument(format!("etcdserver: {err}")))
            }
        };
        self.shared.applied_index.store(e.index, Ordering::Release);
        self.shared.refresh_roles();
        if ctx.proposer == self.shared.member_id {
            self.shared.wait.trigger(ctx.waiter, result);
        }
        if change == Change::Remove && wire.node_id == self.shared.member_id {
            self.shared.removed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Replaces this member's state with a snapshot received from the leader: the backend file its
    /// data names, then everything built from the backend (key index, leases, alarms, membership,
    /// watchers' positions), Raft's log, and the WAL's snapshot mark.
    fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&snap.data).into_owned());
        let shared = self.shared.clone();
        shared.store.restore(&path)?;
        let backend = shared.store.backend().clone();
        shared.lessor.reload(&backend)?;
        let orphans = shared
            .lessor
            .rebuild_attachments(shared.store.take_leased_at_open());
        if !orphans.is_empty() {
            tracing::warn!(
                keys = orphans.len(),
                "snapshot: keys attached to missing leases"
            );
        }
        shared.alarms.reload(&backend)?;
        shared.auth.reload(&backend)?;
        let members = Membership::load(&backend)?.unwrap_or_default();
        // The snapshot's membership is the whole truth: members removed in the entries it covers
        // are no longer peers, and members added there are.
        self.transport
            .retain_peers(|id| members.members.iter().any(|m| m.id == id));
        for m in &members.members {
            self.transport.add_peer(m.id, m.peer_urls.clone());
        }
        let (voters, learners) = membership::conf_of(&members);
        shared.members.replace(members);
        shared.refresh_roles();
        shared.hub.resync();
        let mut raft_snap = snap;
        raft_snap.data = Default::default();
        self.node
            .raft
            .raft_log
            .store
            .wl()
            .apply_snapshot(raft_snap)?;
        self.node
            .raft
            .raft_log
            .store
            .wl()
            .set_conf_state(ConfState::from((voters, learners)));
        self.wal.save_snapshot(&SnapshotMark {
            index: meta.index,
            term: meta.term,
            conf_state: meta.get_conf_state().clone(),
        })?;
        let applied = meta.index.max(shared.store.consistent_index());
        shared.applied_index.store(applied, Ordering::Release);
        shared
            .committed_index
            .fetch_max(meta.index, Ordering::Relaxed);
        shared.snapshot_index.store(meta.index, Ordering::Relaxed);
        self.applier.snapshots.taken(meta.index);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            consistent_index = shared.store.consistent_index(),
            revision = shared.store.current_revision(),
            "installed a snapshot from the leader"
        );
        Ok(())
    }
}

/// The Raft thread's single-threaded runtime, where the loop and the peer streams run
/// ([`LoopPlace::OwnThread`]). Its tasks run only while the loop does: they end with it.
pub struct LoopRuntime(Option<tokio::runtime::Runtime>);

impl LoopRuntime {
    /// A new runtime with timers and I/O.
    pub fn new() -> Result<LoopRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(LoopRuntime(Some(rt)))
    }

    /// Where to spawn tasks onto it.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("taken only on drop"),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.0 {
            Some(rt) => rt.block_on(f),
            None => unreachable!("taken only on drop"),
        }
    }
}

impl Drop for LoopRuntime {
    /// Without waiting for its tasks: a runtime dropped where blocking is not allowed (on the
    /// server's runtime, when the Raft thread never started) would panic.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Marks the loop ended when its thread or task leaves it, however it leaves (a panic included).
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

    fn follower_of_three() -> RawNode<MemStorage> {
        let store = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let config = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, store, &logger).expect("raw node")
    }

    #[test]
    fn election_clock_advances_once_two_peers_are_connected() {
        let mut node = follower_of_three();
        assert!(!advance_election_clock(&mut node, 0));
        assert!(!advance_election_clock(&mut node, 1));
        assert_eq!(
            node.raft.election_elapsed, 0,
            "no peer connected: untouched"
        );

        assert!(advance_election_clock(&mut node, 2));
        assert_eq!(
            node.raft.election_elapsed, 8,
            "two ticks short of the timeout"
        );
        assert_eq!(node.raft.state, StateRole::Follower, "no campaign yet");
        // The timeout is drawn from [10, 20): the campaign (a pre-vote) comes within 12 more ticks.
        let mut ticks = 0;
        while node.raft.state == StateRole::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks <= 12, "no campaign after {ticks} ticks");
        }
        assert!(ticks >= 2, "campaigned after {ticks} ticks");
        assert_eq!(node.raft.state, StateRole::PreCandidate);
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
