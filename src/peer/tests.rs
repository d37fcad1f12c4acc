//! The snapshot sender against a follower that stops reading; the peer set following a membership.

use std::sync::Mutex;

use raft::eraftpb::Snapshot;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::proto::peerpb::peer_server::{Peer, PeerServer};
use crate::snap::copies::SnapshotCopies;

/// A member that sends from a fixed file and records how transfers ended.
struct Sender {
    dir: tempfile::TempDir,
    copies: SnapshotCopies,
    reports: Mutex<Vec<(u64, bool)>>,
}

impl Node for Sender {
    fn member_id(&self) -> u64 {
        1
    }
    fn cluster_id(&self) -> u64 {
        7
    }
    fn step(&self, _: Message) {}
    fn report_unreachable(&self, _: u64) {}
    fn report_snapshot(&self, to: u64, finished: bool) {
        self.reports.lock().unwrap().push((to, finished));
    }
    fn snapshot_file(&self, _: u64) -> Result<SnapshotCopy> {
        let path = self.dir.path().join("send-copy.db");
        let len = 4 << 20;
        std::fs::write(&path, vec![1u8; len])?;
        Ok(self.copies.start(path, len as u64, None))
    }
    fn snapshot_send_timeout(&self) -> Duration {
        Duration::from_millis(300)
    }
    fn snapshot_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    fn snapshot_received(&self, _: Message, _: PathBuf) {}
    fn members(&self) -> peerpb::Members {
        peerpb::Members::default()
    }
    fn lease_renew(&self, _: i64, _: bool) -> peerpb::LeaseRenewResponse {
        peerpb::LeaseRenewResponse::default()
    }
    fn is_removed(&self, _: u64) -> bool {
        false
    }
    fn removed_by_peer(&self) {}
    fn learner_ready(&self, _: u64) -> tokio::sync::oneshot::Receiver<Option<bool>> {
        tokio::sync::oneshot::channel().1
    }
}

/// A follower that takes the first chunk of a snapshot and then never reads or answers again.
struct Stalled;

#[tonic::async_trait]
impl Peer for Stalled {
    async fn stream(
        &self,
        _: Request<Streaming<peerpb::Batch>>,
    ) -> std::result::Result<Response<peerpb::Ack>, Status> {
        Err(Status::unimplemented("stream"))
    }
    async fn snapshot(
        &self,
        req: Request<Streaming<peerpb::SnapshotChunk>>,
    ) -> std::result::Result<Response<peerpb::Ack>, Status> {
        let mut chunks = req.into_inner();
        let _ = chunks.message().await;
        std::future::pending::<()>().await;
        Err(Status::internal("unreachable"))
    }
    async fn members(
        &self,
        _: Request<peerpb::MembersRequest>,
    ) -> std::result::Result<Response<peerpb::Members>, Status> {
        Ok(Response::new(peerpb::Members::default()))
    }
    async fn lease_renew(
        &self,
        _: Request<peerpb::LeaseRenewRequest>,
    ) -> std::result::Result<Response<peerpb::LeaseRenewResponse>, Status> {
        Err(Status::unimplemented("lease_renew"))
    }
    async fn learner_ready(
        &self,
        _: Request<peerpb::LearnerReadyRequest>,
    ) -> std::result::Result<Response<peerpb::LearnerReadyResponse>, Status> {
        Err(Status::unimplemented("learner_ready"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_fails_the_transfer_and_frees_the_copy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            // The protocol's smallest windows: the sender stalls after 64 KiB of a 4 MiB copy.
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .add_service(PeerServer::new(Stalled))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let sender = Arc::new(Sender {
        dir: tempfile::tempdir().unwrap(),
        copies: SnapshotCopies::new(1, Duration::from_secs(1)),
        reports: Mutex::new(Vec::new()),
    });
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    msg.from = 1;
    msg.to = 2;
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 5;
    snap.mut_metadata().term = 1;
    msg.set_snapshot(snap);
    let faults = Arc::new(Faults {
        enabled: AtomicBool::new(false),
        cut: RwLock::new(HashSet::new()),
    });
    let node: Arc<dyn Node> = sender.clone();
    tokio::time::timeout(
        Duration::from_secs(20),
        send_snapshot(msg, vec![url], node, faults, Arc::default(), None),
    )
    .await
    .expect("the transfer to a follower that stopped reading never gave up");
    assert_eq!(*sender.reports.lock().unwrap(), vec![(2, false)]);
    assert!(
        !sender.dir.path().join("send-copy.db").exists(),
        "copy left behind"
    );
    assert_eq!(sender.copies.bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_peers_stops_the_members_a_membership_dropped() {
    let node: Arc<dyn Node> = Arc::new(Sender {
        dir: tempfile::tempdir().unwrap(),
        copies: SnapshotCopies::new(1, Duration::from_secs(1)),
        reports: Mutex::new(Vec::new()),
    });
    let transport = Transport::new(node, tokio::runtime::Handle::current());
    // Unreachable URLs: the links retry in the background, which is all a peer needs here.
    for id in [2, 3, 4] {
        transport.add_peer(id, vec![format!("http://127.0.0.1:9/{id}")]);
    }
    assert_eq!(transport.peer_ids(), vec![2, 3, 4]);
    transport.retain_peers(|id| id != 3);
    assert_eq!(transport.peer_ids(), vec![2, 4]);
    assert_eq!(transport.peer_urls(3), None);
    transport.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_share_one_kept_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(Stalled))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let node: Arc<dyn Node> = Arc::new(Sender {
        dir: tempfile::tempdir().unwrap(),
        copies: SnapshotCopies::new(1, Duration::from_secs(1)),
        reports: Mutex::new(Vec::new()),
    });
    let transport = Transport::new(node, tokio::runtime::Handle::current());
    transport.add_peer(2, vec![url]);
    let mut first = transport.client_of(2).await.expect("connects");
    first
        .members(peerpb::MembersRequest::default())
        .await
        .expect("a call");
    // With the peer's listener gone a new connection cannot be made; the kept client is handed out.
    server.abort();
    let _ = server.await;
    assert!(
        transport.client_of(2).await.is_some(),
        "the client was not kept"
    );
    transport.stop();
}
