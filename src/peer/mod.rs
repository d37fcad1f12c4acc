//! The peer transport: how the members of one cluster carry Raft's messages to each other.
//!
//! Each member listens on `--listen-peer-urls` with one gRPC service (`proto/peer/peer.proto`):
//!
//! - `Stream`: a long-lived call from one member to another that carries batches of Raft messages.
//!   Raft needs no answer per message (replies travel the other way, on the other member's own
//!   call), so one call per pair and direction is enough, and a message costs one HTTP/2 frame.
//! - `Snapshot`: a snapshot of the whole state (the backend file) in 64 KiB chunks, then a CRC-32C of
//!   the whole, stored to a file before Raft sees the message that names it (installed by
//!   `server::raft_loop`). The sender streams from a temporary copy (`snap::copies`: accounted,
//!   removed when the transfer ends) and gives up, failing the transfer, when the receiver takes no
//!   chunk for `--snapshot-send-timeout`.
//! - `Members`: the membership, for a member that joins with `--initial-cluster-state existing`.
//! - `LeaseRenew`: a keep-alive that reached a follower, forwarded to the leader.
//!
//! **Sending** ([`Transport::send`]) never blocks the Raft thread: the messages of a turn for one
//! peer become one batch, put straight into the bounded queue ([`PEER_QUEUE`] batches) of that
//! peer's open stream call; a task per peer connects, opens the call and hands its queue over, and
//! on any failure takes it back and reconnects with a backoff (50 ms doubling to 1 s). A batch that
//! finds the queue full or no call open is dropped and the peer reported unreachable to Raft, which
//! then probes it instead of streaming appends at it; Raft retransmits whatever was lost. A slow or
//! dead peer therefore costs the others nothing. Snapshots go on a task of their own, on the server's
//! runtime, so a large one never holds up the small messages.
//!
//! **Receiving** decodes with prost only (see `convert`), refuses a batch from another cluster and
//! messages no peer may send, and hands the rest to Raft through the node's channel.
//!
//! **Where it runs.** The stream calls, both the outgoing ones and the service that receives them,
//! run on the runtime of the Raft loop's thread (`Transport::links`), beside the loop
//! (`server::raft_loop`): the Raft thread's own single-threaded runtime, or, for a member whose
//! loop runs on its one server thread, the server's runtime. A message Raft sends is written by the HTTP/2 stack on the same thread
//! once the loop awaits, and a received one reaches the loop's channel on the thread that runs the
//! loop: a round of messages between members crosses no thread inside a member. With the streams
//! on the server's runtime instead, every message cost two thread wake-ups (the loop waking a
//! worker to write it, a worker waking the loop with what it read), and a linearizable read takes
//! several such rounds. The price is that the peer I/O waits while a turn runs: the loop lets the
//! streams write a leader's appends before it persists and applies, so followers store them while
//! the leader does.
//!
//! **A test switch.** When the `MINI_ETCD_PEER_FAULTS` environment variable names a file, every
//! member id (hex) listed in it is cut off: messages to and from it are dropped on both sides. The
//! file is read again every 50 ms. Tests use it to partition a cluster without root privileges;
//! without the variable the check is one load of an empty flag.
//!
//! **TLS.** A peer URL with `https://` is dialled with TLS (`crate::tls::Connector`): the other
//! member's certificate must chain to `--peer-trusted-ca-file` (with `--peer-auto-tls` it is not
//! verified at all, as etcd's auto TLS does), and ours goes along as the client certificate that
//! `--peer-client-cert-auth` asks for. The listening side is `service::serve`.
//!
//! Left out: etcd's own peer protocol (a mini-etcd member cannot join an etcd cluster).

pub mod convert;
pub mod service;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::histogram::Histogram;
use crate::proto::peerpb;
use crate::proto::peerpb::peer_client::PeerClient;
use crate::snap::copies::{send_within, SnapshotCopy};

/// Batches queued for one peer before further ones are dropped (and the peer reported
/// unreachable). A batch holds the messages of one Raft turn for that peer.
pub const PEER_QUEUE: usize = 1024;
/// HTTP/2 flow-control windows of peer connections: a stream of appends must not wait for window
/// updates at the 64 KiB default.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Bytes of a snapshot per chunk.
pub const SNAPSHOT_CHUNK: usize = 64 * 1024;
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the round trip to each peer is measured (etcd: every 5 s while unhealthy, else 30 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What the transport needs of the local member.
pub trait Node: Send + Sync + 'static {
    /// This member's id.
    fn member_id(&self) -> u64;
    /// The cluster's id.
    fn cluster_id(&self) -> u64;
    /// Hands a message received from a peer to Raft.
    fn step(&self, msg: Message);
    /// Tells Raft that messages to `to` were lost.
    fn report_unreachable(&self, to: u64);
    /// Tells Raft how sending a snapshot to `to` ended.
    fn report_snapshot(&self, to: u64, finished: bool);
    /// Writes a consistent copy of the state that covers at least `index` to a new file and returns
    /// it (blocking); dropping the copy removes the file.
    fn snapshot_file(&self, index: u64) -> Result<SnapshotCopy>;
    /// How long a snapshot transfer waits for the receiver to take a chunk before it gives up.
    fn snapshot_send_timeout(&self) -> Duration;
    /// Where a received snapshot is written before Raft sees it.
    fn snapshot_dir(&self) -> PathBuf;
    /// Hands a received snapshot message to Raft; its file is `path`.
    fn snapshot_received(&self, msg: Message, path: PathBuf);
    /// The membership as this member knows it.
    fn members(&self) -> peerpb::Members;
    /// Renews a lease if this member leads (with `peek`, only reports its remaining TTL).
    fn lease_renew(&self, id: i64, peek: bool) -> peerpb::LeaseRenewResponse;
    /// Whether messages from `id` are refused (a removed member).
    fn is_removed(&self, id: u64) -> bool;
    /// A peer refused this member's messages because the cluster removed it.
    fn removed_by_peer(&self);
    /// On the leader: whether learner `id` may be promoted; `None` when this member does not lead.
    fn learner_ready(&self, id: u64) -> tokio::sync::oneshot::Receiver<Option<bool>>;
}

/// What a member answers to messages from a member the cluster removed (etcd's words); the removed
/// member stops when it hears it.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

/// Traffic counters per peer, for `/metrics` (etcd's `etcd_network_peer_*`).
pub struct PeerStats {
    /// Bytes sent to the peer.
    pub sent_bytes: AtomicU64,
    /// Bytes received from the peer.
    pub received_bytes: AtomicU64,
    /// Batches dropped because the peer's queue was full or its connection down (etcd's
    /// `etcd_network_peer_sent_failures_total`).
    pub dropped: AtomicU64,
    /// Round trips of the `Members` probe to the peer (etcd's peer round trip time).
    pub round_trip: Histogram,
    /// Whether the peer's stream is connected.
    pub active: AtomicBool,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            round_trip: Histogram::round_trip(),
            active: AtomicBool::new(false),
        }
    }
}

struct Peer {
    urls: Vec<String>,
    /// A client of the peer's API for forwarded calls (keep-alives, TTLs, learner checks), made on
    /// the first one and kept: tonic's channel reconnects by itself, so calls share one connection.
    client: Arc<Mutex<Option<PeerClient<tonic::transport::Channel>>>>,
    /// The open stream's queue of batches (`None` while not connected).
    link: Link,
    task: tokio::task::JoinHandle<()>,
    prober: tokio::task::JoinHandle<()>,
    stats: Arc<PeerStats>,
}

/// Where the Raft thread puts a peer's batches: the queue of the stream call that is open now.
type Link = Arc<Mutex<Option<mpsc::Sender<peerpb::Batch>>>>;

impl Peer {
    fn stop(self) {
        self.task.abort();
        self.prober.abort();
        self.stats.active.store(false, Ordering::Relaxed);
    }
}

/// The outgoing side of the transport, and the fault switch both sides consult.
pub struct Transport {
    node: Arc<dyn Node>,
    /// Where snapshot transfers, round-trip probes and the fault switch run.
    runtime: tokio::runtime::Handle,
    /// Where the peer streams run: the Raft loop's thread's runtime (see the module docs).
    links: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Stats of peers by id, kept after a peer is removed so that counters never go back.
    stats: Mutex<HashMap<u64, Arc<PeerStats>>>,
    faults: Arc<Faults>,
    /// How `https://` peer URLs are dialled.
    tls: PeerTls,
}

/// The peer client's TLS settings; `None` when no peer TLS flag is set (an `https://` peer URL then
/// cannot be reached).
pub type PeerTls = Option<Arc<tokio_rustls::rustls::ClientConfig>>;

impl Transport {
    /// A transport with no peers yet, running every task on `runtime`, without TLS.
    pub fn new(node: Arc<dyn Node>, runtime: tokio::runtime::Handle) -> Arc<Transport> {
        Transport::with_tls(node, runtime.clone(), runtime, None)
    }

    /// A transport whose peer streams run on `links` (the runtime of the thread that calls
    /// [`Transport::send`]) and its other tasks on `runtime`, dialling `https://` peer URLs with
    /// `tls`.
    pub fn with_tls(
        node: Arc<dyn Node>,
        runtime: tokio::runtime::Handle,
        links: tokio::runtime::Handle,
        tls: PeerTls,
    ) -> Arc<Transport> {
        let faults = Faults::from_env(&runtime);
        Arc::new(Transport {
            node,
            runtime,
            links,
            peers: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            faults,
            tls,
        })
    }

    /// The runtime the peer streams run on; the receiving side of the transport is served there
    /// too, so that a received message reaches the Raft loop without a thread hand-off.
    pub fn links(&self) -> &tokio::runtime::Handle {
        &self.links
    }

    /// How this transport dials `https://` peer URLs.
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// The member this transport serves.
    pub fn node(&self) -> &Arc<dyn Node> {
        &self.node
    }

    /// The fault switch (shared with the receiving service).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Starts (or, with new URLs, restarts) the sender to peer `id`.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.node.member_id() || urls.is_empty() {
            return;
        }
        let mut peers = lock(&self.peers);
        if peers.get(&id).is_some_and(|p| p.urls == urls) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.stop();
        }
        let stats = lock(&self.stats).entry(id).or_default().clone();
        let link: Link = Arc::default();
        let task = self.links.spawn(run_link(
            id,
            urls.clone(),
            link.clone(),
            self.node.clone(),
            stats.clone(),
            self.tls.clone(),
        ));
        let prober = self
            .runtime
            .spawn(probe(urls.clone(), stats.clone(), self.tls.clone()));
        peers.insert(
            id,
            Peer {
                urls,
                client: Arc::default(),
                link,
                task,
                prober,
                stats,
            },
        );
    }

    /// How many peers' streams are connected now.
    pub fn active_peers(&self) -> usize {
        lock(&self.peers)
            .values()
            .filter(|p| p.stats.active.load(Ordering::Relaxed))
            .count()
    }

    /// Stops sending to peer `id`.
    pub fn remove_peer(&self, id: u64) {
        if let Some(p) = lock(&self.peers).remove(&id) {
            p.stop();
        }
    }

    /// Stops sending to every peer `keep` refuses (members a newer membership no longer has).
    pub fn retain_peers(&self, keep: impl Fn(u64) -> bool) {
        let gone: Vec<Peer> = {
            let mut peers = lock(&self.peers);
            let ids: Vec<u64> = peers.keys().copied().filter(|&id| !keep(id)).collect();
            ids.into_iter().filter_map(|id| peers.remove(&id)).collect()
        };
        for p in gone {
            p.stop();
        }
    }

    /// The ids of the peers this member sends to.
    pub fn peer_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = lock(&self.peers).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The peer URLs of `id`, if it is a peer.
    pub fn peer_urls(&self, id: u64) -> Option<Vec<String>> {
        lock(&self.peers).get(&id).map(|p| p.urls.clone())
    }

    /// A client of peer `id`'s peer API, connected to the first of its URLs that answers, and kept
    /// for the next call.
    pub async fn client_of(&self, id: u64) -> Option<PeerClient<tonic::transport::Channel>> {
        let (urls, cache) = {
            let peers = lock(&self.peers);
            let peer = peers.get(&id)?;
            (peer.urls.clone(), peer.client.clone())
        };
        if let Some(client) = lock(&cache).clone() {
            return Some(client);
        }
        let client = connect(&urls, &self.tls).await?;
        *lock(&cache) = Some(client.clone());
        Some(client)
    }

    /// The counters of peer `id` (created on first use).
    pub fn stats_of(&self, id: u64) -> Arc<PeerStats> {
        lock(&self.stats).entry(id).or_default().clone()
    }

    /// Per-peer counters, by peer id.
    pub fn stats(&self) -> Vec<(u64, Arc<PeerStats>)> {
        let mut v: Vec<_> = lock(&self.stats)
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Queues `msgs` for their peers without waiting; returns the peers whose messages could not be
    /// queued (Raft is to be told they are unreachable). A peer's messages of one call go as one
    /// batch, straight into its open stream; snapshots start a transfer of their own.
    pub fn send(&self, msgs: Vec<Message>) -> Vec<u64> {
        let mut unreachable = Vec::new();
        let me = self.node.member_id();
        let cluster_id = self.node.cluster_id();
        let peers = lock(&self.peers);
        let mut batches: Vec<(u64, peerpb::Batch)> = Vec::new();
        for m in msgs {
            let to = m.to;
            let Some(peer) = peers.get(&to) else {
                // A member that is not (or no longer) a peer: nothing to send it to.
                unreachable.push(to);
                continue;
            };
            if m.msg_type == MessageType::MsgSnapshot {
                self.runtime.spawn(send_snapshot(
                    m,
                    peer.urls.clone(),
                    self.node.clone(),
                    self.faults.clone(),
                    peer.stats.clone(),
                    self.tls.clone(),
                ));
                continue;
            }
            if self.faults.cut(to) || self.faults.cut(me) {
                continue;
            }
            let wire = convert::to_wire(&m);
            match batches.iter_mut().find(|(id, _)| *id == to) {
                Some((_, b)) => b.messages.push(wire),
                None => batches.push((
                    to,
                    peerpb::Batch {
                        cluster_id,
                        messages: vec![wire],
                    },
                )),
            }
        }
        for (to, batch) in batches {
            let Some(peer) = peers.get(&to) else {
                continue;
            };
            let bytes = prost::Message::encoded_len(&batch) as u64;
            let sent = lock(&peer.link)
                .as_ref()
                .is_some_and(|tx| tx.try_send(batch).is_ok());
            if sent {
                peer.stats.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
            } else {
                peer.stats.dropped.fetch_add(1, Ordering::Relaxed);
                unreachable.push(to);
            }
        }
        unreachable.sort_unstable();
        unreachable.dedup();
        unreachable
    }

    /// Stops every sender.
    pub fn stop(&self) {
        for (_, p) in lock(&self.peers).drain() {
            p.stop();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects to the first of `urls` that answers.
pub async fn connect(
    urls: &[String],
    tls: &PeerTls,
) -> Option<PeerClient<tonic::transport::Channel>> {
    for url in urls {
        // The TLS connector below dials TLS whatever the scheme says; tonic itself is told
        // `http`, because with its own TLS features on (another crate may turn them on) it would
        // refuse to hand an `https` URL to a connector it did not configure.
        let tls_url = tls.as_ref().and(url.strip_prefix("https://"));
        let target = match tls_url {
            Some(rest) => format!("http://{rest}"),
            None => url.clone(),
        };
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(target) else {
            continue;
        };
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match tls {
            Some(config) if tls_url.is_some() => {
                endpoint
                    .connect_with_connector(crate::tls::Connector {
                        config: Arc::clone(config),
                        timeout: CONNECT_TIMEOUT,
                    })
                    .await
            }
            _ => endpoint.connect().await,
        };
        if let Ok(ch) = channel {
            return Some(
                PeerClient::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
    }
    None
}

/// One peer's link: connect, open the stream call and hand its queue to the Raft loop's
/// [`Transport::send`], which writes into it directly (no task in between); when the call fails,
/// take the queue back, report the peer unreachable, back off and connect again.
async fn run_link(
    id: u64,
    urls: Vec<String>,
    link: Link,
    node: Arc<dyn Node>,
    stats: Arc<PeerStats>,
    tls: PeerTls,
) {
    let mut backoff = Duration::from_millis(50);
    let mut was_up = true;
    loop {
        let Some(mut client) = connect(&urls, &tls).await else {
            if was_up {
                tracing::warn!(peer = format!("{id:x}"), "cannot reach peer");
                was_up = false;
            }
            node.report_unreachable(id);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        if !was_up {
            tracing::info!(peer = format!("{id:x}"), "peer reachable again");
            was_up = true;
        }
        backoff = Duration::from_millis(50);
        let (tx, rx) = mpsc::channel::<peerpb::Batch>(PEER_QUEUE);
        *lock(&link) = Some(tx);
        stats.active.store(true, Ordering::Relaxed);
        let ended = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        // Whatever was queued for the call is lost with it; Raft resends what matters.
        lock(&link).take();
        stats.active.store(false, Ordering::Relaxed);
        if let Err(status) = ended {
            if status.message() == REMOVED {
                tracing::error!(peer = format!("{id:x}"), "{REMOVED}");
                node.removed_by_peer();
                return;
            }
            tracing::debug!(peer = format!("{id:x}"), %status, "peer stream ended");
        }
        node.report_unreachable(id);
        tokio::time::sleep(backoff).await;
    }
}

/// Measures the round trip to a peer (a `Members` call) every [`PROBE_INTERVAL`], for etcd's
/// `etcd_network_peer_round_trip_time_seconds`.
async fn probe(urls: Vec<String>, stats: Arc<PeerStats>, tls: PeerTls) {
    let mut client = None;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if client.is_none() {
            client = connect(&urls, &tls).await;
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let started = Instant::now();
        match c.members(peerpb::MembersRequest {}).await {
            Ok(_) => stats.round_trip.observe(started.elapsed()),
            Err(_) => client = None,
        }
    }
}

/// Sends one snapshot: a fresh copy of the state (covering the message's index), in chunks, then
/// tells Raft how it went.
async fn send_snapshot(
    msg: Message,
    urls: Vec<String>,
    node: Arc<dyn Node>,
    faults: Arc<Faults>,
    stats: Arc<PeerStats>,
    tls: PeerTls,
) {
    let to = msg.to;
    let started = Instant::now();
    let result = snapshot_transfer(&msg, &urls, &node, &faults, &stats, &tls).await;
    match &result {
        Ok(bytes) => tracing::info!(
            peer = format!("{to:x}"),
            index = msg.get_snapshot().get_metadata().index,
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        ),
        Err(e) => tracing::warn!(peer = format!("{to:x}"), error = %e, "sending a snapshot failed"),
    }
    node.report_snapshot(to, result.is_ok());
    if result.is_err() {
        node.report_unreachable(to);
    }
}

async fn snapshot_transfer(
    msg: &Message,
    urls: &[String],
    node: &Arc<dyn Node>,
    faults: &Faults,
    stats: &PeerStats,
    tls: &PeerTls,
) -> Result<u64> {
    use crate::error::Error;
    if faults.cut(msg.to) || faults.cut(node.member_id()) {
        return Err(Error::Internal("peer cut off (test switch)".into()));
    }
    let index = msg.get_snapshot().get_metadata().index;
    let n = node.clone();
    let copy = tokio::task::spawn_blocking(move || n.snapshot_file(index))
        .await
        .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))??;
    let timeout = node.snapshot_send_timeout();
    // Read once, chunk by chunk: a backend of any size is never held in memory. The checksum of
    // the whole goes in a last chunk of its own.
    let total = tokio::fs::metadata(copy.path()).await?.len();
    let (tx, rx) = mpsc::channel::<peerpb::SnapshotChunk>(4);
    let first = peerpb::SnapshotChunk {
        cluster_id: node.cluster_id(),
        message: Some(convert::to_wire(msg)),
        total_bytes: total,
        ..Default::default()
    };
    if tx.send(first).await.is_err() {
        return Err(Error::Internal("snapshot stream closed".into()));
    }
    // Owns the copy: its file is gone as soon as the last chunk is queued or the transfer fails.
    let reader = async move {
        let mut file = Some(std::fs::File::open(copy.path())?);
        let mut crc = 0u32;
        loop {
            let mut f = file
                .take()
                .ok_or_else(|| Error::Internal("snapshot reader lost".into()))?;
            let (buf, n, f) = tokio::task::spawn_blocking(move || -> Result<_> {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = read_full(&mut f, &mut buf)?;
                buf.truncate(n);
                Ok((buf, n, f))
            })
            .await
            .map_err(|e| Error::Internal(format!("snapshot reader failed: {e}")))??;
            file = Some(f);
            let chunk = if n == 0 {
                peerpb::SnapshotChunk {
                    crc32c: crc,
                    ..Default::default()
                }
            } else {
                crc = crc32c::crc32c_append(crc, &buf);
                peerpb::SnapshotChunk {
                    data: buf,
                    ..Default::default()
                }
            };
            // A receiver that stops reading fails the transfer after `timeout`; one that went away
            // ends it here, and the call reports why.
            if !send_within(&tx, chunk, timeout).await? || n == 0 {
                drop(copy);
                return Ok::<(), Error>(());
            }
        }
    };
    let mut client = connect(urls, tls)
        .await
        .ok_or_else(|| Error::Internal("cannot reach peer".into()))?;
    let call = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::pin!(reader);
    tokio::pin!(call);
    // A reader that gives up abandons the call too (dropping it resets the stream): a follower that
    // stopped reading holds neither a thread nor the copy.
    let sent = tokio::select! {
        read = &mut reader => {
            read?;
            call.await
        }
        sent = &mut call => sent,
    };
    sent.map_err(|s| Error::Internal(format!("snapshot refused: {}", s.message())))?;
    stats.sent_bytes.fetch_add(total, Ordering::Relaxed);
    Ok(total)
}

/// Fills `buf` from `file` as far as it goes; 0 at the end.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The test switch: member ids cut off from the rest (see the module docs).
pub struct Faults {
    enabled: AtomicBool,
    cut: RwLock<HashSet<u64>>,
}

impl Faults {
    fn from_env(runtime: &tokio::runtime::Handle) -> Arc<Faults> {
        let faults = Arc::new(Faults {
            enabled: AtomicBool::new(false),
            cut: RwLock::new(HashSet::new()),
        });
        let Some(path) = std::env::var_os("MINI_ETCD_PEER_FAULTS") else {
            return faults;
        };
        let path = PathBuf::from(path);
        tracing::warn!(file = %path.display(), "peer fault switch on (MINI_ETCD_PEER_FAULTS): for tests only");
        faults.enabled.store(true, Ordering::Relaxed);
        let weak = Arc::downgrade(&faults);
        runtime.spawn(async move {
            while let Some(f) = weak.upgrade() {
                let ids: HashSet<u64> = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
                    .collect();
                *f.cut
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
                drop(f);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        faults
    }

    /// Whether member `id` is cut off.
    pub fn cut(&self, id: u64) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && self
                .cut
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&id)
    }
}
