//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use crate::api::grpc::caller_of;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::server::Server;

/// etcd's `KV` service over the server handle.
pub struct KvService {
    /// The server every call goes to.
    server: Server,
}

impl KvService {
    /// A KV service for `server`.
    pub fn new(server: Server) -> KvService {
        KvService { server }
    }

    /// The server the calls go to.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let req = req.into_inner();
        self.server
            .range_as(&caller, &req)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        self.server
            .put_as(&caller, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        self.server
            .delete_range_as(&caller, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let req = req.into_inner();
        if crate::server::kv::txn_has_writes(&req) {
            // Waits for Raft, like a put: stays on the connection's task (`api::conn`).
            return self
                .server
                .txn_as(&caller, req)
                .await
                .map(Response::new)
                .map_err(|e| e.to_status());
        }
        // A read-only txn computes its ranges on the task that calls it: a task of its own, so a large
        // one does not hold up the other calls on its connection.
        let server = self.server.clone();
        match tokio::spawn(async move { server.txn_as(&caller, req).await }).await {
            Ok(result) => result.map(Response::new).map_err(|e| e.to_status()),
            Err(e) => Err(Status::internal(format!("txn task failed: {e}"))),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Not permission-checked (etcd 3.4 checks no compaction), but a bad token is still refused.
        caller_of(&self.server, &req)?;
        self.server
            .compact(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}
