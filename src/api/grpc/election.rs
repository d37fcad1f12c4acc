//! The Election service (etcd's `v3election`): Campaign, Proclaim, Leader, Observe, Resign. The
//! queue of candidates, the waiting and the observing are the server's (`server::concurrency`);
//! this only unwraps requests, streams Observe's answers, and answers errors as etcd's service
//! does (code Unknown, etcd's text).

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::grpc::{check_concurrency, concurrency_prefix};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::server::Server;

/// Observe's response stream.
pub type ObserveStream =
    Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

/// Observe answers queued for a client that reads slowly; the observer waits beyond it.
const OBSERVE_BUFFER: usize = 16;

/// etcd's `Election` service over the server handle.
pub struct ElectionService {
    /// The server every call goes to.
    server: Server,
}

impl ElectionService {
    /// An Election service for `server`.
    pub fn new(server: Server) -> ElectionService {
        ElectionService { server }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().name);
        check_concurrency(&self.server, &req, &prefix, true)?;
        self.server
            .campaign(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().leader.clone().unwrap_or_default().name);
        check_concurrency(&self.server, &req, &prefix, true)?;
        self.server
            .proclaim(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().name);
        check_concurrency(&self.server, &req, &prefix, false)?;
        self.server
            .election_leader(&req.into_inner().name)
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().name);
        check_concurrency(&self.server, &req, &prefix, false)?;
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let server = self.server.clone();
        tokio::spawn(async move {
            let sender = tx.clone();
            let observing = server.observe(&name, |resp| {
                let tx = sender.clone();
                async move { tx.send(Ok(resp)).await.is_ok() }
            });
            // The observer waits on watches most of the time: a client that went away ends it
            // there, not only at its next answer.
            let end = tokio::select! {
                end = observing => end,
                () = tx.closed() => Ok(()),
            };
            if let Err(e) = end {
                let _ = tx.send(Err(e.to_client_side_status())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().leader.clone().unwrap_or_default().name);
        check_concurrency(&self.server, &req, &prefix, true)?;
        self.server
            .resign(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }
}
