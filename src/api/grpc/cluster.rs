//! The Cluster service: membership. A single member lists itself; changing membership waits for
//! clustering and is refused with gRPC `Unimplemented`, which etcd clients report as an error without
//! retrying (they retry only `Unavailable`).

use tonic::{Request, Response, Status};

use crate::error::Error;
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

fn not_yet(call: &str) -> Status {
    Error::Unimplemented(format!(
        "{call} is not supported yet: this server runs as a single member until clustering lands"
    ))
    .to_status()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.server.header(self.server.revision())),
            members: vec![self.server.member()],
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
