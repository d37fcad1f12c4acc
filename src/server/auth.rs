//! The server side of etcd's Auth service: who a request's token names, and auth changes through
//! Raft. The state and its rules are `crate::auth`'s; this file only routes calls to it, hashes
//! passwords off the async threads before proposing, and reads the state after a linearizable
//! barrier so a listing never misses an acknowledged change.

use crate::auth::{Applied, AuthOp, AuthRequest, AuthStore, Caller, ClientCertName, Issued};
use crate::error::{Error, Result};
use crate::proto::authpb::Permission;
use crate::proto::etcdserverpb::{AuthenticateRequest, ResponseHeader};
use crate::server::request::Op;
use crate::server::wait::ApplyResult;
use crate::server::{blocking, Server};

impl Server {
    /// The auth store as applied here.
    pub fn auth(&self) -> &AuthStore {
        &self.shared().auth
    }

    /// The caller a request carrying `token` is (see [`AuthStore::caller`]).
    pub fn caller(&self, token: Option<&str>) -> Result<Caller> {
        self.shared().auth.caller(token)
    }

    /// The caller a request carrying `token`, on a connection with client certificate `cert`, is
    /// (see [`AuthStore::caller_or_cert`]).
    pub fn caller_or_cert(
        &self,
        token: Option<&str>,
        cert: Option<&ClientCertName>,
    ) -> Result<Caller> {
        self.shared().auth.caller_or_cert(token, cert)
    }

    /// The caller that HTTP Basic credentials make, after a password check off the async threads.
    pub async fn caller_with_password(&self, name: String, password: String) -> Result<Caller> {
        let server = self.clone();
        blocking(move || server.shared().auth.caller_with_password(&name, &password)).await
    }

    /// etcd's Authenticate: checks the password (bcrypt, off the async threads), then hands out a
    /// token: a simple token once every member has applied it, or a signed one at once.
    pub async fn authenticate(&self, name: String, password: String) -> Result<String> {
        let server = self.clone();
        let member = self.shared().member_id;
        let n = name.clone();
        let issued =
            blocking(move || server.shared().auth.authenticate(&n, &password, member)).await?;
        match issued {
            Issued::Signed(token) => Ok(token),
            Issued::Propose(token) => {
                let op = AuthOp::Authenticate(AuthenticateRequest {
                    name,
                    password: token,
                });
                match self.propose_auth(&Caller::Server, op).await? {
                    Applied::Token(t) => Ok(t),
                    Applied::Done => Err(Error::Internal(
                        "Authenticate applied without a token".into(),
                    )),
                }
            }
        }
    }

    /// An auth change for `caller`, through Raft. Passwords in `UserAdd` and `UserChangePassword`
    /// are hashed here first, so only the hash travels and is stored.
    pub async fn auth_change(&self, caller: &Caller, mut op: AuthOp) -> Result<ResponseHeader> {
        let password = match &mut op {
            AuthOp::UserAdd(r) if !r.options.as_ref().is_some_and(|o| o.no_password) => {
                Some((std::mem::take(&mut r.password), &mut r.hashed_password))
            }
            AuthOp::UserChangePassword(r) => {
                Some((std::mem::take(&mut r.password), &mut r.hashed_password))
            }
            _ => None,
        };
        if let Some((clear, hashed)) = password {
            if hashed.is_empty() {
                let server = self.clone();
                *hashed = blocking(move || server.shared().auth.hash_password(&clear)).await?;
            }
        }
        self.propose_auth(caller, op).await?;
        Ok(self.header(self.revision()))
    }

    async fn propose_auth(&self, caller: &Caller, op: AuthOp) -> Result<Applied> {
        self.refuse_learner()?;
        match self
            .propose(caller, Op::Auth(AuthRequest { op: Some(op) }))
            .await?
        {
            ApplyResult::Auth(applied) => Ok(applied),
            other => Err(Error::Internal(format!(
                "apply returned a result of the wrong kind: {other:?}"
            ))),
        }
    }

    /// etcd's UserGet, after a linearizable barrier.
    pub async fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>> {
        self.linearize().await?;
        self.shared().auth.user_get(caller, name)
    }

    /// etcd's UserList, after a linearizable barrier.
    pub async fn user_list(&self, caller: &Caller) -> Result<Vec<String>> {
        self.linearize().await?;
        self.shared().auth.user_list(caller)
    }

    /// etcd's RoleGet, after a linearizable barrier.
    pub async fn role_get(&self, caller: &Caller, role: &str) -> Result<Vec<Permission>> {
        self.linearize().await?;
        self.shared().auth.role_get(caller, role)
    }

    /// etcd's RoleList, after a linearizable barrier.
    pub async fn role_list(&self, caller: &Caller) -> Result<Vec<String>> {
        self.linearize().await?;
        self.shared().auth.role_list(caller)
    }
}
