//! The Cluster service: membership (list, add, remove, update, promote), over the server's
//! membership changes (`server::cluster`).

use tonic::{Request, Response, Status};

use crate::api::grpc::caller_of;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::server::Server;

/// etcd's `Cluster` service over the server handle.
pub struct ClusterService {
    /// The server every call goes to.
    server: Server,
}

impl ClusterService {
    /// A Cluster service for `server`.
    pub fn new(server: Server) -> ClusterService {
        ClusterService { server }
    }
}

impl ClusterService {
    /// With auth enabled, membership changes need the `root` role (etcd's
    /// `checkMembershipOperationPermission`).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = caller_of(&self.server, req)?;
        self.server
            .auth()
            .check_admin(&caller)
            .map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin(&req)?;
        self.server
            .member_add(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&req)?;
        self.server
            .member_remove(req.into_inner().id)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&req)?;
        self.server
            .member_update(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.server.refuse_learner().map_err(|e| e.to_status())?;
        Ok(Response::new(self.server.member_list()))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&req)?;
        self.server
            .member_promote(req.into_inner().id)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}
