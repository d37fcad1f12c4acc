//! The auth store's rules, applied as the apply step applies them, over a real backend.

use super::*;
use crate::lease::SystemClock;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
    AuthenticateRequest,
};

fn store(dir: &std::path::Path) -> (Arc<Backend>, AuthStore) {
    let backend = Arc::new(Backend::open(&dir.join("db")).expect("backend"));
    let tokens = Tokens::new(
        &TokenConfig::Simple,
        token::DEFAULT_TOKEN_TTL,
        Arc::new(SystemClock),
    )
    .expect("tokens");
    let auth = AuthStore::load(&backend, tokens, 4).expect("load");
    (backend, auth)
}

fn apply(auth: &AuthStore, backend: &Backend, caller: &Caller, op: AuthOp) -> Result<Applied> {
    let mut batch = WriteBatch::new();
    let r = auth.apply(caller, &op, &mut batch);
    backend.write(batch);
    r
}

fn user_add(name: &str, password: &str) -> AuthOp {
    AuthOp::UserAdd(AuthUserAddRequest {
        name: name.into(),
        hashed_password: password::hash(password, 4).expect("hash"),
        ..Default::default()
    })
}

fn grant(user: &str, role: &str) -> AuthOp {
    AuthOp::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn perm(role: &str, t: PermType, key: &str, end: &str) -> AuthOp {
    AuthOp::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: t as i32,
            key: key.into(),
            range_end: end.into(),
        }),
    })
}

fn role_add(name: &str) -> AuthOp {
    AuthOp::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn as_user(name: &str, auth: &AuthStore) -> Caller {
    Caller::Client(Some(AuthInfo {
        name: name.into(),
        revision: auth.revision(),
    }))
}

#[test]
fn enable_needs_root_with_the_root_role() {
    let dir = tempfile::tempdir().expect("dir");
    let (b, auth) = store(dir.path());
    let s = Caller::ANONYMOUS;
    let enable = || AuthOp::Enable(AuthEnableRequest {});
    assert!(matches!(
        apply(&auth, &b, &s, enable()),
        Err(Error::RootUserNotExist)
    ));
    apply(&auth, &b, &s, user_add(ROOT, "pw")).expect("root");
    assert!(matches!(
        apply(&auth, &b, &s, enable()),
        Err(Error::RootRoleNotExist)
    ));
    apply(&auth, &b, &s, role_add(ROOT)).expect("role");
    apply(&auth, &b, &s, grant(ROOT, ROOT)).expect("grant");
    apply(&auth, &b, &s, enable()).expect("enable");
    assert!(auth.is_enabled());
    // With auth on, the root user and role are locked in place.
    let root = as_user(ROOT, &auth);
    assert!(matches!(
        apply(
            &auth,
            &b,
            &root,
            AuthOp::UserDelete(AuthUserDeleteRequest { name: ROOT.into() })
        ),
        Err(Error::InvalidAuthMgmt)
    ));
    assert!(matches!(
        apply(
            &auth,
            &b,
            &root,
            AuthOp::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: ROOT.into(),
                role: ROOT.into()
            })
        ),
        Err(Error::InvalidAuthMgmt)
    ));
    assert!(matches!(
        apply(
            &auth,
            &b,
            &root,
            AuthOp::RoleDelete(AuthRoleDeleteRequest { role: ROOT.into() })
        ),
        Err(Error::InvalidAuthMgmt)
    ));
    // Changes need the root role; an anonymous client has no user at all.
    assert!(matches!(
        apply(&auth, &b, &Caller::ANONYMOUS, role_add("r")),
        Err(Error::UserEmpty)
    ));
}

#[test]
fn permissions_follow_roles_and_stale_revisions_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (b, auth) = store(dir.path());
    let s = Caller::Server;
    for op in [
        user_add(ROOT, "pw"),
        role_add(ROOT),
        grant(ROOT, ROOT),
        user_add("alice", "apw"),
        role_add("r1"),
        perm("r1", PermType::Read, "a", ""),
        perm("r1", PermType::Readwrite, "b", "c"),
        grant("alice", "r1"),
        AuthOp::Enable(AuthEnableRequest {}),
    ] {
        apply(&auth, &b, &s, op).expect("setup");
    }
    let alice = as_user("alice", &auth);
    assert!(auth.check_read(&alice, b"a", b"").is_ok());
    assert!(matches!(
        auth.check_read(&alice, b"", b"\0"),
        Err(Error::PermissionDenied)
    ));
    let put = |key: &str, prev_kv: bool| PutRequest {
        key: key.into(),
        prev_kv,
        ..Default::default()
    };
    let no_leases = |_: i64| Vec::new();
    assert!(auth
        .check_put(&alice, &put("b/1", true), &no_leases)
        .is_ok());
    assert!(matches!(
        auth.check_put(&alice, &put("a", false), &no_leases),
        Err(Error::PermissionDenied)
    ));
    // A lease whose keys alice may not write cannot take her key either.
    let mut leased = put("b/2", false);
    leased.lease = 7;
    assert!(matches!(
        auth.check_put(&alice, &leased, &|_| vec![b"zz".to_vec()]),
        Err(Error::PermissionDenied)
    ));
    // A txn is checked in every compare and both branches.
    let txn = TxnRequest {
        failure: vec![crate::proto::etcdserverpb::RequestOp {
            request: Some(request_op::Request::RequestPut(put("zz", false))),
        }],
        ..Default::default()
    };
    assert!(matches!(
        auth.check_txn(&alice, &txn, &no_leases),
        Err(Error::PermissionDenied)
    ));
    // An auth change after alice's identity was read: her request is from an older revision.
    apply(&auth, &b, &s, role_add("r2")).expect("change");
    assert!(matches!(
        auth.check_put(&alice, &put("b/1", false), &no_leases),
        Err(Error::AuthOldRevision)
    ));
    // Revoking her role takes the permission away.
    apply(
        &auth,
        &b,
        &as_user(ROOT, &auth),
        AuthOp::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "r1".into(),
        }),
    )
    .expect("revoke");
    assert!(matches!(
        auth.check_read(&as_user("alice", &auth), b"a", b""),
        Err(Error::PermissionDenied)
    ));
    // Non-root users may not change auth state.
    assert!(matches!(
        apply(&auth, &b, &as_user("alice", &auth), role_add("x")),
        Err(Error::PermissionDenied)
    ));
}

#[test]
fn state_survives_a_reload_and_tokens_do_not() {
    let dir = tempfile::tempdir().expect("dir");
    let (b, auth) = store(dir.path());
    let s = Caller::Server;
    for op in [
        user_add(ROOT, "pw"),
        role_add(ROOT),
        grant(ROOT, ROOT),
        AuthOp::Enable(AuthEnableRequest {}),
    ] {
        apply(&auth, &b, &s, op).expect("setup");
    }
    let Issued::Propose(token) = auth.authenticate(ROOT, "pw", 1).expect("password") else {
        panic!("simple tokens are proposed");
    };
    assert!(matches!(
        auth.caller(Some(&token)),
        Err(Error::InvalidAuthToken)
    ));
    let applied = apply(
        &auth,
        &b,
        &s,
        AuthOp::Authenticate(AuthenticateRequest {
            name: ROOT.into(),
            password: token.clone(),
        }),
    )
    .expect("authenticate");
    assert_eq!(applied, Applied::Token(token.clone()));
    assert_eq!(
        auth.caller(Some(&token)).expect("valid"),
        as_user(ROOT, &auth)
    );
    assert!(matches!(
        auth.authenticate(ROOT, "wrong", 1),
        Err(Error::AuthFailed)
    ));
    assert!(matches!(
        auth.authenticate("nobody", "pw", 1),
        Err(Error::AuthFailed)
    ));
    b.commit().expect("commit");
    let revision = auth.revision();
    auth.reload(&b).expect("reload");
    assert!(auth.is_enabled());
    assert_eq!(auth.revision(), revision);
    assert_eq!(
        auth.user_list(&as_user(ROOT, &auth)).expect("list"),
        vec![ROOT]
    );
    assert!(matches!(
        auth.caller(Some(&token)),
        Err(Error::InvalidAuthToken)
    ));
    // Disabling forgets every token and stops every check.
    apply(
        &auth,
        &b,
        &as_user(ROOT, &auth),
        AuthOp::Disable(AuthDisableRequest {}),
    )
    .expect("disable");
    assert_eq!(
        auth.caller(Some("anything")).expect("off"),
        Caller::ANONYMOUS
    );
}
