//! The Maintenance service: Status, Hash, HashKV, Defragment, Snapshot, Alarm, MoveLeader, Downgrade.
//!
//! Everything here concerns this member (see `server/maintenance.rs`), except alarms, which are
//! cluster state and change through Raft (`server/alarm.rs`).

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::api::grpc::caller_of;
use crate::api::rest::ETCD_API_VERSION;
use crate::error::Error;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::server::Server;

/// etcd's `Maintenance` service over the server handle.
pub struct MaintenanceService {
    /// The server every call goes to.
    server: Server,
}

impl MaintenanceService {
    /// A Maintenance service for `server`.
    pub fn new(server: Server) -> MaintenanceService {
        MaintenanceService { server }
    }

    /// With auth enabled, the calls that read or rewrite the whole store need the `root` role
    /// (etcd's `authMaintenanceServer`; its refusals keep the auth package's texts, code Unknown).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = caller_of(&self.server, req)?;
        self.server
            .auth()
            .check_admin_maintenance(&caller)
            .map_err(|e| e.to_status())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.server
            .alarm(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.maintenance_status(ETCD_API_VERSION))
            .await
            .map_err(|e| Error::Internal(format!("status task failed: {e}")).to_status())?
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req)?;
        self.server.defragment().await.map_err(|e| e.to_status())?;
        // etcd 3.4 answers an empty message, without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req)?;
        let (hash, revision) = self.server.hash().await.map_err(|e| e.to_status())?;
        Ok(Response::new(HashResponse {
            header: Some(self.server.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req)?;
        let h = self
            .server
            .hash_kv(req.into_inner().revision)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.server.header(h.current)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req)?;
        let chunks = self.server.snapshot().await.map_err(|e| e.to_status())?;
        let stream = chunks.map(|r| r.map_err(|e| e.to_status()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&req)?;
        let target = req.into_inner().target_id;
        self.server
            .move_leader(target)
            .await
            .map_err(|e| e.to_status())?;
        // etcd 3.4 answers an empty message, without a header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        // etcd 3.4 has no Downgrade at all: grpc-go answers a method it does not know with this
        // status. There is no older version of us to downgrade to either.
        Err(Error::Unimplemented(
            "unknown method Downgrade for service etcdserverpb.Maintenance".into(),
        )
        .to_status())
    }
}
