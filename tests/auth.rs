//! Authentication and roles end to end: etcdctl 3.4, the `etcd-client` crate, raw gRPC with tokens,
//! the JSON gateway and the seed's REST API, against real mini-etcd processes.
//!
//! Expected texts and outcomes are what etcd 3.4.23 answers to the same commands (observed side by
//! side with Debian's etcd-server; `COMPAT_REFERENCE_ETCD=/usr/bin/etcd` runs the etcdctl scenario
//! against etcd again). etcdctl must be installed: a missing etcdctl fails loudly. Every process run
//! and every wait is bounded.

mod common;
#[path = "common/etcdctl_auth.rs"]
mod etcdctl_auth;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::Server;
use etcd_client::{Client, ConnectOptions};
use etcdctl_auth::{ctl, set_up};
use mini_etcd::proto::etcdserverpb::auth_client::AuthClient;
use mini_etcd::proto::etcdserverpb::kv_client::KvClient;
use mini_etcd::proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;

#[tokio::test]
async fn etcdctl_users_roles_and_permissions_as_on_etcd() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4"]).await;
    let ep = server.client_endpoint();
    let ep = ep.as_str();

    etcdctl_auth::users_roles_and_permissions(ep).await;
}

/// A gRPC client that sends `token` with every call, as etcd clients do.
async fn kv_with_token(
    endpoint: &str,
    token: &str,
) -> KvClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let value: MetadataValue<_> = token.parse().expect("ascii token");
    KvClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("token", value.clone());
        Ok(req)
    })
}

async fn token(endpoint: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    AuthClient::new(channel)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

#[tokio::test]
async fn simple_tokens_expire_and_forged_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4", "--auth-token-ttl", "1"]).await;
    let ep = server.client_endpoint();
    set_up(&ep).await;

    let t = token(&ep, "alice", "apw").await.expect("authenticate");
    let mut kv = kv_with_token(&ep, &t).await;
    let read = RangeRequest {
        key: b"b/x".to_vec(),
        ..Default::default()
    };
    kv.range(read.clone()).await.expect("a fresh token reads");
    let e = kv
        .put(PutRequest {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("alice may not write a");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "etcdserver: permission denied");

    // Idle for longer than --auth-token-ttl: the token is forgotten.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = kv.range(read.clone()).await.expect_err("lapsed token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.message(), "etcdserver: invalid auth token");

    let mut forged = kv_with_token(&ep, "AAAAAAAAAAAAAAAA.1").await;
    let e = forged.range(read).await.expect_err("forged token");
    assert_eq!(e.message(), "etcdserver: invalid auth token");

    let e = token(&ep, "alice", "wrong")
        .await
        .expect_err("wrong password");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
}

#[tokio::test]
async fn etcd_client_crate_with_user_and_password() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4"]).await;
    let ep = server.client_endpoint();
    set_up(&ep).await;

    let opts = ConnectOptions::new().with_user("alice", "apw");
    let mut alice = Client::connect([ep.as_str()], Some(opts))
        .await
        .expect("connect as alice");
    alice.put("b/1", "v", None).await.expect("put inside b");
    let got = alice.get("b/1", None).await.expect("get b/1");
    assert_eq!(got.kvs()[0].value(), b"v");
    let e = alice.put("c", "v", None).await.expect_err("put c");
    assert!(
        e.to_string().contains("etcdserver: permission denied"),
        "{e}"
    );

    // The Lock service acts for its caller: only inside alice's keys.
    let lock = alice.lock("b/lock", None).await.expect("lock inside b");
    alice.unlock(lock.key()).await.expect("unlock");
    let e = alice.lock("zz", None).await.expect_err("lock outside");
    assert!(
        e.to_string().contains("etcdserver: permission denied"),
        "{e}"
    );

    let wrong = ConnectOptions::new().with_user("alice", "nope");
    let e = Client::connect([ep.as_str()], Some(wrong))
        .await
        .err()
        .expect("wrong password refused at connect");
    assert!(
        e.to_string()
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "{e}"
    );
}

#[tokio::test]
async fn gateway_and_rest_api_take_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4"]).await;
    let ep = server.client_endpoint();
    set_up(&ep).await;
    let http = reqwest::Client::new();
    let gw = |path: &str| format!("{}{path}", server.client_url());
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };

    // The gateway: a token from /v3/auth/authenticate in the Authorization header.
    let auth: Value = http
        .post(gw("/v3/auth/authenticate"))
        .json(&json!({"name": "alice", "password": "apw"}))
        .send()
        .await
        .expect("authenticate")
        .json()
        .await
        .expect("json");
    let token = auth["token"].as_str().expect("token").to_string();
    let put = |key: &str| json!({"key": b64(key), "value": b64("v")});
    let r = http
        .post(gw("/v3/kv/put"))
        .header("Authorization", &token)
        .json(&put("b/gw"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let r: Value = http
        .post(gw("/v3/kv/put"))
        .header("Authorization", &token)
        .json(&put("a"))
        .send()
        .await
        .expect("put a")
        .json()
        .await
        .expect("json");
    assert_eq!(r["error"], "etcdserver: permission denied");
    assert_eq!(r["code"], 7);
    let r: Value = http
        .post(gw("/v3/kv/put"))
        .json(&put("b/gw"))
        .send()
        .await
        .expect("put without token")
        .json()
        .await
        .expect("json");
    assert_eq!(r["error"], "etcdserver: user name is empty");
    let r: Value = http
        .post(gw("/v3/kv/range"))
        .header("Authorization", "bogus")
        .json(&json!({"key": b64("a")}))
        .send()
        .await
        .expect("range")
        .json()
        .await
        .expect("json");
    assert_eq!(r["error"], "etcdserver: invalid auth token");
    assert_eq!(r["code"], 16);

    // The seed's REST API: no side door.
    let rest = |p: &str| format!("{}{p}", server.base_url());
    let r = http
        .post(rest("/put"))
        .body(r#"{"key":"b/r","value":"1"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = http
        .post(rest("/put"))
        .basic_auth("alice", Some("apw"))
        .body(r#"{"key":"b/r","value":"1"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let r = http
        .post(rest("/put"))
        .basic_auth("alice", Some("apw"))
        .body(r#"{"key":"a","value":"1"}"#)
        .send()
        .await
        .expect("put a");
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "etcdserver: permission denied");
    let r = http
        .get(rest("/get?key=b/r"))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let r = http
        .get(rest("/get?key=b/r"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["value"], "1");
    let r = http
        .get(rest("/watch?key=zz&timeout=0"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("watch");
    assert_eq!(r.status(), 403);
    let r = http
        .delete(rest("/delete?key=b/r"))
        .basic_auth("alice", Some("apw"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    // Health stays open.
    let r = http.get(rest("/health")).send().await.expect("health");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn auth_state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(dir.path(), &["--bcrypt-cost", "4"]).await;
    set_up(&server.client_endpoint()).await;
    server.stop().await;
    server.restart().await;
    let ep = server.client_endpoint();
    ctl(&ep, None, &["get", "a"], None)
        .await
        .fails_with("still enabled", "Error: etcdserver: user name is empty");
    ctl(&ep, Some("alice:apw"), &["put", "b/after", "1"], None)
        .await
        .ok("alice after restart");
    ctl(&ep, Some("alice:apw"), &["put", "a", "1"], None)
        .await
        .fails_with(
            "roles after restart",
            "Error: etcdserver: permission denied",
        );
}

/// Writes an RSA key pair with openssl (installed by `scripts/test` when missing).
fn rsa_keys(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("openssl {args:?}: {e} (apt-get install openssl)"));
        assert!(st.success(), "openssl {args:?} failed");
    };
    let (k, p) = (
        key.to_str().expect("utf-8"),
        public.to_str().expect("utf-8"),
    );
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        k,
    ]);
    run(&["pkey", "-in", k, "-pubout", "-out", p]);
    (key, public)
}

#[tokio::test]
async fn jwt_tokens_signed_and_checked() {
    let dir = tempfile::tempdir().expect("dir");
    let keys = tempfile::tempdir().expect("keys");
    let (private, public) = rsa_keys(keys.path(), "ours");
    let (other_private, other_public) = rsa_keys(keys.path(), "theirs");
    let flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        private.display()
    );
    let server = Server::start(dir.path(), &["--bcrypt-cost", "4", "--auth-token", &flag]).await;
    let ep = server.client_endpoint();
    set_up(&ep).await;
    let t = token(&ep, "alice", "apw").await.expect("authenticate");
    assert_eq!(t.split('.').count(), 3, "a JWT: {t}");
    let mut kv = kv_with_token(&ep, &t).await;
    kv.range(RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    })
    .await
    .expect("the JWT reads a");
    // etcdctl authenticates with the same password and works on JWTs too.
    assert_eq!(
        ctl(&ep, Some("alice:apw"), &["put", "b/jwt", "1"], None)
            .await
            .ok("etcdctl with jwt"),
        "OK\n"
    );

    // A token signed with another key: a second member configured with it issues one.
    let other_dir = tempfile::tempdir().expect("dir");
    let other_flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256",
        other_public.display(),
        other_private.display()
    );
    let other = Server::start(
        other_dir.path(),
        &["--bcrypt-cost", "4", "--auth-token", &other_flag],
    )
    .await;
    set_up(&other.client_endpoint()).await;
    let foreign = token(&other.client_endpoint(), "alice", "apw")
        .await
        .expect("authenticate elsewhere");
    let mut kv = kv_with_token(&ep, &foreign).await;
    let e = kv
        .range(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("foreign JWT");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(e.message(), "etcdserver: invalid auth token");
}

#[tokio::test]
async fn a_cluster_agrees_on_users_and_tokens() {
    let mut cluster = common::cluster::Cluster::start(3, &["--bcrypt-cost", "4"]).await;
    cluster.wait_leader().await;
    let eps: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_endpoint())
        .collect();
    set_up(&eps[0]).await;
    // A simple token handed out by one member is known to the others: it went through Raft.
    let t = token(&eps[0], "alice", "apw").await.expect("authenticate");
    for (i, ep) in eps.iter().enumerate() {
        let mut kv = kv_with_token(ep, &t).await;
        let key = format!("b/from-{i}");
        let mut ok = None;
        // The follower may apply the Authenticate entry a moment after the leader answered.
        for _ in 0..100 {
            match kv
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => {
                    ok = Some(r);
                    break;
                }
                Err(e) if e.message() == "etcdserver: invalid auth token" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("member {i}: {e:?}"),
            }
        }
        ok.unwrap_or_else(|| panic!("member {i} never learned the token"));
        let e = kv
            .put(PutRequest {
                key: b"a".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("a is read-only for alice on every member");
        assert_eq!(e.message(), "etcdserver: permission denied", "member {i}");
    }
    // etcdctl against another member sees the same users.
    assert_eq!(
        ctl(&eps[2], Some("root:rootpw"), &["user", "list"], None)
            .await
            .ok("user list on member 2"),
        "alice\nroot\n"
    );
}
