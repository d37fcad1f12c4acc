//! etcd's Auth service: users, roles, the auth switch and Authenticate.
//!
//! Every change goes through Raft as one `Op::Auth` entry (`server/auth.rs`, `crate::auth`), with the
//! caller's identity, so the root-role rule is checked against the state the change is applied to.
//! `UserGet`, `UserList`, `RoleGet`, `RoleList` and `AuthStatus` read this member's state after a
//! linearizable barrier. `UserGet` of oneself and `RoleGet` of one's own role need no root role
//! (as etcd 3.4 answers). Errors are etcd's texts and codes (`Error::to_status`).

use tonic::{Request, Response, Status};

use crate::api::grpc::caller_of;
use crate::auth::AuthOp;
use crate::error::Error;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use crate::server::Server;

/// etcd's `Auth` service over the server handle.
pub struct AuthService {
    /// The server every call goes to.
    server: Server,
}

impl AuthService {
    /// An Auth service for `server`.
    pub fn new(server: Server) -> AuthService {
        AuthService { server }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.server.header(self.server.revision()))
    }

    /// Applies `op` as the caller of `req`; answers with a fresh header.
    async fn change<T>(
        &self,
        req: &Request<T>,
        op: AuthOp,
    ) -> Result<Option<ResponseHeader>, Status> {
        let caller = caller_of(&self.server, req)?;
        self.server
            .auth_change(&caller, op)
            .await
            .map(Some)
            .map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.server.linearize().await.map_err(|e| e.to_status())?;
        let auth = self.server.auth();
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: auth.is_enabled(),
            auth_revision: auth.revision(),
        }))
    }

    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let op = AuthOp::Enable(*req.get_ref());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let op = AuthOp::Disable(*req.get_ref());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let token = self
            .server
            .authenticate(r.name, r.password)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        if req.get_ref().name.is_empty() {
            return Err(Error::UserEmpty.to_status());
        }
        let op = AuthOp::UserAdd(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let roles = self
            .server
            .user_get(&caller, &req.get_ref().name)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let users = self
            .server
            .user_list(&caller)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let op = AuthOp::UserDelete(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let op = AuthOp::UserChangePassword(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let op = AuthOp::UserGrantRole(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let op = AuthOp::UserRevokeRole(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let op = AuthOp::RoleAdd(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let perm = self
            .server
            .role_get(&caller, &req.get_ref().role)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = caller_of(&self.server, &req)?;
        let roles = self
            .server
            .role_list(&caller)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let op = AuthOp::RoleDelete(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let op = AuthOp::RoleGrantPermission(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let op = AuthOp::RoleRevokePermission(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
