//! The Lock service (etcd's `v3lock`): Lock waits until the caller holds a named lock, Unlock
//! passes it on. The queue and the waiting are the server's (`server::concurrency`); this only
//! unwraps the request and answers errors as etcd's service does (code Unknown, etcd's text).

use tonic::{Request, Response, Status};

use crate::api::grpc::{check_concurrency, concurrency_prefix};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::server::Server;

/// etcd's `Lock` service over the server handle.
pub struct LockService {
    /// The server every call goes to.
    server: Server,
}

impl LockService {
    /// A Lock service for `server`.
    pub fn new(server: Server) -> LockService {
        LockService { server }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let prefix = concurrency_prefix(&req.get_ref().name);
        check_concurrency(&self.server, &req, &prefix, true)?;
        let req = req.into_inner();
        self.server
            .lock(&req.name, req.lease)
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = req.get_ref().key.clone();
        check_concurrency(&self.server, &req, &key, true)?;
        self.server
            .unlock(req.into_inner().key)
            .await
            .map(Response::new)
            .map_err(|e| e.to_client_side_status())
    }
}
