//! The Auth service, while authentication does not exist yet: it answers as etcd does with
//! authentication disabled and no users or roles, and refuses what would need an auth store.
//!
//! Observed on etcd 3.4 with auth off: `auth status` says disabled; `user list` and `role list` are
//! empty; `user get`/`delete`/`passwd`/`grant-role`/`revoke-role` answer "etcdserver: user name not
//! found" and the role calls "etcdserver: role name not found" (FailedPrecondition), which is exactly
//! right for a store with no users; `auth disable` succeeds; Authenticate answers "etcdserver:
//! authentication is not enabled" (clients then go on without a token). Adding users or roles and
//! enabling authentication need the auth store: they answer `Unimplemented` with a clear text.

use tonic::{Request, Response, Status};

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
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use crate::server::Server;

/// etcd's `ErrGRPCUserNotFound` text (FailedPrecondition).
pub const USER_NOT_FOUND: &str = "etcdserver: user name not found";
/// etcd's `ErrGRPCRoleNotFound` text (FailedPrecondition).
pub const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";

/// etcd's `Auth` service over the server handle.
pub struct AuthService {
    /// The server every call goes to (for response headers).
    server: Server,
}

impl AuthService {
    /// An Auth service for `server`.
    pub fn new(server: Server) -> AuthService {
        AuthService { server }
    }

    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        Some(self.server.header(self.server.revision()))
    }
}

fn later(call: &str) -> Status {
    Error::Unimplemented(format!(
        "etcdserver: {call}: authentication comes in a later release"
    ))
    .to_status()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn auth_enable(
        &self,
        _: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(later("auth enable"))
    }

    async fn auth_disable(
        &self,
        _: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn authenticate(
        &self,
        _: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(Error::AuthNotEnabled.to_status())
    }

    async fn user_add(
        &self,
        _: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(later("user add"))
    }

    async fn user_get(
        &self,
        _: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(Status::failed_precondition(USER_NOT_FOUND))
    }

    async fn user_list(
        &self,
        _: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            ..Default::default()
        }))
    }

    async fn user_delete(
        &self,
        _: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(Status::failed_precondition(USER_NOT_FOUND))
    }

    async fn user_change_password(
        &self,
        _: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(Status::failed_precondition(USER_NOT_FOUND))
    }

    async fn user_grant_role(
        &self,
        _: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(Status::failed_precondition(USER_NOT_FOUND))
    }

    async fn user_revoke_role(
        &self,
        _: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(Status::failed_precondition(USER_NOT_FOUND))
    }

    async fn role_add(
        &self,
        _: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(later("role add"))
    }

    async fn role_get(
        &self,
        _: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(Status::failed_precondition(ROLE_NOT_FOUND))
    }

    async fn role_list(
        &self,
        _: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            ..Default::default()
        }))
    }

    async fn role_delete(
        &self,
        _: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(Status::failed_precondition(ROLE_NOT_FOUND))
    }

    async fn role_grant_permission(
        &self,
        _: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(Status::failed_precondition(ROLE_NOT_FOUND))
    }

    async fn role_revoke_permission(
        &self,
        _: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(Status::failed_precondition(ROLE_NOT_FOUND))
    }
}
