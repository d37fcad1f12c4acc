//! The server: one handle from which every API reaches the replicated state.
//!
//! Every write takes the same path, even on a single node: the API calls [`Server::put`] (or delete,
//! compact); the request gets an id and a parked waiter (`wait.rs`), is encoded (`request.rs`) and
//! proposed to the Raft loop (`raft_loop.rs`), whose next turn appends it to the WAL and fsyncs; once
//! Raft commits it the apply step (`apply.rs`, in the same turn) applies it to the MVCC store, feeds
//! the watch hub and wakes the waiter. The client is answered only then, or with an error when the proposal is dropped, times out,
//! or the server stops: nothing hangs.
//!
//! Reads go straight to the MVCC store, and so does a txn without puts or deletes: its compares and
//! ranges are all read at the revision current at its first read ([`kv::AtRevision`]), on the
//! caller's task, without waiting for the apply step's open write transaction. On a single voter
//! that is linearizable: a write is acknowledged only after it is applied, and the server serves
//! nothing until the entries logged before a restart (committed by the new leader if the WAL
//! had not yet recorded it) have been applied again. With peers, a linearizable read first waits
//! for Raft's read index to be applied (`read.rs`); a serializable one does not.
//!
//! With peers, a write proposed on a follower is forwarded to the leader by Raft; the follower's
//! waiter is answered when the follower applies the entry (request ids carry the member's id, so
//! no member answers another's waiter). Membership lives in the backend and changes only through
//! the log (`membership.rs`, `cluster.rs`); the peer transport (`crate::peer`) carries Raft's
//! messages and snapshots.
//!
//! Named locks and leader elections (`concurrency.rs`) are built from these same calls: a
//! transaction to join a queue of keys, ranges and watches to wait for the key ahead.
//!
//! Two threads do the work: the Raft thread (runs Raft turns, which own Raft and the WAL and apply
//! committed entries: the only writers of the store), and the backend committer (commits the store's
//! write batch to redb every 100 ms; the WAL, not the backend, is what makes a write durable). A
//! gRPC connection's task runs the turn for its own calls' proposals itself when that is cheap and the
//! member is the only voter (`inline.rs`); turns never overlap, whichever thread runs them. A member
//! started with [`LoopPlace::ServerThread`] has no Raft thread: its loop is a task on the thread that
//! serves its requests (`raft_loop`). A lock file keeps a second process off the data dir.

pub mod alarm;
pub mod apply;
mod auth;
pub mod cluster;
pub mod compactor;
pub mod concurrency;
mod inline;
pub mod kv;
pub mod maintenance;
pub mod membership;
pub mod pruner;
pub mod raft_loop;
pub mod read;
pub mod request;
pub mod wait;

use futures::FutureExt as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use prost::Message as _;
use raft::prelude::*;
use raft::storage::MemStorage;

use crate::auth::Caller;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::histogram::{Histogram, HistogramSnapshot};
use crate::lease::{Lessor, SystemClock};
use crate::mvcc::Store;
use crate::peer::Transport;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::peerpb;
use crate::server::apply::Applier;
use crate::server::membership::Membership;
use crate::server::raft_loop::{LoopPlace, LoopRuntime, Proposal, RaftLoop, RaftMsg, TurnCost};
use crate::server::request::{Op, RaftRequest, WalMetadata};
use crate::server::wait::{ApplyResult, Wait};
use crate::snap::copies::{self, SnapshotCopies};
use crate::snap::SnapshotPolicy;
use crate::wal::{SnapshotMark, Wal, WalContents, WalOptions};
use crate::watch::{WatchHub, WatchRequest, Watcher};

/// How long a client waits for its proposal to be applied (etcd: 5 s plus two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// etcd's minimum lease TTL: 1.5 election timeouts (10 ticks of 100 ms), rounded up to whole seconds.
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// Most lease checkpoints in one proposal (etcd's `maxLeaseCheckpointBatchSize`).
const CHECKPOINTS_PER_ROUND: usize = 1000;
/// Most expired leases revoked per round of the expiry task.
const EXPIRED_PER_ROUND: usize = 512;
/// How often the backend write batch is committed to redb (etcd's batch interval).
pub const BACKEND_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// State shared by the API tasks and the server's threads.
pub struct Shared {
    /// The MVCC key-value store (written only by the apply step).
    pub store: Arc<Store>,
    /// Watchers, fed by the apply step.
    pub hub: Arc<WatchHub>,
    /// Leases: granted and revoked by the apply step, renewed and expired by the leader.
    pub lessor: Arc<Lessor>,
    /// Drops compacted revisions on its own thread.
    pub pruner: Arc<pruner::Pruner>,
    /// Parked proposers.
    pub wait: Wait,
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// The current Raft term, for response headers.
    pub term: AtomicU64,
    /// The current leader's id (0: none known).
    pub leader: AtomicU64,
    /// The index of the first entry of the current leader's term, when this member leads (0 until
    /// then): applied, it means everything logged before the election is applied too.
    pub leader_since: AtomicU64,
    /// Highest committed index.
    pub committed_index: AtomicU64,
    /// Highest index applied to the store.
    pub applied_index: AtomicU64,
    /// Index of the last snapshot.
    pub snapshot_index: AtomicU64,
    /// First Raft index still held in memory (older entries are only in the WAL).
    pub log_first_index: AtomicU64,
    /// WAL fsyncs so far (metrics: writes per fsync shows group commit at work).
    pub wal_syncs: AtomicU64,
    /// WAL fdatasync durations (the WAL records them; shared here for `/metrics`).
    pub wal_fsync_latency: Arc<Histogram>,
    /// Proposals made so far.
    pub proposals: AtomicU64,
    /// Raft turns run on a connection's task rather than the Raft thread (`raft_loop`).
    pub inline_turns: AtomicU64,
    /// Proposal messages sent to the Raft thread and not yet taken by it: while any wait, no turn
    /// runs on a connection's task (it would overtake them).
    pub raft_queued: AtomicUsize,
    /// Set once shutdown starts or a thread died.
    pub stopped: AtomicBool,
    /// Why the node stopped on its own, if it did.
    pub fatal: Mutex<Option<String>>,
    /// Woken when `fatal` is set.
    pub fatal_notify: tokio::sync::Notify,
    /// Turns true when shutdown begins, before the listeners drain: long-lived streams (gRPC watch)
    /// end on it, or a graceful drain would wait for them forever.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The cluster's alarms as applied here (see `alarm.rs`).
    pub alarms: alarm::AlarmStore,
    /// Users, roles and tokens as applied here (see `auth`).
    pub auth: crate::auth::AuthStore,
    /// The cluster's members as applied here (see `membership.rs`).
    pub members: Membership,
    /// Whether this member is the cluster's only voter with no learner: then a turn may run on a
    /// connection's task (`inline.rs`) and reads need no read index. Set from `members` by
    /// [`Shared::refresh_roles`] whenever the membership changes.
    pub solo: AtomicBool,
    /// Set once this member applied its own removal.
    pub removed: AtomicBool,
    /// Whether this member is a learner: it then serves only Status and serializable reads, as
    /// etcd's learners do.
    pub learner: AtomicBool,
    /// Leader changes seen (etcd's `etcd_server_leader_changes_seen_total`).
    pub leader_changes: AtomicU64,
    /// Read index requests Raft left unanswered and that were issued again (etcd's
    /// `etcd_server_slow_read_indexes_total`).
    pub slow_read_indexes: AtomicU64,
    /// Linearizable reads waiting for a read index (see `read.rs`).
    pub reads: read::Reads,
    /// Proposals that failed (dropped, timed out).
    pub proposals_failed: AtomicU64,
    /// Proposals and commands for the Raft thread, from every other thread (`None` once stopped:
    /// nothing more reaches it).
    pub raft_tx: Mutex<Option<UnboundedSender<RaftMsg>>>,
    /// The peer transport.
    pub transport: std::sync::OnceLock<Arc<Transport>>,
    /// Temporary backend copies that snapshots are sent from: bounded, and counted by the quota.
    pub snapshot_copies: SnapshotCopies,
    /// Free space on the data directory's filesystem, for `--disk-reserve-bytes`.
    pub free_space: alarm::FreeSpace,
}

impl Shared {
    /// Sets `solo` and `learner` from the membership, after it changed.
    pub(crate) fn refresh_roles(&self) {
        let (solo, learner) = self.members.roles_of(self.member_id);
        self.solo.store(solo, Ordering::Release);
        self.learner.store(learner, Ordering::Release);
    }

    /// Stops the node after a fatal error in `who` (the WAL or the backend could not be written):
    /// no new proposals, every waiter answered `Stopped`, and the reason kept for `/health`.
    fn fail(&self, who: &str, e: &Error) {
        tracing::error!(thread = %who, error = %e, "fatal: stopping the node");
        self.stopped.store(true, Ordering::SeqCst);
        // The first failure is the cause; later ones (a WAL refusing writes after it) are echoes.
        self.fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| format!("{who}: {e}"));
        self.wait.fail_all(|| Error::Stopped);
        self.reads.fail_all(|| Error::Stopped);
        self.fatal_notify.notify_waiters();
    }
}

/// A running server. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration it started with.
    config: Config,
    /// State shared with the threads.
    shared: Arc<Shared>,
    /// The Raft loop's state, shared with the loop (its thread or task): connections' tasks run
    /// turns on it too.
    core: Arc<Mutex<RaftLoop>>,
    /// Tells the backend committer to stop.
    committer_stop: Mutex<Option<Sender<()>>>,
    /// The core threads (Raft, unless the loop runs on the server's thread; compaction; backend
    /// commit), joined at shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// With [`LoopPlace::ServerThread`]: disconnected once the loop's task has ended (shutdown
    /// waits for that as it joins the threads).
    local_loop_ended: Mutex<Option<mpsc::Receiver<()>>>,
    /// Held for the life of the server: the data dir lock.
    _lock: File,
}

/// With [`LoopPlace::ServerThread`], what `open` hands `start_with` to spawn the loop's task: its
/// state, its channel, and the sender whose drop tells shutdown the task has ended.
struct LocalLoop {
    core: Arc<Mutex<RaftLoop>>,
    rx: UnboundedReceiver<RaftMsg>,
    ended: Sender<()>,
}

/// A point-in-time view of the server for health, status and metrics.
#[derive(Debug, Clone)]
pub struct Status {
    /// This member.
    pub member_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
    /// Current leader (0 if none).
    pub leader: u64,
    /// Raft term.
    pub term: u64,
    /// Highest committed index.
    pub committed_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// Last snapshot index.
    pub snapshot_index: u64,
    /// First Raft index held in memory.
    pub log_first_index: u64,
    /// Store revision.
    pub revision: i64,
    /// Compacted revision.
    pub compact_revision: i64,
    /// Backend file size.
    pub db_size: u64,
    /// Live watchers.
    pub watchers: usize,
    /// Proposals made.
    pub proposals: u64,
    /// WAL fsyncs done.
    pub wal_syncs: u64,
    /// Raft turns run on a connection's task.
    pub inline_turns: u64,
    /// Durations of the WAL's fdatasyncs.
    pub wal_fsync_latency: HistogramSnapshot,
    /// Durations of the backend's commits.
    pub backend_commit_latency: HistogramSnapshot,
    /// Clients waiting on proposals.
    pub pending_proposals: usize,
}

impl Server {
    /// Opens (or creates) the data directory and starts the Raft loop on a thread of its own
    /// and the backend committer. Returns once the state committed before a restart has been
    /// applied again.
    pub async fn start(config: Config) -> Result<Server> {
        Server::start_with(config, LoopPlace::OwnThread).await
    }

    /// [`Server::start`], with the Raft loop where `place` says. [`LoopPlace::ServerThread`] must be
    /// called inside a `LocalSet` on a current-thread runtime, which then runs the loop's task; and
    /// [`Server::shutdown`] must be awaited inside that same `LocalSet`, which must keep running
    /// until it returns (shutdown waits for the loop's task to end).
    pub async fn start_with(config: Config, place: LoopPlace) -> Result<Server> {
        debug_assert!(
            place == LoopPlace::OwnThread
                || tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::CurrentThread,
            "LoopPlace::ServerThread needs a current-thread runtime"
        );
        let cfg = config.clone();
        let (server, local) = tokio::task::spawn_blocking(move || Server::open(cfg, place))
            .await
            .map_err(|e| Error::Internal(format!("start task failed: {e}")))??;
        if let Some(LocalLoop { core, rx, ended }) = local {
            let shared = server.inner.shared.clone();
            tokio::task::spawn_local(async move {
                let run = std::panic::AssertUnwindSafe(RaftLoop::run_here(core, rx));
                report_end("raft", &shared, run.catch_unwind().await);
                drop(ended);
            });
        }
        if server.is_solo() {
            server.wait_caught_up().await?;
        } else {
            // With peers, this member serves as soon as its own log is applied: reads that must
            // be linearizable wait for the read index, and writes for Raft.
            server.wait_replayed().await?;
        }
        tokio::spawn(server.clone().publish_attributes());
        if let Some(every) = server.config().lease_checkpoint_interval {
            tokio::spawn(server.clone().checkpoint_leases(every));
        }
        tokio::spawn(server.clone().expire_leases());
        if let Some(retention) = server.config().auto_compaction {
            tokio::spawn(server.clone().auto_compact(retention));
        }
        Ok(server)
    }

    /// Opens the data directory and starts the core threads; with [`LoopPlace::ServerThread`] it
    /// returns the loop for `start_with` to spawn on the calling thread.
    fn open(config: Config, place: LoopPlace) -> Result<(Server, Option<LocalLoop>)> {
        let member_dir = config.data_dir.join("member");
        // `snap` holds snapshots in transit between members.
        fs::create_dir_all(member_dir.join("snap"))?;
        let lock = lock_data_dir(&config.data_dir)?;
        // Under the lock, nothing else can be sending from these files: any left are stale.
        copies::remove_stale(&member_dir)?;

        let wal_dir = member_dir.join("wal");
        if !Wal::exists(&wal_dir) {
            // A backend placed here by hand may still end in etcd's sha256 trailer.
            crate::snap::restore::prepare_restored_db(&member_dir.join("db"))?;
        }
        let store = Arc::new(Store::open(&member_dir.join("db"))?);
        store.set_large_read_limit(config.max_large_ranges);
        let lessor = Arc::new(Lessor::new(
            store.backend().clone(),
            Arc::new(SystemClock),
            MIN_LEASE_TTL_SECS,
        )?);
        // Attachments are not stored with the leases: every live key names its lease.
        let orphans = lessor.rebuild_attachments(store.take_leased_at_open());
        if !orphans.is_empty() {
            tracing::warn!(
                keys = orphans.len(),
                "keys attached to leases that no longer exist"
            );
        }
        let (wal, contents, meta, members) = if Wal::exists(&wal_dir) {
            // Only the catch-up window behind the applied index is kept in memory (see
            // `raft_loop.rs`); the older entries are checked as they are read, then dropped.
            let options = WalOptions {
                retain_from: raft_loop::catch_up_start(
                    store.consistent_index(),
                    config.snapshot_catchup_entries,
                ),
                ..WalOptions::default()
            };
            let (wal, contents) = Wal::open(&wal_dir, options)?;
            if let Some((file, offset)) = &contents.repaired_tail {
                tracing::warn!(file = %file.display(), offset, "cut a torn WAL tail");
            }
            let meta = WalMetadata::decode(contents.metadata.as_slice())?;
            let members = match Membership::load(store.backend())? {
                Some(m) => m,
                // A data directory written before membership was stored: its one member.
                None => single_member(&config, meta.member_id, meta.cluster_id),
            };
            check_identity(&config, &meta, &members)?;
            (wal, contents, meta, members)
        } else {
            let members = if config.initial_cluster_new {
                Membership::bootstrap(&config)
            } else {
                cluster::join(&config)?
            };
            let (wal, contents, meta) = create_member(&config, &store, &members)?;
            (wal, contents, meta, members)
        };
        if members.removed.contains(&meta.member_id) {
            return Err(Error::MemberRemoved);
        }

        let (mut wal, mut contents) = (wal, contents);
        let consistent_index = store.consistent_index();
        let last_entry = contents.last_entry();
        let last_wal_index = last_entry.map_or(contents.snapshot.index, |(index, _)| index);
        if consistent_index > last_wal_index {
            // Only after `mini-etcd repair` cut entries the backend had already applied: the backend
            // is then the newest state there is, so it becomes the snapshot the log restarts from.
            let term = last_entry
                .map_or(contents.snapshot.term, |(_, term)| term)
                .max(contents.hard_state.term);
            tracing::warn!(
                consistent_index,
                last_wal_index,
                "the backend is ahead of the WAL (repaired?): restarting the log from the backend"
            );
            let mark = SnapshotMark {
                index: consistent_index,
                term,
                conf_state: contents.snapshot.conf_state.clone(),
            };
            wal.save_snapshot(&mark)?;
            contents.entries.clear();
            contents.before_retained = None;
            contents.snapshot = mark;
        }
        let last_index = contents
            .last_entry()
            .map_or(contents.snapshot.index, |(index, _)| index);
        let entries = std::mem::take(&mut contents.entries);
        let snap = &contents.snapshot;
        if consistent_index < snap.index {
            return Err(Error::Corrupt(format!(
                "backend {} holds index {consistent_index}, behind the WAL snapshot at {}: the \
                 backend file was lost or replaced",
                member_dir.join("db").display(),
                snap.index
            )));
        }
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            // The WAL kept only the catch-up window behind the applied index (`retain_from`
            // above); the entry before it becomes the storage's starting point, so that its term
            // stays known, much as a snapshot there would be.
            let base = contents.before_retained.unwrap_or((snap.index, snap.term));
            // Raft's configuration is the membership's at the backend's consistent index (see
            // `membership.rs`); entries after it that change it are applied again.
            let (voters, learners) = membership::conf_of(&members);
            let conf_state = ConfState::from((voters, learners));
            if base.0 > 0 {
                let mut s = Snapshot::default();
                s.mut_metadata().index = base.0;
                s.mut_metadata().term = base.1;
                s.mut_metadata().set_conf_state(conf_state.clone());
                core.apply_snapshot(s)?;
            }
            core.set_conf_state(conf_state);
            core.append(&entries)?;
            let mut hs = contents.hard_state.clone();
            // The commit index in the WAL may lag what was applied (it is persisted with the next
            // Ready); anything the backend applied was committed.
            hs.commit = hs
                .commit
                .max(consistent_index)
                .max(snap.index)
                .min(last_index);
            core.set_hardstate(hs);
        }
        // The storage holds the entries now; the copies read from the WAL go before serving.
        drop(entries);
        let commit_at_start = storage.rl().hard_state().commit;
        let log_first_index = raft::Storage::first_index(&storage)?;

        let raft_config = raft::Config {
            id: meta.member_id,
            election_tick: config.election_ticks(),
            heartbeat_tick: 1,
            applied: consistent_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // Appends to a follower made in one turn (one per proposal message, one per commit
            // advance) go as one message, answered by one response.
            batch_append: true,
            // A member cut off and back must not depose a healthy leader (pre-vote), and a leader
            // that lost its quorum steps down (check quorum), as etcd runs.
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let mut node = RawNode::new(&raft_config, storage, &logger)?;
        let membership = Membership::new(members.clone());
        let (solo, learner) = membership.roles_of(meta.member_id);
        if solo {
            // A single voter needs no election timeout: take leadership now.
            node.campaign()?;
        }

        let hub = WatchHub::new(store.clone());
        let shared = Arc::new(Shared {
            store: store.clone(),
            hub,
            lessor,
            wait: Wait::for_member(meta.member_id),
            member_id: meta.member_id,
            cluster_id: meta.cluster_id,
            term: AtomicU64::new(node.raft.term),
            leader: AtomicU64::new(0),
            leader_since: AtomicU64::new(0),
            committed_index: AtomicU64::new(consistent_index),
            applied_index: AtomicU64::new(consistent_index),
            snapshot_index: AtomicU64::new(snap.index),
            log_first_index: AtomicU64::new(log_first_index),
            wal_syncs: AtomicU64::new(0),
            wal_fsync_latency: wal.fsync_latency(),
            proposals: AtomicU64::new(0),
            inline_turns: AtomicU64::new(0),
            raft_queued: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            fatal: Mutex::new(None),
            fatal_notify: tokio::sync::Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
            alarms: alarm::AlarmStore::load(store.backend())?,
            auth: crate::auth::AuthStore::load(
                store.backend(),
                crate::auth::Tokens::new(
                    &config.auth_token,
                    config.auth_token_ttl,
                    Arc::new(crate::lease::SystemClock),
                )?,
                config.bcrypt_cost,
            )?,
            members: membership,
            solo: AtomicBool::new(solo),
            removed: AtomicBool::new(false),
            learner: AtomicBool::new(learner),
            leader_changes: AtomicU64::new(0),
            slow_read_indexes: AtomicU64::new(0),
            reads: read::Reads::default(),
            proposals_failed: AtomicU64::new(0),
            raft_tx: Mutex::new(None),
            transport: std::sync::OnceLock::new(),
            pruner: Arc::default(),
            snapshot_copies: SnapshotCopies::new(
                config.max_snapshot_copies,
                config.snapshot_send_timeout,
            ),
            free_space: alarm::FreeSpace::new(config.data_dir.clone()),
        });
        shared
            .committed_index
            .store(commit_at_start, Ordering::Relaxed);

        let (raft_tx, raft_rx) = tokio::sync::mpsc::unbounded_channel();
        *shared.raft_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(raft_tx);
        let peer_tls = crate::tls::peer_client(&config)?;
        // The peer streams run beside the loop (see `raft_loop`): on the Raft thread's own
        // runtime, or on the server's when the loop runs there.
        let raft_runtime = match place {
            LoopPlace::OwnThread => Some(raft_loop::LoopRuntime::new()?),
            LoopPlace::ServerThread => None,
        };
        let links = raft_runtime
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, LoopRuntime::handle);
        let transport = Transport::with_tls(
            Arc::new(cluster::PeerNode {
                shared: shared.clone(),
                data_dir: config.data_dir.clone(),
            }),
            tokio::runtime::Handle::current(),
            links,
            peer_tls,
        );
        for m in &members.members {
            transport.add_peer(m.id, m.peer_urls.clone());
        }
        let _ = shared.transport.set(transport.clone());
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let mut threads = Vec::new();

        let applier = Applier {
            shared: shared.clone(),
            // Counted from the WAL's last snapshot mark, not from this start: a member that restarts
            // more often than every `--snapshot-count` entries must still truncate its log.
            snapshots: SnapshotPolicy::new(config.snapshot_count, snap.index),
        };
        let core = Arc::new(Mutex::new(RaftLoop {
            node,
            wal,
            applier,
            shared: shared.clone(),
            catch_up: config.snapshot_catchup_entries,
            turn_cost: TurnCost::new(config.inline_turn_limit),
            ended: false,
            transport,
            tick: config.heartbeat_interval,
            reads: read::InFlight::new(meta.member_id),
            last_leader: 0,
            unreachable: Vec::new(),
            reissue_reads: false,
            held_reads: std::collections::VecDeque::new(),
            own_reads_held: false,
            unwritten: false,
            tick_advance_until: (config.initial_election_tick_advance && !solo)
                .then(|| std::time::Instant::now() + raft_loop::TICK_ADVANCE_WAIT),
        }));
        let thread_core = core.clone();
        let (mut local_loop, mut local_loop_ended) = (None, None);
        match raft_runtime {
            Some(raft_runtime) => threads.push(spawn_named("raft", shared.clone(), move || {
                RaftLoop::run(thread_core, raft_rx, raft_runtime)
            })?),
            None => {
                let (ended, ended_rx) = mpsc::channel();
                local_loop = Some(LocalLoop {
                    core: thread_core,
                    rx: raft_rx,
                    ended,
                });
                local_loop_ended = Some(ended_rx);
            }
        }

        let (pruner, pruner_store) = (shared.pruner.clone(), store.clone());
        threads.push(spawn_named("compaction", shared.clone(), move || {
            pruner.run(pruner_store);
            Ok(())
        })?);

        let committer_store = store.clone();
        threads.push(spawn_named("backend-commit", shared.clone(), move || {
            loop {
                match stop_rx.recv_timeout(BACKEND_COMMIT_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        crate::fault::panic_point("backend-commit");
                        committer_store.commit_backend()?
                    }
                    _ => return Ok(()),
                }
            }
        })?);

        tracing::info!(
            member_id = format!("{:x}", meta.member_id),
            cluster_id = format!("{:x}", meta.cluster_id),
            data_dir = %config.data_dir.display(),
            consistent_index,
            snapshot_index = snap.index,
            replay = commit_at_start.saturating_sub(consistent_index),
            "server started"
        );
        let server = Server {
            inner: Arc::new(Inner {
                config,
                shared,
                core,
                committer_stop: Mutex::new(Some(stop_tx)),
                threads: Mutex::new(threads),
                local_loop_ended: Mutex::new(local_loop_ended),
                _lock: lock,
            }),
        };
        Ok((server, local_loop))
    }

    /// Waits until a leader is known and everything in the log before its term is applied: what
    /// the WAL's hard state says was committed, and the entries after that too. Those were
    /// persisted and may have been acknowledged (the commit index is written with the next Ready,
    /// so a crash can leave it behind), and the new leader commits them with its first entry; a
    /// read served before they are applied would miss an acknowledged write.
    async fn wait_caught_up(&self) -> Result<()> {
        let s = &self.inner.shared;
        let target = s.committed_index.load(Ordering::Relaxed);
        self.wait_start(|| {
            caught_up(
                s.leader.load(Ordering::Acquire),
                s.leader_since.load(Ordering::Acquire),
                s.applied_index.load(Ordering::Acquire),
                target,
            )
        })
        .await
    }

    /// `LearnerNotSupported` on a learner: etcd's learners serve only Status and serializable
    /// reads.
    pub fn refuse_learner(&self) -> Result<()> {
        if self.inner.shared.learner.load(Ordering::Relaxed) {
            return Err(Error::LearnerNotSupported);
        }
        Ok(())
    }

    /// Waits until the entries the WAL recorded as committed are applied again.
    async fn wait_replayed(&self) -> Result<()> {
        let s = &self.inner.shared;
        let target = s.committed_index.load(Ordering::Relaxed);
        self.wait_start(|| s.applied_index.load(Ordering::Acquire) >= target)
            .await
    }

    /// Polls `ready` until it holds, the node fails, or the start-up bound (120 s) passes.
    async fn wait_start(&self, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !ready() {
            if let Some(why) = self.fatal_error() {
                return Err(Error::Internal(why));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// What a connection runs each round of its calls inside: a scope that holds the proposals
    /// they make and proposes them together when the round ends, in a Raft turn on the
    /// connection's thread when this member is the only voter and turns are cheap (`inline.rs`).
    /// With `--experimental-inline-turn-limit 0` the calls run bare.
    pub fn call_round(&self) -> fn(&mut dyn FnMut()) {
        if self.inner.config.inline_turn_limit.is_zero() {
            |calls| calls()
        } else {
            inline::round
        }
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The shared state (for the APIs' headers and metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The response header etcd puts on every answer: cluster, member, `revision`, Raft term.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let s = &self.inner.shared;
        ResponseHeader {
            cluster_id: s.cluster_id,
            member_id: s.member_id,
            revision,
            raft_term: s.term.load(Ordering::Relaxed),
        }
    }

    /// Completes a header whose revision the apply step set.
    fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// etcd's Put, through Raft, as the server itself; answers once applied.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        self.put_as(&Caller::Server, req).await
    }

    /// etcd's Put for `caller`, through Raft; answers once applied.
    pub async fn put_as(&self, caller: &Caller, req: PutRequest) -> Result<PutResponse> {
        kv::check_put(&req)?;
        self.propose_for_as(caller, Op::Put(req)).await
    }

    /// etcd's DeleteRange, through Raft, as the server itself; answers once applied.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.delete_range_as(&Caller::Server, req).await
    }

    /// etcd's DeleteRange for `caller`, through Raft; answers once applied.
    pub async fn delete_range_as(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        kv::check_delete(&req)?;
        self.propose_for_as(caller, Op::DeleteRange(req)).await
    }

    /// etcd's Txn, as the server itself.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        self.txn_as(&Caller::Server, req).await
    }

    /// etcd's Txn for `caller`. A transaction that writes goes through Raft (permissions checked
    /// when applied); a read-only one is checked and evaluated on the store at once (linearizable
    /// on a single voter, as every acknowledged write is applied).
    pub async fn txn_as(&self, caller: &Caller, req: TxnRequest) -> Result<TxnResponse> {
        kv::check_txn(&req, self.inner.config.max_txn_ops)?;
        if !kv::txn_has_writes(&req) {
            let lessor = &self.inner.shared.lessor;
            self.inner.shared.auth.check_txn(caller, &req, &|id| {
                lessor.time_to_live(id).map(|t| t.keys).unwrap_or_default()
            })?;
            // As a Range is served: from a read, at one revision for the whole txn; on a blocking
            // thread when a range in it may be wide.
            self.linearize().await?;
            let server = self.clone();
            let wide = kv::txn_reads_wide(&req);
            let read = move || {
                let at = kv::AtRevision::new(&server.inner.shared.store);
                let mut resp = kv::read_txn(&at, &req)?;
                kv::set_txn_revision(&mut resp, at.revision());
                server.fill(&mut resp.header);
                Ok(resp)
            };
            return if wide { blocking(read).await } else { read() };
        }
        self.propose_for_as(caller, Op::Txn(req)).await
    }

    /// etcd's Compact, through Raft. Errors as etcd does for a future or already-compacted revision.
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        self.propose_for(Op::Compaction(req)).await
    }

    /// etcd's Range, read from the store: a linearizable one once the read index is applied
    /// (`linearize`), a serializable one at once. The two are the same on a single voter: every
    /// acknowledged write is applied before it is acknowledged.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        self.range_as(&Caller::Server, req).await
    }

    /// [`Server::range`] for `caller`, who must be allowed to read the range.
    pub async fn range_as(&self, caller: &Caller, req: &RangeRequest) -> Result<RangeResponse> {
        self.inner.shared.auth.check_range(caller, req)?;
        if !req.serializable {
            self.linearize().await?;
        }
        self.read_range(req, Server::range_local).await
    }

    /// etcd's Range as the gRPC message frame of its answer (the 5-byte prefix, then the encoded
    /// `RangeResponse`), written straight from the stored records into one buffer: no record is
    /// decoded and no response struct is built, so a large range costs one copy of its data. Only
    /// for ranges whose answer is the records as stored ([`kv::answers_as_stored`]); `None` for the
    /// others. The fields come in another order than prost writes them (header, more, count, then
    /// the records), which every protobuf decoder accepts.
    pub async fn range_frame(&self, req: &RangeRequest) -> Result<Option<Vec<u8>>> {
        self.range_frame_as(&Caller::Server, req).await
    }

    /// [`Server::range_frame`] for `caller`, who must be allowed to read the range.
    pub async fn range_frame_as(
        &self,
        caller: &Caller,
        req: &RangeRequest,
    ) -> Result<Option<Vec<u8>>> {
        if !kv::answers_as_stored(req) {
            return Ok(None);
        }
        self.inner.shared.auth.check_range(caller, req)?;
        if !req.serializable {
            self.linearize().await?;
        }
        self.read_range(req, Server::range_frame_local)
            .await
            .map(Some)
    }

    /// Runs `read` of `req` where its cost belongs. A wide read ([`kv::is_wide`]) goes to the
    /// blocking pool, never to an async worker that every other request needs. A read over a key
    /// interval that is not wide still costs with the size of the interval (its count walks every
    /// key in it), so it gets a task of its own: the caller's task may be a connection's
    /// (`api::conn::runs_inline`), whose other calls it would hold up. A read of one key runs here.
    async fn read_range<T: Send + 'static>(
        &self,
        req: &RangeRequest,
        read: fn(&Server, &RangeRequest) -> Result<T>,
    ) -> Result<T> {
        if req.range_end.is_empty() {
            return read(self, req);
        }
        let wide = kv::is_wide(req);
        let (server, req) = (self.clone(), req.clone());
        let task = move || read(&server, &req);
        if wide {
            return blocking(task).await;
        }
        tokio::spawn(async move { task() })
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// [`Server::range_frame`] on this member's store as it is.
    fn range_frame_local(&self, req: &RangeRequest) -> Result<Vec<u8>> {
        if self.inner.shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        kv::check_range(req)?;
        let mut frame = FrameSink {
            server: self,
            buf: vec![0; 5],
        };
        self.inner.shared.store.range_encoded(
            &crate::mvcc::RangeOptions {
                key: req.key.clone(),
                range_end: req.range_end.clone(),
                revision: req.revision,
                limit: req.limit.max(0) as usize,
                count_only: false,
                keys_only: false,
            },
            &mut frame,
        )?;
        let mut buf = frame.buf;
        let len = u32::try_from(buf.len() - 5).map_err(|_| {
            Error::InvalidArgument(format!(
                "a range answer of {} bytes is over gRPC's 4 GiB message limit",
                buf.len() - 5
            ))
        })?;
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }

    /// A Range served from this member's store as it is (serializable).
    pub fn range_local(&self, req: &RangeRequest) -> Result<RangeResponse> {
        if self.inner.shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        kv::check_range(req)?;
        let mut resp = kv::range(&*self.inner.shared.store, req)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// etcd's LeaseGrant, through Raft. An id of 0 gets a fresh id chosen here, before proposing, so
    /// every replica grants the same lease.
    pub async fn lease_grant(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if req.id == 0 {
            req.id = self.inner.shared.lessor.new_lease_id();
        }
        self.propose_for(Op::LeaseGrant(req)).await
    }

    /// etcd's LeaseRevoke, through Raft: the lease and every key attached to it go in one revision.
    pub async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        self.lease_revoke_as(&Caller::Server, req).await
    }

    /// etcd's LeaseRevoke for `caller`, who must be allowed to write every attached key (checked
    /// when applied).
    pub async fn lease_revoke_as(
        &self,
        caller: &Caller,
        req: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse> {
        if !self.inner.shared.lessor.lookup(req.id) {
            return Err(Error::LeaseNotFound);
        }
        self.propose_for_as(caller, Op::LeaseRevoke(req)).await
    }

    /// The lessor, for the lease API's read-only calls.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.inner.shared.lessor
    }

    /// The leader's expiry loop: sleeps until the earliest lease deadline (or a second at most), then
    /// proposes a revoke for every expired lease, as etcd's leader does. Revokes go through Raft, so
    /// expiry behaves the same once there are followers.
    async fn expire_leases(self) {
        let shared = self.inner.shared.clone();
        while !shared.stopped.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            let wait = shared
                .lessor
                .next_expiry()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
            if shared.leader.load(Ordering::Relaxed) != shared.member_id {
                continue;
            }
            for id in shared.lessor.expired(EXPIRED_PER_ROUND) {
                let server = self.clone();
                tokio::spawn(async move {
                    match server.lease_revoke(LeaseRevokeRequest { id }).await {
                        Ok(_) => tracing::debug!(lease_id = id, "expired lease revoked"),
                        Err(Error::LeaseNotFound) => {}
                        Err(e) => {
                            tracing::warn!(lease_id = id, error = %e, "revoking an expired lease failed")
                        }
                    }
                });
            }
        }
    }

    /// The leader's lease checkpoints: every `every`, the remaining TTL of each lease that ran down
    /// some of its TTL goes through Raft, and so does the clearing of a checkpoint a renewal made
    /// stale (etcd's lease checkpointing). Nothing on a member alone: no other can lead after it.
    async fn checkpoint_leases(self, every: Duration) {
        use crate::proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
        let shared = self.inner.shared.clone();
        while !shared.stopped.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            if self.is_solo() || shared.leader.load(Ordering::Relaxed) != shared.member_id {
                continue;
            }
            let mut checkpoints: Vec<LeaseCheckpoint> = shared
                .lessor
                .take_cleared()
                .into_iter()
                .map(|id| LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                })
                .collect();
            checkpoints.extend(
                shared
                    .lessor
                    .due_checkpoints(CHECKPOINTS_PER_ROUND)
                    .into_iter()
                    .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl }),
            );
            for chunk in checkpoints.chunks(CHECKPOINTS_PER_ROUND) {
                let req = LeaseCheckpointRequest {
                    checkpoints: chunk.to_vec(),
                };
                if let Err(e) = self
                    .propose(&Caller::Server, Op::LeaseCheckpoint(req))
                    .await
                {
                    tracing::debug!(error = %e, "lease checkpoint failed");
                }
            }
        }
    }

    /// The auto-compaction loop: shows the compactor the revision at every sample interval and proposes
    /// the compactions it decides on (leader only).
    async fn auto_compact(self, retention: compactor::Retention) {
        let shared = self.inner.shared.clone();
        let mut c = compactor::Compactor::new(retention, std::time::Instant::now());
        while !shared.stopped.load(Ordering::Relaxed) {
            tokio::time::sleep(retention.sample_interval()).await;
            if shared.leader.load(Ordering::Relaxed) != shared.member_id {
                continue;
            }
            if let Some(revision) = c.observe(std::time::Instant::now(), self.revision()) {
                match self
                    .compact(CompactionRequest {
                        revision,
                        physical: false,
                    })
                    .await
                {
                    Ok(_) => tracing::info!(revision, "auto compaction"),
                    Err(Error::Compacted) => {}
                    Err(e) => tracing::warn!(revision, error = %e, "auto compaction failed"),
                }
            }
        }
    }

    /// Registers a watcher.
    pub fn watch(&self, req: WatchRequest) -> Watcher {
        self.inner.shared.hub.watch(req)
    }

    /// Announces that shutdown has begun: long-lived streams end (gRPC watch streams answer
    /// `Unavailable`), so that the listeners' graceful drain can finish. Idempotent; [`shutdown`]
    /// does it too.
    ///
    /// [`shutdown`]: Self::shutdown
    pub fn begin_shutdown(&self) {
        self.inner.shared.closing.send_replace(true);
    }

    /// Resolves once [`begin_shutdown`](Self::begin_shutdown) (or `shutdown`) has been called.
    pub async fn closing(&self) {
        let mut rx = self.inner.shared.closing.subscribe();
        // The sender lives in `Shared`, which outlives this call: `wait_for` cannot fail.
        let _ = rx.wait_for(|closing| *closing).await;
    }

    /// The record an event's change replaced, for a watcher that asked for `prev_kv`: puts read it
    /// only when something needs it (see `WriteTxn::put`) and history reads for catch-up skip it, so
    /// the watch stream fetches it here, as etcd's does. `None` for a put that created its key, or
    /// once compaction removed the record.
    pub fn replaced_record(
        &self,
        changed: &crate::mvcc::KeyValue,
    ) -> Option<crate::mvcc::KeyValue> {
        // A put at version 1 created its key; a delete's tombstone carries version 0 and always
        // replaced a live record.
        if changed.version == 1 {
            return None;
        }
        let opts = crate::mvcc::RangeOptions {
            key: changed.key.clone(),
            revision: changed.mod_revision - 1,
            ..Default::default()
        };
        let found = self.inner.shared.store.range(&opts).ok()?;
        found.kvs.into_iter().next()
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.inner.shared.store.current_revision()
    }

    /// A snapshot of the server's state.
    pub fn status(&self) -> Status {
        let s = &self.inner.shared;
        Status {
            member_id: s.member_id,
            cluster_id: s.cluster_id,
            leader: s.leader.load(Ordering::Relaxed),
            term: s.term.load(Ordering::Relaxed),
            committed_index: s.committed_index.load(Ordering::Relaxed),
            applied_index: s.applied_index.load(Ordering::Relaxed),
            snapshot_index: s.snapshot_index.load(Ordering::Relaxed),
            log_first_index: s.log_first_index.load(Ordering::Relaxed),
            revision: s.store.current_revision(),
            compact_revision: s.store.compact_revision(),
            db_size: s.store.backend().size_bytes().unwrap_or(0),
            watchers: s.hub.watcher_count(),
            proposals: s.proposals.load(Ordering::Relaxed),
            wal_syncs: s.wal_syncs.load(Ordering::Relaxed),
            inline_turns: s.inline_turns.load(Ordering::Relaxed),
            wal_fsync_latency: s.wal_fsync_latency.snapshot(),
            backend_commit_latency: s.store.backend().commit_latency().snapshot(),
            pending_proposals: s.wait.len(),
        }
    }

    /// The reason the node stopped by itself, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .shared
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves when a server thread hit a fatal error.
    pub async fn fatal(&self) -> String {
        loop {
            let notified = self.inner.shared.fatal_notify.notified();
            if let Some(why) = self.fatal_error() {
                return why;
            }
            notified.await;
        }
    }

    /// Proposes `op` as the server itself and waits for its response of kind `T`, with the header
    /// completed.
    pub(crate) async fn propose_for<T: Applied>(&self, op: Op) -> Result<T> {
        self.propose_for_as(&Caller::Server, op).await
    }

    /// Proposes `op` for `caller` (whose permissions the apply step checks) and waits for its
    /// response of kind `T`, with the header completed.
    pub(crate) async fn propose_for_as<T: Applied>(&self, caller: &Caller, op: Op) -> Result<T> {
        self.refuse_learner()?;
        let mut resp = T::take(self.propose(caller, op).await?).map_err(|other| {
            Error::Internal(format!(
                "apply returned a result of the wrong kind: {other:?}"
            ))
        })?;
        self.fill(resp.header());
        Ok(resp)
    }

    async fn propose(&self, caller: &Caller, op: Op) -> Result<ApplyResult> {
        let shared = &self.inner.shared;
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        self.check_quota(&op).await?;
        let (id, rx) = shared.wait.register();
        let inline_writes = inline::inline_writes(&op);
        let data = RaftRequest {
            id,
            op: Some(op),
            auth: shared.auth.header_for(caller),
        }
        .encode_to_vec();
        if data.len() > self.inner.config.max_request_bytes {
            shared.wait.cancel(id);
            return Err(Error::RequestTooLarge);
        }
        if !inline::submit(
            &self.inner,
            Proposal {
                id,
                data,
                inline_writes,
            },
        ) {
            shared.wait.cancel(id);
            return Err(Error::Stopped);
        }
        shared.proposals.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                shared.wait.cancel(id);
                Err(Error::Timeout)
            }
        };
        if matches!(
            result,
            Err(Error::Timeout | Error::NoLeader | Error::Stopped | Error::LeaderChanged)
        ) {
            shared.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Stops the server: no new proposals, the Raft loop drains and stops, the backend
    /// is committed, waiters left over are answered `Stopped`, watchers end.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.stop())
            .await
            .map_err(|e| Error::Internal(format!("shutdown task failed: {e}")))?
    }
}

impl Inner {
    fn stop(&self) -> Result<()> {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.closing.send_replace(true);
        if let Some(tx) = self
            .shared
            .raft_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(RaftMsg::Stop);
        }
        if let Some(t) = self.shared.transport.get() {
            t.stop();
        }
        self.shared.pruner.stop();
        if let Some(tx) = self
            .committer_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let local_loop_ended = self
            .local_loop_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(ended) = local_loop_ended {
            // Disconnected when the loop's task ends (or is dropped unpolled).
            let _ = ended.recv();
        }
        self.shared.wait.fail_all(|| Error::Stopped);
        self.shared.reads.fail_all(|| Error::Stopped);
        self.shared.hub.close();
        self.shared.store.commit_backend()?;
        match self
            .shared
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(why) => Err(Error::Internal(why)),
            None => Ok(()),
        }
    }
}

/// A response the apply step hands back for one kind of proposal, with its header to complete.
pub(crate) trait Applied: Sized {
    /// The response, if `r` is of this kind; `r` back otherwise.
    fn take(r: ApplyResult) -> std::result::Result<Self, ApplyResult>;
    /// Its response header.
    fn header(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! applied {
    ($($variant:ident => $response:ty),* $(,)?) => {$(
        impl Applied for $response {
            fn take(r: ApplyResult) -> std::result::Result<Self, ApplyResult> {
                match r {
                    ApplyResult::$variant(resp) => Ok(resp),
                    other => Err(other),
                }
            }
            fn header(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

applied!(
    Put => PutResponse,
    DeleteRange => DeleteRangeResponse,
    Txn => TxnResponse,
    Compaction => CompactionResponse,
    LeaseGrant => LeaseGrantResponse,
    LeaseRevoke => LeaseRevokeResponse,
    Alarm => crate::proto::etcdserverpb::AlarmResponse,
);

/// Encodes a `RangeResponse` after a 5-byte gRPC prefix, as [`Server::range_frame`] describes.
struct FrameSink<'a> {
    server: &'a Server,
    buf: Vec<u8>,
}

impl crate::mvcc::RangeSink for FrameSink<'_> {
    fn begin(&mut self, result: &crate::mvcc::RangeResult) -> Result<()> {
        use prost::encoding;
        let header = self.server.header(result.revision);
        encoding::message::encode(1, &header, &mut self.buf);
        if result.more {
            encoding::bool::encode(3, &true, &mut self.buf);
        }
        if result.count != 0 {
            encoding::int64::encode(4, &(result.count as i64), &mut self.buf);
        }
        Ok(())
    }

    fn record(&mut self, encoded: &[u8]) -> Result<()> {
        use prost::encoding;
        encoding::encode_key(2, encoding::WireType::LengthDelimited, &mut self.buf);
        encoding::encode_varint(encoded.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(encoded);
        Ok(())
    }
}

/// Runs `read` on tokio's blocking pool: a read that may walk and copy many records must not hold
/// an async worker (on two workers, two such reads would stall every other request).
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
}

/// Spawns a core thread whose error or panic stops the node: it is recorded as fatal (so `/health`
/// turns false and the process exits non-zero) and everyone waiting is told the server stopped.
fn spawn_named(
    name: &str,
    shared: Arc<Shared>,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<()>> {
    let thread_name = name.to_string();
    Ok(std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            report_end(&thread_name, &shared, end);
        })?)
}

/// How a core thread (or the loop's task) ended: an error or a panic is recorded as fatal.
fn report_end(name: &str, shared: &Shared, end: std::thread::Result<Result<()>>) {
    match end {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.fail(name, &e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".to_string());
            shared.fail(name, &Error::Internal(format!("panicked: {what}")));
        }
    }
}

/// Refuses a data directory that belongs to another member: its WAL names another member than
/// `--name`, or, for a static bootstrap, another cluster than `--initial-cluster` describes.
fn check_identity(config: &Config, meta: &WalMetadata, members: &peerpb::Members) -> Result<()> {
    if !meta.name.is_empty() && meta.name != config.name {
        return Err(Error::InvalidArgument(format!(
            "data directory {} belongs to member {:?} (id {:x}), not to --name {:?}",
            config.data_dir.display(),
            meta.name,
            meta.member_id,
            config.name
        )));
    }
    // As etcd, a restart takes its membership from the data directory, not from the flags, which
    // may list the cluster as it is now (members added, peer URLs updated). They must still name
    // the same cluster: at least one peer URL in common with the members the directory knows.
    let known: Vec<&String> = members.members.iter().flat_map(|m| &m.peer_urls).collect();
    let flags: Vec<String> = config
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().map(crate::config::url_text))
        .collect();
    if config.initial_cluster_new
        && config.initial_cluster.len() > 1
        && !known.is_empty()
        && !flags.iter().any(|u| known.contains(&u))
    {
        return Err(Error::InvalidArgument(format!(
            "data directory {} belongs to cluster {:x}, whose members ({}) are none of \
             --initial-cluster's",
            config.data_dir.display(),
            meta.cluster_id,
            known
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    Ok(())
}

/// Makes the data directory of `config` a member of `members` from the backend `store` holds: its
/// membership record in the backend, and a new WAL (metadata: this member's id, the cluster id, its
/// name; a snapshot mark at index 0 with the membership's configuration). The member is the one
/// whose peer URLs are `--initial-advertise-peer-urls`.
fn create_member(
    config: &Config,
    store: &Store,
    members: &peerpb::Members,
) -> Result<(Wal, WalContents, WalMetadata)> {
    let wal_dir = config.data_dir.join("member").join("wal");
    let me = members
        .members
        .iter()
        .find(|m| {
            m.peer_urls
                == config
                    .initial_advertise_peer_urls
                    .iter()
                    .map(crate::config::url_text)
                    .collect::<Vec<_>>()
        })
        .map(|m| m.id)
        .ok_or_else(|| {
            Error::InvalidArgument(
                "this member's peer URLs are not in the cluster's membership".into(),
            )
        })?;
    let meta = WalMetadata {
        member_id: me,
        cluster_id: members.cluster_id,
        name: config.name.clone(),
    };
    // The membership is the backend's from the start (a restored backend may carry another
    // cluster's: this member's configuration wins, as its ids do).
    let mut batch = crate::mvcc::backend::WriteBatch::new();
    Membership::new(members.clone()).save(&mut batch);
    store.backend().write(batch);
    store.commit_backend()?;
    let mut wal = Wal::create(&wal_dir, &meta.encode_to_vec(), WalOptions::default())?;
    let (voters, learners) = membership::conf_of(members);
    let mark = SnapshotMark {
        index: 0,
        term: 0,
        conf_state: ConfState::from((voters, learners)),
    };
    wal.save_snapshot(&mark)?;
    let contents = WalContents {
        metadata: meta.encode_to_vec(),
        snapshot: mark,
        ..Default::default()
    };
    Ok((wal, contents, meta))
}

/// For `mini-etcd snapshot restore`: makes the data directory of `config`, which holds a restored
/// backend and no WAL, a new member of the `--initial-cluster` membership (as a fresh start does).
/// A start with the same flags then finds its WAL and identity; the backend's consistent index,
/// ahead of the new WAL, makes the log restart from the backend.
pub fn bootstrap_restored(config: &Config) -> Result<()> {
    let store = Store::open(&config.data_dir.join("member").join("db"))?;
    let members = Membership::bootstrap(config);
    let (wal, _, _) = create_member(config, &store, &members)?;
    drop(wal);
    store.commit_backend()?;
    Ok(())
}

/// The membership of a data directory written before membership was stored: its one member.
fn single_member(config: &Config, member_id: u64, cluster_id: u64) -> peerpb::Members {
    peerpb::Members {
        cluster_id,
        members: vec![peerpb::Member {
            id: member_id,
            name: config.name.clone(),
            peer_urls: config
                .initial_advertise_peer_urls
                .iter()
                .map(crate::config::url_text)
                .collect(),
            client_urls: config
                .advertise_client_urls
                .iter()
                .map(crate::config::url_text)
                .collect(),
            is_learner: false,
        }],
        removed: Vec::new(),
    }
}

/// Whether a starting member may serve: a `leader` is known, and `applied` has reached both what the
/// WAL said was committed (`committed_at_start`) and the first entry of the leader's term (`since`,
/// 0 until this member leads), which commits every entry logged before the election.
fn caught_up(leader: u64, since: u64, applied: u64, committed_at_start: u64) -> bool {
    leader != 0 && applied >= committed_at_start && applied >= since
}

/// Takes an exclusive lock on `<data-dir>/mini-etcd.lock`, held until the server is dropped.
fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path: PathBuf = data_dir.join("mini-etcd.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            Err(Error::DataDirLocked(data_dir.display().to_string()))
        }
        Err(fs::TryLockError::Error(e)) => Err(Error::Io(e)),
    }
}

/// Forwards raft-rs's slog records to `tracing`, so the whole server logs one way.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> std::result::Result<(), slog::Never> {
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{caught_up, check_identity};
    use crate::config::{Cli, Config};
    use crate::proto::peerpb;
    use crate::server::request::WalMetadata;
    use clap::Parser;

    fn config(name: &str, cluster: &str) -> Config {
        let url = cluster
            .split(',')
            .find_map(|m| m.strip_prefix(&format!("{name}=")))
            .expect("member in cluster");
        let cli = Cli::try_parse_from([
            "mini-etcd",
            "--name",
            name,
            "--initial-advertise-peer-urls",
            url,
            "--initial-cluster",
            cluster,
        ])
        .expect("flags");
        Config::from_args(cli.server).expect("config")
    }

    #[test]
    fn a_data_directory_of_another_member_or_cluster_is_refused() {
        let abc = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3";
        let cfg = config("a", abc);
        let members = crate::server::Membership::bootstrap(&cfg);
        let meta = WalMetadata {
            member_id: cfg.member_id(),
            cluster_id: cfg.cluster_id(),
            name: "a".into(),
        };
        check_identity(&cfg, &meta, &members).expect("its own directory");
        // The flags list the cluster as it is now: a member added, another moved.
        let now = config(
            "a",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:9,d=http://127.0.0.1:4",
        );
        check_identity(&now, &meta, &members).expect("the same cluster, grown");
        let err = check_identity(&config("b", abc), &meta, &members).unwrap_err();
        assert!(err.to_string().contains("belongs to member"), "{err}");
        let other = config("a", "a=http://127.0.0.1:7,x=http://127.0.0.1:8");
        let err = check_identity(&other, &meta, &members).unwrap_err();
        assert!(err.to_string().contains("belongs to cluster"), "{err}");
        // A directory written before names and membership were stored is not refused.
        let old = WalMetadata {
            name: String::new(),
            ..meta
        };
        let one = peerpb::Members::default();
        check_identity(&cfg, &old, &one).expect("an old directory");
    }

    #[test]
    fn a_starting_member_serves_once_entries_before_the_election_are_applied() {
        // The WAL said 12 was committed, but 13 and 14 were logged (and 14 acknowledged) before
        // the crash; the new leader's first entry is 15.
        assert!(!caught_up(0, 0, 12, 12), "no leader yet");
        assert!(
            !caught_up(1, 15, 12, 12),
            "leader known, entries before its term not yet applied"
        );
        assert!(!caught_up(1, 15, 14, 12));
        assert!(caught_up(1, 15, 15, 12));
        // Another member leads (with peers): what the WAL committed is the bar.
        assert!(caught_up(2, 0, 12, 12));
        assert!(!caught_up(2, 0, 11, 12));
    }
}
