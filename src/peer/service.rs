//! The receiving side of the transport: the `Peer` gRPC service on `--listen-peer-urls`.
//!
//! On an `https://` peer URL each accepted connection runs its TLS handshake on a task of its own
//! (bounded by `HANDSHAKE_TIMEOUT`) and only then reaches the gRPC server, so a stalled dialler
//! never holds up the others. With `--peer-client-cert-auth` (or a peer trusted CA) a member
//! without a certificate from that CA fails the handshake.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::peer::{convert, Transport};
use crate::proto::peerpb;
use crate::proto::peerpb::peer_server::{Peer, PeerServer};

/// Largest message decoded on the peer port: a turn's appends to one peer (Raft caps each append
/// message at 1 MiB, and a turn sends few) stay far below it.
const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// Largest snapshot accepted: a backend over this is refused rather than written to disk.
const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// How long a peer's TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An accepted peer connection after its TLS handshake, as tonic's server takes it.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and hands each connection, once its handshake succeeded, to `tx`; ends
/// when the receiving server is gone.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<std::io::Result<TlsConn>>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(TlsConn(stream))).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "peer TLS handshake failed")
                }
                Err(_) => tracing::warn!(%remote, "peer TLS handshake timed out"),
            }
        });
    }
}

/// The `Peer` service of one member: the transport's receiving side, with its node and counters.
pub struct PeerService {
    transport: Arc<Transport>,
}

impl PeerService {
    fn check_cluster(&self, cluster_id: u64) -> std::result::Result<(), Status> {
        let ours = self.transport.node().cluster_id();
        if cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member is in cluster {ours:x}, the sender in {cluster_id:x}"
            )));
        }
        Ok(())
    }

    /// Whether messages from `from` are refused: a removed member (it is told so).
    fn check_removed(&self, from: u64) -> std::result::Result<(), Status> {
        if self.transport.node().is_removed(from) {
            return Err(Status::failed_precondition(crate::peer::REMOVED));
        }
        Ok(())
    }

    /// Whether messages between `from` and this member are dropped by the test switch.
    fn cut_off(&self, from: u64) -> bool {
        let faults = self.transport.faults();
        faults.cut(from) || faults.cut(self.transport.node().member_id())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn stream(
        &self,
        req: Request<Streaming<peerpb::Batch>>,
    ) -> std::result::Result<Response<peerpb::Ack>, Status> {
        let mut stream = req.into_inner();
        let node = self.transport.node();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            self.check_cluster(batch.cluster_id)?;
            // Every message of a batch comes from the member that opened the call.
            let Some(from) = batch.messages.first().map(|m| m.from) else {
                continue;
            };
            self.check_removed(from)?;
            if self.cut_off(from) {
                continue;
            }
            self.transport.stats_of(from).received_bytes.fetch_add(
                prost::Message::encoded_len(&batch) as u64,
                Ordering::Relaxed,
            );
            for m in batch.messages {
                if m.from != from {
                    return Err(Status::invalid_argument("a batch from several members"));
                }
                match convert::from_wire(m) {
                    Ok(msg) if msg.to == node.member_id() => node.step(msg),
                    Ok(msg) => tracing::debug!(to = msg.to, "peer message for another member"),
                    Err(e) => return Err(Status::invalid_argument(e.to_string())),
                }
            }
        }
        Ok(Response::new(peerpb::Ack {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<peerpb::SnapshotChunk>>,
    ) -> std::result::Result<Response<peerpb::Ack>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_cluster(first.cluster_id)?;
        let msg = first
            .message
            .ok_or_else(|| Status::invalid_argument("snapshot without its message"))?;
        let msg = convert::from_wire(msg).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if msg.msg_type != raft::eraftpb::MessageType::MsgSnapshot || !msg.has_snapshot() {
            return Err(Status::invalid_argument("not a snapshot message"));
        }
        self.check_removed(msg.from)?;
        if self.cut_off(msg.from) {
            return Err(Status::unavailable("cut off (test switch)"));
        }
        if first.total_bytes > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted("snapshot too large"));
        }
        let node = self.transport.node();
        let dir = node.snapshot_dir();
        let path = dir.join(format!(
            "recv-{:016x}-{}.db",
            msg.get_snapshot().get_metadata().index,
            std::process::id()
        ));
        let written = receive_file(&path, &mut stream, first.total_bytes).await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Status::data_loss(e.to_string()));
        }
        self.transport
            .stats_of(msg.from)
            .received_bytes
            .fetch_add(first.total_bytes, Ordering::Relaxed);
        tracing::info!(
            from = format!("{:x}", msg.from),
            index = msg.get_snapshot().get_metadata().index,
            bytes = first.total_bytes,
            "snapshot received"
        );
        node.snapshot_received(msg, path);
        Ok(Response::new(peerpb::Ack {}))
    }

    async fn members(
        &self,
        _: Request<peerpb::MembersRequest>,
    ) -> std::result::Result<Response<peerpb::Members>, Status> {
        Ok(Response::new(self.transport.node().members()))
    }

    async fn learner_ready(
        &self,
        req: Request<peerpb::LearnerReadyRequest>,
    ) -> std::result::Result<Response<peerpb::LearnerReadyResponse>, Status> {
        let answer = self
            .transport
            .node()
            .learner_ready(req.into_inner().id)
            .await
            .unwrap_or(None);
        Ok(Response::new(peerpb::LearnerReadyResponse {
            ready: answer == Some(true),
            not_leader: answer.is_none(),
        }))
    }

    async fn lease_renew(
        &self,
        req: Request<peerpb::LeaseRenewRequest>,
    ) -> std::result::Result<Response<peerpb::LeaseRenewResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            self.transport.node().lease_renew(req.id, req.peek),
        ))
    }
}

/// Writes the chunks to `path`, checks the size and the checksum the last chunk carries, and syncs
/// the file.
async fn receive_file(
    path: &std::path::Path,
    stream: &mut Streaming<peerpb::SnapshotChunk>,
    total: u64,
) -> Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut got = 0u64;
    let mut sum = 0u32;
    let mut expected = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| Error::Internal(format!("snapshot stream: {s}")))?;
        got += chunk.data.len() as u64;
        if got > total {
            return Err(Error::Corrupt("snapshot longer than announced".into()));
        }
        sum = crc32c::crc32c_append(sum, &chunk.data);
        file.write_all(&chunk.data).await?;
        // Only the last chunk carries the checksum (a data chunk leaves it 0).
        expected = Some(chunk.crc32c);
    }
    if got != total || expected != Some(sum) {
        return Err(Error::Corrupt(format!(
            "snapshot damaged in transit: {got} of {total} bytes, checksum {sum:08x} against {expected:08x?}"
        )));
    }
    file.sync_all().await?;
    Ok(())
}

/// Serves the peer service of `transport`'s member on `listener` until `shutdown` resolves; with
/// `tls`, over TLS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: Arc<Transport>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let svc = PeerService { transport };
    tracing::info!(addr = ?addr, tls = tls.is_some(), "serving the peer API");
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::peer::STREAM_WINDOW)
        .initial_connection_window_size(crate::peer::STREAM_WINDOW)
        .add_service(
            PeerServer::new(svc)
                .max_decoding_message_size(MAX_BATCH_BYTES)
                .max_encoding_message_size(MAX_BATCH_BYTES),
        );
    let served = match tls {
        None => {
            server
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
        Some(config) => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let accepting = tokio::spawn(accept_tls(listener, acceptor, tx));
            let served = server
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    shutdown,
                )
                .await;
            accepting.abort();
            served
        }
    };
    served.map_err(|e| Error::Internal(format!("peer server: {e}")))
}
