//! The server's side of clustering: what the peer transport asks of this member ([`PeerNode`]),
//! joining an existing cluster, membership changes, leadership transfer, linearizable reads, and
//! lease keep-alives that reach a follower.
//!
//! Membership changes are Raft configuration changes, one member at a time as etcd makes them (no
//! joint consensus): add a voter or a learner, promote a learner, remove a member. The proposer
//! waits for the entry to be applied on itself (`ApplyResult::Members`), as for any write. A member
//! that applies its own removal stops serving and says why. Attributes (name, client URLs published
//! at start, peer URLs changed by `MemberUpdate`) are ordinary entries.
//!
//! Changes are checked as etcd's `--strict-reconfig-check` does (the started voters must stay a
//! quorum; `membership::ready_to_*`). A promotion also needs the learner to hold 90 % of the
//! leader's log; only the leader knows, so a follower asks it over the peer transport. Left out:
//! etcd's "unhealthy cluster" check (every voter connected in the last 5 s).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Message};

use crate::auth::Caller;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListResponse, MemberPromoteResponse,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use crate::proto::peerpb;
use crate::server::membership::{self, to_etcd};
use crate::server::raft_loop::RaftMsg;
use crate::server::request::Op;
use crate::server::wait::ApplyResult;
use crate::server::{Server, Shared, REQUEST_TIMEOUT};
use crate::snap::copies::SnapshotCopy;

/// What the peer transport reaches of this member.
pub struct PeerNode {
    /// The server's shared state.
    pub shared: Arc<Shared>,
    /// The data directory (snapshots in transit are written under it).
    pub data_dir: PathBuf,
}

impl Shared {
    /// Sends `m` to the Raft thread; false once it is gone.
    pub(crate) fn to_raft(&self, m: RaftMsg) -> bool {
        let tx = self.raft_tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(m).is_ok())
    }
}

impl crate::peer::Node for PeerNode {
    fn member_id(&self) -> u64 {
        self.shared.member_id
    }

    fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }

    fn step(&self, msg: Message) {
        self.shared.to_raft(RaftMsg::Step(Box::new(msg)));
    }

    fn report_unreachable(&self, to: u64) {
        self.shared.to_raft(RaftMsg::Unreachable(to));
    }

    fn report_snapshot(&self, to: u64, finished: bool) {
        self.shared.to_raft(RaftMsg::SnapshotStatus(to, finished));
    }

    fn snapshot_file(&self, index: u64) -> Result<SnapshotCopy> {
        // The snapshot's metadata comes from Raft's storage, whose commit index is applied by the
        // end of the turn that recorded it; wait for that, so the copy covers the index.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while self.shared.applied_index.load(Ordering::Acquire) < index {
            if Instant::now() > deadline || self.shared.stopped.load(Ordering::Relaxed) {
                return Err(Error::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let path = self.snapshot_dir().join(format!(
            "send-{index:016x}-{}.db",
            SEND_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let backend = self.shared.store.backend();
        let mut copy =
            self.shared
                .snapshot_copies
                .start(path, backend.size_bytes().unwrap_or(0), None);
        let bytes = backend.snapshot_to(copy.path())?;
        copy.settle(bytes);
        Ok(copy)
    }

    fn snapshot_send_timeout(&self) -> Duration {
        self.shared.snapshot_copies.send_timeout()
    }

    fn snapshot_dir(&self) -> PathBuf {
        // Created at start (`Server::open`).
        self.data_dir.join("member").join("snap")
    }

    fn snapshot_received(&self, mut msg: Message, path: PathBuf) {
        // The data Raft carries is the path of the received file; the install reads it from there.
        msg.mut_snapshot().data = path.to_string_lossy().into_owned().into_bytes().into();
        self.shared.to_raft(RaftMsg::Step(Box::new(msg)));
    }

    fn members(&self) -> peerpb::Members {
        let mut m = self.shared.members.get();
        m.cluster_id = self.shared.cluster_id;
        m
    }

    fn lease_renew(&self, id: i64, peek: bool) -> peerpb::LeaseRenewResponse {
        if self.shared.leader.load(Ordering::Acquire) != self.shared.member_id {
            return peerpb::LeaseRenewResponse {
                ttl: 0,
                not_leader: true,
            };
        }
        let ttl = if peek {
            self.shared
                .lessor
                .time_to_live(id)
                .map_or(-1, |t| t.remaining_ttl)
        } else {
            self.shared.lessor.renew(id).unwrap_or(-1)
        };
        peerpb::LeaseRenewResponse {
            ttl,
            not_leader: false,
        }
    }

    fn is_removed(&self, id: u64) -> bool {
        self.shared.members.is_removed(id)
    }

    fn learner_ready(&self, id: u64) -> tokio::sync::oneshot::Receiver<Option<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.to_raft(RaftMsg::LearnerReady(id, tx));
        rx
    }

    fn removed_by_peer(&self) {
        self.shared.removed.store(true, Ordering::SeqCst);
        // Wakes the Raft thread, which stops the member after its turn.
        self.shared.to_raft(RaftMsg::ReadIndex);
    }
}

static SEND_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// For `--initial-cluster-state existing`: asks the other members of `--initial-cluster` for the
/// membership, which must already list this member's peer URLs (`etcdctl member add` first).
pub fn join(config: &Config) -> Result<peerpb::Members> {
    let mine: Vec<String> = config
        .initial_advertise_peer_urls
        .iter()
        .map(crate::config::url_text)
        .collect();
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().map(crate::config::url_text))
        .filter(|u| !mine.contains(u))
        .collect();
    if others.is_empty() {
        return Err(Error::InvalidArgument(
            "--initial-cluster-state existing needs the other members in --initial-cluster".into(),
        ));
    }
    let tls = crate::tls::peer_client(config)?;
    let runtime = tokio::runtime::Handle::current();
    let members = runtime.block_on(async {
        for url in &others {
            let Some(mut client) = crate::peer::connect(std::slice::from_ref(url), &tls).await
            else {
                continue;
            };
            if let Ok(resp) = client.members(peerpb::MembersRequest {}).await {
                return Some(resp.into_inner());
            }
        }
        None
    });
    let members = members.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "--initial-cluster-state existing: no member of the cluster answered at {}",
            others.join(",")
        ))
    })?;
    if !members.members.iter().any(|m| m.peer_urls == mine) {
        return Err(Error::InvalidArgument(format!(
            "--initial-cluster-state existing: the cluster has no member with peer URLs {} (add it \
             first: etcdctl member add {} --peer-urls={})",
            mine.join(","),
            config.name,
            mine.join(",")
        )));
    }
    tracing::info!(
        cluster_id = format!("{:x}", members.cluster_id),
        members = members.members.len(),
        "joining an existing cluster"
    );
    Ok(members)
}

impl Server {
    /// Whether this member is the only voter (no peers): writes and reads take the short paths.
    pub fn is_solo(&self) -> bool {
        self.shared().solo.load(Ordering::Acquire)
    }

    /// Waits until a linearizable read may be served from this member's store: on the only voter at
    /// once, otherwise once the applied index reaches Raft's read index (`read.rs`).
    pub async fn linearize(&self) -> Result<()> {
        let s = self.shared();
        if s.stopped.load(Ordering::Relaxed) {
            return Err(if s.removed.load(Ordering::Relaxed) {
                Error::MemberRemoved
            } else {
                Error::Stopped
            });
        }
        if self.is_solo() {
            return Ok(());
        }
        self.refuse_learner()?;
        // Without a leader no read index can be had: wait an election for one, then give up as
        // etcd does, rather than hold the client for the whole request timeout.
        let deadline = tokio::time::Instant::now() + self.config().election_timeout * 2;
        while s.leader.load(Ordering::Acquire) == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NoLeader);
            }
            tokio::time::sleep(self.config().heartbeat_interval / 2).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if s.reads.park(tx) && !s.to_raft(RaftMsg::ReadIndex) {
            return Err(Error::Stopped);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Serves the peer API on `listener` until `shutdown` resolves; with `tls` (see
    /// [`crate::tls::peer_server`]), over TLS.
    pub async fn serve_peers(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Some(transport) = self.shared().transport.get().cloned() else {
            return;
        };
        // Served where the outgoing streams run, on the loop's thread: a message from a peer
        // reaches the loop on the thread that runs it. With a Raft thread, its runtime ends with
        // the loop, and with it the peer API; on the server's thread the service ends at shutdown.
        let links = transport.links().clone();
        let served = links.spawn(crate::peer::service::serve(
            listener, transport, tls, shutdown,
        ));
        match served.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the peer API stopped"),
            Err(e) if e.is_panic() => tracing::error!(error = %e, "the peer API panicked"),
            _ => {}
        }
    }

    /// The header of a membership answer: etcd's `ClusterServer` fills in the cluster, the member
    /// and the term, never a revision.
    fn member_header(&self) -> ResponseHeader {
        self.header(0)
    }

    /// etcd's MemberList.
    pub fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: Some(self.member_header()),
            members: self.shared().members.etcd_members(),
        }
    }

    /// etcd's MemberAdd: a new voter or learner with these peer URLs, not yet started.
    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse> {
        let members = self.shared().members.get();
        let urls = membership::check_peer_urls(&members, &req.peer_ur_ls, None)?;
        if req.is_learner && members.members.iter().filter(|m| m.is_learner).count() >= 1 {
            return Err(Error::TooManyLearners);
        }
        if !req.is_learner && !membership::ready_to_add_voter(&members) {
            return Err(Error::NotEnoughStartedMembers);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // etcd's MemberAdd hashes the URLs and the time, with no cluster token.
        let id = crate::config::member_id_of(&urls, "", Some(now));
        if members.members.iter().any(|m| m.id == id) || members.removed.contains(&id) {
            return Err(Error::MemberExists);
        }
        let member = peerpb::Member {
            id,
            name: String::new(),
            peer_urls: urls,
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let ty = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let list = self.conf_change(ty, member.clone()).await?;
        Ok(MemberAddResponse {
            header: Some(self.member_header()),
            member: Some(to_etcd(&member)),
            members: list,
        })
    }

    /// etcd's MemberRemove.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        let member = self
            .shared()
            .members
            .member(id)
            .ok_or(Error::MemberNotFound)?;
        if !member.is_learner
            && !membership::ready_to_remove_voter(&self.shared().members.get(), id)
        {
            return Err(Error::NotEnoughStartedMembers);
        }
        let list = self.conf_change(ConfChangeType::RemoveNode, member).await?;
        Ok(MemberRemoveResponse {
            header: Some(self.member_header()),
            members: list,
        })
    }

    /// etcd's MemberPromote: a learner becomes a voter, once it has caught up with the leader.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        let member = self
            .shared()
            .members
            .member(id)
            .ok_or(Error::MemberNotFound)?;
        if !member.is_learner {
            return Err(Error::MemberNotLearner);
        }
        if !membership::ready_to_promote(&self.shared().members.get(), id) {
            return Err(Error::NotEnoughStartedMembers);
        }
        // Only the leader knows how far the learner is: asked here, or over the peer transport.
        if !self.learner_ready(id).await? {
            return Err(Error::LearnerNotReady);
        }
        let list = self.conf_change(ConfChangeType::AddNode, member).await?;
        Ok(MemberPromoteResponse {
            header: Some(self.member_header()),
            members: list,
        })
    }

    /// Whether learner `id` may be promoted, as the leader sees it.
    async fn learner_ready(&self, id: u64) -> Result<bool> {
        let s = self.shared();
        let leader = s.leader.load(Ordering::Acquire);
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if leader == s.member_id {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if !s.to_raft(RaftMsg::LearnerReady(id, tx)) {
                return Err(Error::Stopped);
            }
            return match rx.await {
                Ok(Some(ready)) => Ok(ready),
                Ok(None) => Err(Error::LeaderChanged),
                Err(_) => Err(Error::Stopped),
            };
        }
        let mut client = self.leader_client(leader).await?;
        match client
            .learner_ready(peerpb::LearnerReadyRequest { id })
            .await
            .map(|r| r.into_inner())
        {
            Ok(r) if r.not_leader => Err(Error::LeaderChanged),
            Ok(r) => Ok(r.ready),
            Err(_) => Err(Error::NoLeader),
        }
    }

    /// A client of the leader's peer API.
    async fn leader_client(
        &self,
        leader: u64,
    ) -> Result<crate::proto::peerpb::peer_client::PeerClient<tonic::transport::Channel>> {
        let transport = self.shared().transport.get().ok_or(Error::NoLeader)?;
        transport.client_of(leader).await.ok_or(Error::NoLeader)
    }

    /// etcd's MemberUpdate: new peer URLs for a member.
    pub async fn member_update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse> {
        let members = self.shared().members.get();
        if !members.members.iter().any(|m| m.id == req.id) {
            return Err(Error::MemberNotFound);
        }
        let urls = membership::check_peer_urls(&members, &req.peer_ur_ls, Some(req.id))?;
        let attrs = peerpb::Member {
            id: req.id,
            peer_urls: urls,
            ..Default::default()
        };
        let list = match self
            .propose(&Caller::Server, Op::MemberAttributes(attrs))
            .await?
        {
            ApplyResult::Members(list) => list,
            other => {
                return Err(Error::Internal(format!(
                    "member update applied as {other:?}"
                )))
            }
        };
        Ok(MemberUpdateResponse {
            header: Some(self.member_header()),
            members: list,
        })
    }

    async fn conf_change(
        &self,
        ty: ConfChangeType,
        member: peerpb::Member,
    ) -> Result<Vec<crate::proto::etcdserverpb::Member>> {
        // One change at a time, as Raft allows: while another is not yet applied, try again.
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.conf_change_once(ty, member.clone()).await {
                Err(Error::ConfChangePending) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn conf_change_once(
        &self,
        ty: ConfChangeType,
        member: peerpb::Member,
    ) -> Result<Vec<crate::proto::etcdserverpb::Member>> {
        let s = self.shared();
        if s.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let (waiter, rx) = s.wait.register();
        let context = peerpb::ConfChangeContext {
            waiter,
            member: Some(member.clone()),
            proposer: s.member_id,
        };
        let cc = ConfChange {
            change_type: ty,
            node_id: member.id,
            context: context.encode_to_vec().into(),
            ..Default::default()
        };
        if !s.to_raft(RaftMsg::ConfChange(Box::new(cc), waiter)) {
            s.wait.cancel(waiter);
            return Err(Error::Stopped);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(Ok(ApplyResult::Members(list)))) => Ok(list),
            Ok(Ok(Ok(other))) => Err(Error::Internal(format!(
                "membership change applied as {other:?}"
            ))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                s.wait.cancel(waiter);
                Err(Error::Timeout)
            }
        }
    }

    /// etcd's MoveLeader: asks the leader (this member) to hand leadership to `target`, and waits
    /// until it has (or an election timeout passes).
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        let s = self.shared();
        if s.leader.load(Ordering::Acquire) != s.member_id {
            return Err(Error::NotLeader);
        }
        let Some(m) = s.members.member(target) else {
            return Err(Error::BadLeaderTransferee);
        };
        if m.is_learner {
            return Err(Error::BadLeaderTransferee);
        }
        if target == s.member_id {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now()
            + self.config().election_timeout * 2
            + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            if !s.to_raft(RaftMsg::TransferLeader(target)) {
                return Err(Error::Stopped);
            }
            tokio::time::sleep(self.config().heartbeat_interval).await;
            if s.leader.load(Ordering::Acquire) == target {
                return Ok(());
            }
        }
        Err(Error::LeaderTransferTimeout)
    }

    /// Renews lease `id`: here when this member leads (or is alone), else at the leader, over the
    /// peer transport, as etcd forwards keep-alives. Its TTL, or `LeaseNotFound`.
    pub async fn lease_renew(&self, id: i64) -> Result<i64> {
        self.at_lease_leader(id, false).await
    }

    /// Lease `id`'s remaining TTL as the leader counts it (only the leader tracks expiries; etcd
    /// forwards `LeaseTimeToLive` the same way), or `LeaseNotFound`.
    pub async fn lease_remaining(&self, id: i64) -> Result<i64> {
        self.at_lease_leader(id, true).await
    }

    async fn at_lease_leader(&self, id: i64, peek: bool) -> Result<i64> {
        let s = self.shared();
        let leader = s.leader.load(Ordering::Acquire);
        if self.is_solo() || leader == s.member_id {
            return if peek {
                s.lessor.time_to_live(id).map(|t| t.remaining_ttl)
            } else {
                s.lessor.renew(id)
            };
        }
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        let mut client = self.leader_client(leader).await?;
        match client
            .lease_renew(peerpb::LeaseRenewRequest { id, peek })
            .await
            .map(|r| r.into_inner())
        {
            Ok(r) if r.not_leader => Err(Error::LeaderChanged),
            Ok(r) if r.ttl < 0 => Err(Error::LeaseNotFound),
            Ok(r) => Ok(r.ttl),
            Err(_) => Err(Error::NoLeader),
        }
    }

    /// Publishes this member's name and client URLs to the cluster once a leader is known, as etcd
    /// does at start; retried until the membership shows them.
    pub(crate) async fn publish_attributes(self) {
        let s = self.shared().clone();
        let want = peerpb::Member {
            id: s.member_id,
            name: self.config().name.clone(),
            client_urls: self
                .config()
                .advertise_client_urls
                .iter()
                .map(crate::config::url_text)
                .collect(),
            ..Default::default()
        };
        while !s.stopped.load(Ordering::Relaxed) {
            let published = s
                .members
                .member(s.member_id)
                .is_some_and(|m| m.name == want.name && m.client_urls == want.client_urls);
            if published {
                return;
            }
            if s.leader.load(Ordering::Acquire) != 0 {
                match self
                    .propose(&Caller::Server, Op::MemberAttributes(want.clone()))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(name = %want.name, "published this member's attributes")
                    }
                    Err(e) => tracing::debug!(error = %e, "publishing attributes failed; retrying"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
