//! The Lease service: Grant and Revoke go through Raft; KeepAlive, TimeToLive and Leases are answered by
//! the leader's lessor, as in etcd.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::caller_of;
use crate::error::Error;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::server::Server;

/// The keep-alive response stream.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// etcd's `Lease` service over the server handle.
pub struct LeaseService {
    /// The server every call goes to.
    server: Server,
}

impl LeaseService {
    /// A Lease service for `server`.
    pub fn new(server: Server) -> LeaseService {
        LeaseService { server }
    }
}

/// One keep-alive: the lease's TTL, or TTL 0 when it does not exist (etcd answers an unknown or
/// expired lease that way instead of failing the stream).
pub async fn keep_alive_once(server: &Server, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let ttl = match server.lease_renew(id).await {
        Ok(ttl) => ttl,
        Err(Error::LeaseNotFound) => 0,
        Err(e) => return Err(e.to_status()),
    };
    Ok(LeaseKeepAliveResponse {
        header: Some(server.header(server.revision())),
        id,
        ttl,
    })
}

/// TimeToLive: an unknown lease answers TTL -1, as etcd does (etcdctl prints "already expired").
/// The remaining TTL is the leader's (asked over the peer transport on a follower); the granted
/// TTL and the keys are the same on every member.
pub async fn time_to_live(
    server: &Server,
    req: &LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let header = Some(server.header(server.revision()));
    let remaining = match server.lease_remaining(req.id).await {
        Ok(ttl) => Some(ttl),
        Err(Error::LeaseNotFound) => None,
        Err(e) => return Err(e.to_status()),
    };
    Ok(match server.lessor().time_to_live(req.id) {
        Ok(t) if remaining.is_some() => LeaseTimeToLiveResponse {
            header,
            id: t.id,
            ttl: remaining.unwrap_or(t.remaining_ttl),
            granted_ttl: t.granted_ttl,
            keys: if req.keys { t.keys } else { Vec::new() },
        },
        _ => LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
    })
}

/// Leases: every lease id.
pub fn leases(server: &Server) -> LeaseLeasesResponse {
    LeaseLeasesResponse {
        header: Some(server.header(server.revision())),
        leases: server
            .lessor()
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect(),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        caller_of(&self.server, &req)?;
        self.server
            .lease_grant(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        self.server
            .lease_revoke_as(&caller, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.server.refuse_learner().map_err(|e| e.to_status())?;
        let server = self.server.clone();
        let stream = req.into_inner().then(move |msg| {
            let server = server.clone();
            async move {
                match msg {
                    Ok(r) => keep_alive_once(&server, r.id).await,
                    Err(status) => Err(status),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let resp = time_to_live(&self.server, &req.into_inner()).await?;
        // The attached keys are names the caller may not be allowed to see (etcd 3.5's check).
        self.server
            .auth()
            .check_read_keys(&caller, &resp.keys)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(leases(&self.server)))
    }
}
