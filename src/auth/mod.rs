//! Authentication and roles, as etcd's v3 auth has them.
//!
//! **State.** Users (name, bcrypt hash, roles), roles (key permissions), whether auth is enabled and
//! the auth revision, which every change raises. Changes are Raft entries (`Op::Auth`), so every
//! member applies the same ones in the same order ([`AuthStore::apply`]); the result is persisted in
//! the backend's `auth` table in the entry's batch (keys `enabled`, `revision`, `user/<name>`,
//! `role/<name>`, values as etcd's `authpb` messages) and held in memory as one immutable snapshot
//! behind a lock, replaced whole on each change, with every user's merged permissions computed then
//! ([`perms`]), so a check on the request path is a read lock and a binary search.
//!
//! **Who asks.** A request carries a token (gRPC metadata `token`; the gateway's `Authorization`
//! header; HTTP Basic or a bearer token on the REST API). [`AuthStore::caller`] turns it into a
//! [`Caller`]: the user and the auth revision its permissions are valid at. With auth disabled no
//! token is looked at and nothing is checked, as in etcd.
//!
//! **Where checks happen**, as etcd does them: reads (Range, a read-only Txn, Watch at creation,
//! LeaseTimeToLive's key list) against the state when they are served; writes (Put, DeleteRange, a
//! Txn with writes, LeaseRevoke) when their entry is applied, against the state of that index, with
//! the user and revision carried in the entry. An entry whose revision is older than the state it is
//! applied to is refused with "revision of auth store is old", so a permission revoked while a
//! write was in flight is never bypassed; clients authenticate again and retry. Compaction, lease
//! grants and keep-alives, alarms, status and member list are not checked (etcd 3.4 checks none of
//! them); auth and membership changes and the maintenance calls that read the whole store need the
//! `root` role.
//!
//! **Client certificates.** With `--client-cert-auth`, a connection whose TLS client certificate was
//! verified carries the certificate's Common Name ([`ClientCertName`]); a request on it that sends
//! no token acts as that user ([`AuthStore::caller_or_cert`]), as etcd's `AuthInfoFromTLS` does. A
//! token, when sent, wins. No password is checked (the CA vouched for the name); a name that is no
//! user is refused by the permission check that looks it up. etcd's JSON gateway ignores the
//! certificate (it would be the gateway's own); ours does too.
//!
//! Left out: etcd's `--auth-token` `jwt` options beyond `pub-key`, `priv-key`, `sign-method`, `ttl`.

pub mod password;
pub mod perms;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prost::Message;

pub use token::{AuthInfo, TokenConfig, Tokens};

use crate::error::{Error, Result};
use crate::mvcc::{Backend, Table, WriteBatch};
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::{
    request_op, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use perms::UserPerms;

/// The name of the administrator user and role.
pub const ROOT: &str = "root";

/// `auth` table keys.
const KEY_ENABLED: &[u8] = b"enabled";
const KEY_REVISION: &[u8] = b"revision";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server itself (lease expiry, its own services): never checked.
    Server,
    /// A client: its verified identity, or `None` when it sent no token (or auth is disabled).
    Client(Option<AuthInfo>),
}

impl Caller {
    /// A client without credentials.
    pub const ANONYMOUS: Caller = Caller::Client(None);
}

/// The Common Name of a connection's verified TLS client certificate, carried in each of its
/// requests' extensions (only with `--client-cert-auth`): the user a request without a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertName(pub String);

/// One consistent view of the auth state.
#[derive(Debug, Default, Clone)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Every user's merged permissions, computed from `users` and `roles`.
    perms: HashMap<String, Arc<UserPerms>>,
}

impl State {
    fn compute_perms(&mut self) {
        self.perms = self
            .users
            .iter()
            .map(|(name, user)| {
                let roles = user.roles.iter().filter_map(|r| self.roles.get(r));
                let root = user.roles.iter().any(|r| r == ROOT);
                (name.clone(), Arc::new(UserPerms::of(roles, root)))
            })
            .collect();
    }
}

/// The auth store of one member.
pub struct AuthStore {
    state: RwLock<Arc<State>>,
    /// `state.enabled`, readable without the lock on every request.
    enabled: AtomicBool,
    tokens: Tokens,
    verifier: password::Verifier,
    bcrypt_cost: u32,
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

fn name_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The result of applying one auth entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A change (or a no-op that etcd answers with success).
    Done,
    /// An Authenticate: the token it made valid.
    Token(String),
}

/// One auth change, as it travels through the log.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthOp {
    #[prost(message, tag = "1")]
    Enable(crate::proto::etcdserverpb::AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(crate::proto::etcdserverpb::AuthDisableRequest),
    /// `name` and the simple token to make valid for it (in `password`; never a password).
    #[prost(message, tag = "3")]
    Authenticate(crate::proto::etcdserverpb::AuthenticateRequest),
    /// With `hashedPassword` set and `password` empty.
    #[prost(message, tag = "4")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "5")]
    UserDelete(crate::proto::etcdserverpb::AuthUserDeleteRequest),
    /// With `hashedPassword` set and `password` empty.
    #[prost(message, tag = "6")]
    UserChangePassword(crate::proto::etcdserverpb::AuthUserChangePasswordRequest),
    #[prost(message, tag = "7")]
    UserGrantRole(crate::proto::etcdserverpb::AuthUserGrantRoleRequest),
    #[prost(message, tag = "8")]
    UserRevokeRole(crate::proto::etcdserverpb::AuthUserRevokeRoleRequest),
    #[prost(message, tag = "9")]
    RoleAdd(crate::proto::etcdserverpb::AuthRoleAddRequest),
    #[prost(message, tag = "10")]
    RoleDelete(crate::proto::etcdserverpb::AuthRoleDeleteRequest),
    #[prost(message, tag = "11")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "12")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// An auth change in a Raft entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRequest {
    #[prost(oneof = "AuthOp", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub op: Option<AuthOp>,
}

/// The requester of a Raft entry, when auth was enabled as it was proposed (etcd's
/// `RequestHeader.username` and `auth_revision`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthHeader {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(uint64, tag = "2")]
    pub auth_revision: u64,
}

impl AuthStore {
    /// Loads the auth state persisted in `backend`.
    pub fn load(backend: &Backend, tokens: Tokens, bcrypt_cost: u32) -> Result<AuthStore> {
        let state = load_state(backend)?;
        Ok(AuthStore {
            enabled: AtomicBool::new(state.enabled),
            state: RwLock::new(Arc::new(state)),
            tokens,
            verifier: password::Verifier::new(),
            bcrypt_cost,
        })
    }

    /// Loads the state of `backend` again (after a snapshot replaced it); tokens are dropped.
    pub fn reload(&self, backend: &Backend) -> Result<()> {
        let state = load_state(backend)?;
        self.install(state);
        if let Tokens::Simple(t) = &self.tokens {
            t.clear();
        }
        Ok(())
    }

    fn state(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn install(&self, state: State) {
        self.enabled.store(state.enabled, Ordering::Release);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }

    /// Whether auth is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The auth revision.
    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    /// The caller a request with `token` is (with auth disabled, an anonymous client whatever it
    /// sent). An unknown, lapsed or forged token is `InvalidAuthToken`.
    pub fn caller(&self, token: Option<&str>) -> Result<Caller> {
        if !self.is_enabled() {
            return Ok(Caller::ANONYMOUS);
        }
        let Some(token) = token else {
            return Ok(Caller::ANONYMOUS);
        };
        let info = match &self.tokens {
            Tokens::Simple(t) => t.user(token).map(|name| AuthInfo {
                name,
                revision: self.revision(),
            }),
            Tokens::Jwt(j) => j.verify(token),
        };
        info.map(|i| Caller::Client(Some(i)))
            .ok_or(Error::InvalidAuthToken)
    }

    /// [`AuthStore::caller`], except that without a token the Common Name of the connection's
    /// verified client certificate, if any, names the user (etcd's `AuthInfoFromTLS`).
    pub fn caller_or_cert(
        &self,
        token: Option<&str>,
        cert: Option<&ClientCertName>,
    ) -> Result<Caller> {
        match (token, cert) {
            (None, Some(ClientCertName(name))) if self.is_enabled() => {
                Ok(Caller::Client(Some(AuthInfo {
                    name: name.clone(),
                    revision: self.revision(),
                })))
            }
            _ => self.caller(token),
        }
    }

    /// The caller HTTP Basic credentials make: the password is checked (bcrypt, or the cache of
    /// earlier successes). Blocks; call it off the async threads.
    pub fn caller_with_password(&self, name: &str, password: &str) -> Result<Caller> {
        let state = self.state();
        self.check_password(&state, name, password)?;
        Ok(Caller::Client(Some(AuthInfo {
            name: name.to_string(),
            revision: state.revision,
        })))
    }

    fn check_password(&self, state: &State, name: &str, password: &str) -> Result<()> {
        let user = state.users.get(name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::AuthUnmapped(
                "auth: authentication failed, password was given for no password user",
            ));
        }
        if self.verifier.check(&user.password, password) {
            Ok(())
        } else {
            Err(Error::AuthFailed)
        }
    }

    /// The first half of `Authenticate`, on the member the client asked: auth must be enabled and
    /// the password right (blocks for bcrypt; call it off the async threads). Returns what to do
    /// next: a simple token to propose, or a signed token to answer with at once.
    pub fn authenticate(&self, name: &str, password: &str, member_id: u64) -> Result<Issued> {
        let state = self.state();
        if !state.enabled {
            return Err(Error::AuthNotEnabled);
        }
        self.check_password(&state, name, password)?;
        match &self.tokens {
            Tokens::Simple(t) => Ok(Issued::Propose(t.generate(member_id))),
            Tokens::Jwt(j) => Ok(Issued::Signed(j.issue(name, state.revision)?)),
        }
    }

    /// `password` hashed for storing (`--bcrypt-cost`). Blocks for bcrypt.
    pub fn hash_password(&self, password: &str) -> Result<String> {
        password::hash(password, self.bcrypt_cost)
    }

    /// The permissions of `caller`, or the error etcd answers when it has none to check: `None` when
    /// nothing is to be checked (auth disabled, or the server itself).
    fn perms_of(&self, state: &State, caller: &Caller) -> Result<Option<Arc<UserPerms>>> {
        if !state.enabled {
            return Ok(None);
        }
        match caller {
            Caller::Server => Ok(None),
            Caller::Client(None) => Err(Error::UserEmpty),
            Caller::Client(Some(info)) if info.name.is_empty() => Err(Error::UserEmpty),
            Caller::Client(Some(info)) => {
                if info.revision < state.revision {
                    return Err(Error::AuthOldRevision);
                }
                state
                    .perms
                    .get(&info.name)
                    .cloned()
                    .map(Some)
                    .ok_or(Error::UserNotFound)
            }
        }
    }

    /// Whether `caller` may read `[key, range_end)`.
    pub fn check_read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let state = self.state();
        match self.key_perms_of(&state, caller)? {
            Some(p) if !p.can_read(key, range_end) => Err(Error::PermissionDenied),
            _ => Ok(()),
        }
    }

    /// Whether `caller` may write `[key, range_end)`.
    pub fn check_write(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let state = self.state();
        match self.key_perms_of(&state, caller)? {
            Some(p) if !p.can_write(key, range_end) => Err(Error::PermissionDenied),
            _ => Ok(()),
        }
    }

    /// Whether `caller` may run `req` (a Range).
    pub fn check_range(&self, caller: &Caller, req: &RangeRequest) -> Result<()> {
        self.check_read(caller, &req.key, &req.range_end)
    }

    /// Whether `caller` may read every one of `keys` (LeaseTimeToLive's key list).
    pub fn check_read_keys(&self, caller: &Caller, keys: &[Vec<u8>]) -> Result<()> {
        keys.iter()
            .try_for_each(|k| self.check_read(caller, k, &[]))
    }

    /// Whether `caller` has the `root` role (always, with auth disabled).
    pub fn check_admin(&self, caller: &Caller) -> Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let state = self.state();
        match self.perms_of(&state, caller)? {
            Some(p) if !p.is_root() => Err(Error::PermissionDenied),
            _ => Ok(()),
        }
    }

    /// [`AuthStore::check_admin`] with the texts the maintenance calls answer (etcd passes its auth
    /// package's errors through there unmapped, with code Unknown).
    pub fn check_admin_maintenance(&self, caller: &Caller) -> Result<()> {
        self.check_admin(caller).map_err(|e| match e {
            Error::PermissionDenied => Error::AuthUnmapped("auth: permission denied"),
            Error::UserEmpty => Error::AuthUnmapped("auth: user name is empty"),
            Error::AuthOldRevision => Error::AuthUnmapped("auth: revision in header is old"),
            other => other,
        })
    }

    /// The identity to put in a proposal's entry: `None` when auth is disabled or the server itself
    /// proposes (nothing is checked at apply).
    pub fn header_for(&self, caller: &Caller) -> Option<AuthHeader> {
        if !self.is_enabled() {
            return None;
        }
        match caller {
            Caller::Server => None,
            Caller::Client(None) => Some(AuthHeader::default()),
            Caller::Client(Some(info)) => Some(AuthHeader {
                username: info.name.clone(),
                auth_revision: info.revision,
            }),
        }
    }

    /// The caller an entry's header names, as the apply step checks it.
    pub fn caller_of(header: Option<&AuthHeader>) -> Caller {
        match header {
            None => Caller::Server,
            Some(h) if h.username.is_empty() => Caller::ANONYMOUS,
            Some(h) => Caller::Client(Some(AuthInfo {
                name: h.username.clone(),
                revision: h.auth_revision,
            })),
        }
    }

    /// Whether `caller` may apply `req`; `lease_keys` lists the keys attached to a lease.
    pub fn check_put(
        &self,
        caller: &Caller,
        req: &PutRequest,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<()> {
        let Some(p) = self.perms_checked(caller)? else {
            return Ok(());
        };
        put_allowed(&p, req, lease_keys)
    }

    /// Whether `caller` may apply `req`.
    pub fn check_delete(&self, caller: &Caller, req: &DeleteRangeRequest) -> Result<()> {
        let Some(p) = self.perms_checked(caller)? else {
            return Ok(());
        };
        delete_allowed(&p, req)
    }

    /// Whether `caller` may run `req`: every compare reads its key, every operation of both
    /// branches (and of nested transactions) is checked as if sent alone.
    pub fn check_txn(
        &self,
        caller: &Caller,
        req: &TxnRequest,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<()> {
        let Some(p) = self.perms_checked(caller)? else {
            return Ok(());
        };
        txn_allowed(&p, req, lease_keys)
    }

    /// Whether `caller` may revoke a lease with `keys` attached (it must be able to write each).
    pub fn check_lease_revoke(&self, caller: &Caller, keys: &[Vec<u8>]) -> Result<()> {
        let Some(p) = self.perms_checked(caller)? else {
            return Ok(());
        };
        deny_unless(keys.iter().all(|k| p.can_write(k, &[])))
    }

    fn perms_checked(&self, caller: &Caller) -> Result<Option<Arc<UserPerms>>> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let state = self.state();
        self.key_perms_of(&state, caller)
    }

    /// [`AuthStore::perms_of`] for a check on keys: a user that does not exist is refused with
    /// "permission denied", as etcd's `isOpPermitted` does (only admin checks say "user name not
    /// found"). A client certificate whose Common Name is no user lands here.
    fn key_perms_of(&self, state: &State, caller: &Caller) -> Result<Option<Arc<UserPerms>>> {
        match self.perms_of(state, caller) {
            Err(Error::UserNotFound) => Err(Error::PermissionDenied),
            other => other,
        }
    }

    /// Applies one auth change committed at this point of the log, as `caller`; its writes go to
    /// `batch`. Errors are etcd's and deterministic: every member answers the same.
    pub fn apply(&self, caller: &Caller, op: &AuthOp, batch: &mut WriteBatch) -> Result<Applied> {
        let current = self.state();
        if !matches!(op, AuthOp::Authenticate(_)) {
            // Every change needs the root role once auth is on.
            if let Some(p) = self.perms_of(&current, caller)? {
                deny_unless(p.is_root())?;
            }
        }
        let mut s = State::clone(&current);
        let mut invalidate: Option<String> = None;
        match op {
            AuthOp::Authenticate(req) => {
                if !s.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                if !s.users.contains_key(&req.name) {
                    return Err(Error::AuthFailed);
                }
                if let Tokens::Simple(t) = &self.tokens {
                    t.assign(&req.password, &req.name);
                }
                return Ok(Applied::Token(req.password.clone()));
            }
            AuthOp::Enable(_) => {
                if s.enabled {
                    return Ok(Applied::Done);
                }
                let root = s.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                s.enabled = true;
                batch.put(Table::Auth, KEY_ENABLED.to_vec(), vec![1]);
                tracing::warn!("authentication enabled");
            }
            AuthOp::Disable(_) => {
                if !s.enabled {
                    return Ok(Applied::Done);
                }
                s.enabled = false;
                batch.put(Table::Auth, KEY_ENABLED.to_vec(), vec![0]);
                if let Tokens::Simple(t) = &self.tokens {
                    t.clear();
                }
                tracing::warn!("authentication disabled");
            }
            AuthOp::UserAdd(req) => {
                if req.name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if s.users.contains_key(&req.name) {
                    return Err(Error::UserAlreadyExist);
                }
                let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: req.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        req.hashed_password.clone().into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                batch.put(Table::Auth, user_key(&req.name), user.encode_to_vec());
                s.users.insert(req.name.clone(), user);
            }
            AuthOp::UserDelete(req) => {
                if s.enabled && req.name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                s.users.remove(&req.name).ok_or(Error::UserNotFound)?;
                batch.delete(Table::Auth, user_key(&req.name));
                invalidate = Some(req.name.clone());
            }
            AuthOp::UserChangePassword(req) => {
                let user = s.users.get_mut(&req.name).ok_or(Error::UserNotFound)?;
                user.password = req.hashed_password.clone().into_bytes();
                batch.put(Table::Auth, user_key(&req.name), user.encode_to_vec());
                invalidate = Some(req.name.clone());
            }
            AuthOp::UserGrantRole(req) => {
                if req.role != ROOT && !s.roles.contains_key(&req.role) {
                    // Checked first only when the user exists, as etcd does.
                    if s.users.contains_key(&req.user) {
                        return Err(Error::RoleNotFound);
                    }
                }
                let user = s.users.get_mut(&req.user).ok_or(Error::UserNotFound)?;
                if let Err(i) = user.roles.binary_search(&req.role) {
                    user.roles.insert(i, req.role.clone());
                }
                batch.put(Table::Auth, user_key(&req.user), user.encode_to_vec());
            }
            AuthOp::UserRevokeRole(req) => {
                if s.enabled && req.name == ROOT && req.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let user = s.users.get_mut(&req.name).ok_or(Error::UserNotFound)?;
                let i = user
                    .roles
                    .iter()
                    .position(|r| *r == req.role)
                    .ok_or(Error::RoleNotGranted)?;
                user.roles.remove(i);
                batch.put(Table::Auth, user_key(&req.name), user.encode_to_vec());
            }
            AuthOp::RoleAdd(req) => {
                if req.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if s.roles.contains_key(&req.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                let role = Role {
                    name: req.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                batch.put(Table::Auth, role_key(&req.name), role.encode_to_vec());
                s.roles.insert(req.name.clone(), role);
            }
            AuthOp::RoleDelete(req) => {
                if s.enabled && req.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                s.roles.remove(&req.role).ok_or(Error::RoleNotFound)?;
                batch.delete(Table::Auth, role_key(&req.role));
                for (name, user) in s.users.iter_mut() {
                    if let Some(i) = user.roles.iter().position(|r| *r == req.role) {
                        user.roles.remove(i);
                        batch.put(Table::Auth, user_key(name), user.encode_to_vec());
                    }
                }
            }
            AuthOp::RoleGrantPermission(req) => {
                let role = s.roles.get_mut(&req.name).ok_or(Error::RoleNotFound)?;
                let perm = req.perm.clone().unwrap_or_default();
                let perms = &mut role.key_permission;
                let at = perms.partition_point(|p| {
                    (p.key.as_slice(), p.range_end.as_slice())
                        < (perm.key.as_slice(), perm.range_end.as_slice())
                });
                match perms.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => perms.insert(at, perm),
                }
                batch.put(Table::Auth, role_key(&req.name), role.encode_to_vec());
            }
            AuthOp::RoleRevokePermission(req) => {
                let role = s.roles.get_mut(&req.role).ok_or(Error::RoleNotFound)?;
                let i = role
                    .key_permission
                    .iter()
                    .position(|p: &Permission| p.key == req.key && p.range_end == req.range_end)
                    .ok_or(Error::PermissionNotGranted)?;
                role.key_permission.remove(i);
                batch.put(Table::Auth, role_key(&req.role), role.encode_to_vec());
            }
        }
        s.revision += 1;
        batch.put(
            Table::Auth,
            KEY_REVISION.to_vec(),
            s.revision.to_be_bytes().to_vec(),
        );
        s.compute_perms();
        self.install(s);
        if let (Some(user), Tokens::Simple(t)) = (invalidate, &self.tokens) {
            t.invalidate_user(&user);
        }
        Ok(Applied::Done)
    }

    /// `UserGet`: the user's roles. Allowed to the root role and to the user itself.
    pub fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>> {
        let state = self.state();
        self.admin_or(&state, caller, |info| info.name == name)?;
        state
            .users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(Error::UserNotFound)
    }

    /// `UserList`: every user name, sorted. Root only.
    pub fn user_list(&self, caller: &Caller) -> Result<Vec<String>> {
        let state = self.state();
        self.admin_or(&state, caller, |_| false)?;
        Ok(state.users.keys().cloned().collect())
    }

    /// `RoleGet`: the role's permissions. Allowed to the root role and to users who have the role.
    pub fn role_get(&self, caller: &Caller, role: &str) -> Result<Vec<Permission>> {
        let state = self.state();
        self.admin_or(&state, caller, |info| {
            state
                .users
                .get(&info.name)
                .is_some_and(|u| u.roles.iter().any(|r| r == role))
        })?;
        if role == ROOT && !state.roles.contains_key(ROOT) {
            return Err(Error::RoleNotFound);
        }
        state
            .roles
            .get(role)
            .map(|r| r.key_permission.clone())
            .ok_or(Error::RoleNotFound)
    }

    /// `RoleList`: every role name, sorted. Root only.
    pub fn role_list(&self, caller: &Caller) -> Result<Vec<String>> {
        let state = self.state();
        self.admin_or(&state, caller, |_| false)?;
        Ok(state.roles.keys().cloned().collect())
    }

    fn admin_or(
        &self,
        state: &State,
        caller: &Caller,
        allowed: impl FnOnce(&AuthInfo) -> bool,
    ) -> Result<()> {
        let Some(p) = self.perms_of(state, caller)? else {
            return Ok(());
        };
        if p.is_root() {
            return Ok(());
        }
        match caller {
            Caller::Client(Some(info)) if allowed(info) => Ok(()),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// Every user and role as stored (`authpb` messages), for snapshot files.
    pub fn export(&self) -> (bool, u64, Vec<User>, Vec<Role>) {
        let s = self.state();
        (
            s.enabled,
            s.revision,
            s.users.values().cloned().collect(),
            s.roles.values().cloned().collect(),
        )
    }
}

/// What `Authenticate` does after the password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// Propose this simple token through Raft; it is valid once applied.
    Propose(String),
    /// Answer with this signed token.
    Signed(String),
}

fn deny_unless(allowed: bool) -> Result<()> {
    if allowed {
        Ok(())
    } else {
        Err(Error::PermissionDenied)
    }
}

fn put_allowed(
    p: &UserPerms,
    req: &PutRequest,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<()> {
    deny_unless(p.can_write(&req.key, &[]))?;
    if req.prev_kv {
        deny_unless(p.can_read(&req.key, &[]))?;
    }
    if req.lease != 0 {
        // Attaching to a lease needs write access to every key already on it (etcd's
        // `checkLeasePuts`): revoking the lease deletes them all.
        deny_unless(lease_keys(req.lease).iter().all(|k| p.can_write(k, &[])))?;
    }
    Ok(())
}

fn delete_allowed(p: &UserPerms, req: &DeleteRangeRequest) -> Result<()> {
    deny_unless(p.can_write(&req.key, &req.range_end))?;
    if req.prev_kv {
        deny_unless(p.can_read(&req.key, &req.range_end))?;
    }
    Ok(())
}

fn txn_allowed(
    p: &UserPerms,
    req: &TxnRequest,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<()> {
    for c in &req.compare {
        deny_unless(p.can_read(&c.key, &c.range_end))?;
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                deny_unless(p.can_read(&r.key, &r.range_end))?
            }
            Some(request_op::Request::RequestPut(r)) => put_allowed(p, r, lease_keys)?,
            Some(request_op::Request::RequestDeleteRange(r)) => delete_allowed(p, r)?,
            Some(request_op::Request::RequestTxn(t)) => txn_allowed(p, t, lease_keys)?,
            None => {}
        }
    }
    Ok(())
}

fn load_state(backend: &Backend) -> Result<State> {
    let mut s = State::default();
    backend.scan(Table::Auth, b"", None, |k, v| {
        if k == KEY_ENABLED {
            s.enabled = v.first() == Some(&1);
        } else if k == KEY_REVISION {
            let bytes: [u8; 8] = v
                .try_into()
                .map_err(|_| Error::Corrupt("auth revision is not 8 bytes".into()))?;
            s.revision = u64::from_be_bytes(bytes);
        } else if let Some(name) = k.strip_prefix(USER_PREFIX) {
            s.users.insert(name_of(name), User::decode(v)?);
        } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
            s.roles.insert(name_of(name), Role::decode(v)?);
        }
        Ok(true)
    })?;
    s.compute_perms();
    if s.enabled {
        tracing::info!(
            users = s.users.len(),
            roles = s.roles.len(),
            "authentication is enabled"
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
