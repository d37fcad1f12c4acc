//! The gateway over a real listener, in front of small fake services: each fake answers a few
//! methods in a fixed way and every other method with Unimplemented.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::router;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::*;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// A boxed response stream, the fakes' associated stream type.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// All eight services; the interesting methods are written out, the rest are Unimplemented.
#[derive(Default)]
struct Fake {
    /// Notified when a watch's response stream has been dropped (the HTTP client went away).
    watch_dropped: Arc<tokio::sync::Notify>,
}

/// `impl $trait for Fake` with `$extra` items written out and the listed unary methods
/// Unimplemented. (A macro around the whole impl, so that `async_trait` sees the expanded methods.)
macro_rules! fake {
    ($trait:ident { $($extra:tt)* } $($method:ident: $req:ident => $resp:ident),* $(,)?) => {
        #[tonic::async_trait]
        impl $trait for Fake {
            $($extra)*
            $(
                async fn $method(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($method)))
                }
            )*
        }
    };
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        revision,
        raft_term: 2,
    })
}

fn foo_kv() -> KeyValue {
    KeyValue {
        key: b"foo".to_vec(),
        create_revision: 2,
        mod_revision: 5,
        version: 4,
        value: b"bar".to_vec(),
        lease: 0,
    }
}

fake!(Kv {
    // A range at revision 1 is compacted; any other returns foo=bar.
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        if r.get_ref().revision == 1 {
            return Err(Status::out_of_range(COMPACTED));
        }
        Ok(Response::new(RangeResponse {
            header: header(5),
            kvs: vec![foo_kv()],
            more: false,
            count: 1,
        }))
    }

    // Needs a token; answers the token it saw as prev_kv's value.
    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let Some(token) = r.metadata().get("token") else {
            return Err(Status::unauthenticated("etcdserver: user name is empty"));
        };
        let prev_kv = KeyValue {
            key: r.get_ref().key.clone(),
            value: token.as_bytes().to_vec(),
            ..Default::default()
        };
        Ok(Response::new(PutResponse { header: header(6), prev_kv: Some(prev_kv) }))
    }
}
    delete_range: DeleteRangeRequest => DeleteRangeResponse,
    txn: TxnRequest => TxnResponse,
    compact: CompactionRequest => CompactionResponse,
);

fake!(Watch {
    type WatchStream = BoxStream<WatchResponse>;

    // Per create request: a "created" response, then one put event on its key. The response stream
    // stays open after the request stream ends, as etcd's does.
    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut requests = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let dropped = self.watch_dropped.clone();
        tokio::spawn(async move {
            let mut id = 0;
            while let Ok(Some(req)) = requests.message().await {
                let Some(watch_request::RequestUnion::CreateRequest(create)) = req.request_union
                else {
                    continue;
                };
                let created = WatchResponse { header: header(5), watch_id: id, created: true, ..Default::default() };
                let event = Event {
                    kv: Some(KeyValue { key: create.key, ..foo_kv() }),
                    ..Default::default()
                };
                let events = WatchResponse { header: header(6), watch_id: id, events: vec![event], ..Default::default() };
                for resp in [created, events] {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                id += 1;
            }
            tx.closed().await;
            dropped.notify_one();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
});

fake!(Lease {
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    // Answers each keep-alive with TTL 10.
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let stream = r.into_inner().map(|req| {
            req.map(|req| LeaseKeepAliveResponse { header: header(5), id: req.id, ttl: 10 })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_revoke(
        &self,
        _: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(LeaseRevokeResponse { header: header(7) }))
    }
}
    lease_grant: LeaseGrantRequest => LeaseGrantResponse,
    lease_time_to_live: LeaseTimeToLiveRequest => LeaseTimeToLiveResponse,
    lease_leases: LeaseLeasesRequest => LeaseLeasesResponse,
);

fake!(Cluster {}
    member_add: MemberAddRequest => MemberAddResponse,
    member_remove: MemberRemoveRequest => MemberRemoveResponse,
    member_update: MemberUpdateRequest => MemberUpdateResponse,
    member_list: MemberListRequest => MemberListResponse,
    member_promote: MemberPromoteRequest => MemberPromoteResponse,
);

fake!(Maintenance {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    // One chunk, then the stream fails.
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let chunk = SnapshotResponse { remaining_bytes: 3, blob: b"abc".to_vec(), ..Default::default() };
        let items = vec![Ok(chunk), Err(Status::unavailable("etcdserver: server stopped"))];
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    // Answers what it was asked, so an empty body can be seen to arrive as the default message.
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse { header: header(5), version: "3.5.0".into(), ..Default::default() }))
    }
}
    alarm: AlarmRequest => AlarmResponse,
    defragment: DefragmentRequest => DefragmentResponse,
    hash: HashRequest => HashResponse,
    hash_kv: HashKvRequest => HashKvResponse,
    move_leader: MoveLeaderRequest => MoveLeaderResponse,
    downgrade: DowngradeRequest => DowngradeResponse,
);

fake!(Auth {}
    auth_enable: AuthEnableRequest => AuthEnableResponse,
    auth_disable: AuthDisableRequest => AuthDisableResponse,
    auth_status: AuthStatusRequest => AuthStatusResponse,
    authenticate: AuthenticateRequest => AuthenticateResponse,
    user_add: AuthUserAddRequest => AuthUserAddResponse,
    user_get: AuthUserGetRequest => AuthUserGetResponse,
    user_list: AuthUserListRequest => AuthUserListResponse,
    user_delete: AuthUserDeleteRequest => AuthUserDeleteResponse,
    user_change_password: AuthUserChangePasswordRequest => AuthUserChangePasswordResponse,
    user_grant_role: AuthUserGrantRoleRequest => AuthUserGrantRoleResponse,
    user_revoke_role: AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse,
    role_add: AuthRoleAddRequest => AuthRoleAddResponse,
    role_get: AuthRoleGetRequest => AuthRoleGetResponse,
    role_list: AuthRoleListRequest => AuthRoleListResponse,
    role_delete: AuthRoleDeleteRequest => AuthRoleDeleteResponse,
    role_grant_permission: AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse,
    role_revoke_permission: AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse,
);

fake!(Lock {}
    lock: LockRequest => LockResponse,
    unlock: UnlockRequest => UnlockResponse,
);

fake!(Election {
        type ObserveStream = BoxStream<LeaderResponse>;

        async fn observe(
            &self,
            _: Request<LeaderRequest>,
        ) -> Result<Response<Self::ObserveStream>, Status> {
            Err(Status::unimplemented("observe"))
        }
    }
    campaign: CampaignRequest => CampaignResponse,
    proclaim: ProclaimRequest => ProclaimResponse,
    leader: LeaderRequest => LeaderResponse,
    resign: ResignRequest => ResignResponse,
);

/// Serves the gateway over the fakes on 127.0.0.1:0; returns its base URL.
async fn serve(max_request_bytes: usize) -> String {
    serve_fake(Arc::new(Fake::default()), max_request_bytes).await
}

/// Serves the gateway over `fake` on 127.0.0.1:0; returns its base URL.
async fn serve_fake(fake: Arc<Fake>, max_request_bytes: usize) -> String {
    let app = router(
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake.clone(),
        fake,
        max_request_bytes,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// POSTs `body` to `path`; returns the status and the body text.
async fn post(base: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Reads the first `n` lines of a streamed response.
async fn lines(resp: reqwest::Response, n: usize) -> Vec<String> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while buf.iter().filter(|b| **b == b'\n').count() < n {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("a chunk within 5s")
            .expect("the stream is still open")
            .unwrap();
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .take(n)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn range_answers_proto3_json() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(status, 200);
    // int64 and uint64 as strings, bytes as base64, defaults (lease 0, more false) left out.
    assert_eq!(
        body,
        concat!(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","#,
            r#""revision":"5","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","#,
            r#""mod_revision":"5","version":"4","value":"YmFy"}],"count":"1"}"#
        )
    );
}

#[tokio::test]
async fn compacted_is_grpc_gateway_error_body() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/kv/range", r#"{"key":"Zm9v","revision":"1"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        format!(r#"{{"error":"{COMPACTED}","code":11,"message":"{COMPACTED}"}}"#)
    );
}

#[tokio::test]
async fn bad_base64_is_invalid_argument() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/kv/range", r#"{"key":"!!!!"}"#).await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 3);
    assert_eq!(body["error"], body["message"]);
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("invalid request body: "), "{message}");
}

#[tokio::test]
async fn malformed_json_is_invalid_argument() {
    let base = serve(1 << 20).await;
    for bad in [r#"{"key":"#, "[1,2]", r#"{"revision":"x"}"#] {
        let (status, body) = post(&base, "/v3/kv/range", bad).await;
        assert_eq!(status, 400, "{bad}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], 3, "{bad}");
    }
}

#[tokio::test]
async fn empty_body_is_the_default_request() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/maintenance/status", "").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["version"], "3.5.0");
    assert_eq!(body["header"]["revision"], "5");
}

#[tokio::test]
async fn unimplemented_is_501_code_12() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/auth/role/revoke", "{}").await;
    assert_eq!(status, 501);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 12);
}

#[tokio::test]
async fn authorization_header_becomes_token() {
    let base = serve(1 << 20).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v3/kv/put");
    let resp = client
        .post(&url)
        .header("Authorization", "simple-token.42")
        .body(r#"{"key":"Zm9v","value":"YmFy"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    // "simple-token.42" in base64: the fake echoes the token it saw.
    assert_eq!(body["prev_kv"]["value"], "c2ltcGxlLXRva2VuLjQy");

    let resp = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "etcdserver: user name is empty"
    );
}

#[tokio::test]
async fn lease_paths_have_kv_aliases() {
    let base = serve(1 << 20).await;
    for path in ["/v3/lease/revoke", "/v3/kv/lease/revoke"] {
        let (status, body) = post(&base, path, r#"{"ID":"7"}"#).await;
        assert_eq!(status, 200, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["header"]["revision"], "7");
    }
}

#[tokio::test]
async fn watch_streams_result_lines() {
    let base = serve(1 << 20).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v3/watch"))
        .body(r#"{"create_request":{"key":"Zm9v"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let lines = lines(resp, 2).await;
    let created: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(created["result"]["created"], true);
    assert_eq!(created["result"]["header"]["revision"], "5");
    let events: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(events["result"]["events"][0]["kv"]["key"], "Zm9v");
    assert_eq!(events["result"]["events"][0]["kv"]["mod_revision"], "5");
}

#[tokio::test]
async fn watch_ends_when_the_client_goes_away() {
    let fake = Arc::new(Fake::default());
    let base = serve_fake(fake.clone(), 1 << 20).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v3/watch"))
        .body(r#"{"create_request":{"key":"Zm9v"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(lines(resp, 2).await.len(), 2);
    // `lines` dropped the response, and with it the connection.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        fake.watch_dropped.notified(),
    )
    .await
    .expect("the watch's response stream is dropped");
}

#[tokio::test]
async fn watch_takes_every_message_of_the_body() {
    let base = serve(1 << 20).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v3/watch"))
        .body(r#"{"create_request":{"key":"Zm9v"}} {"create_request":{"key":"YmFy"}}"#)
        .send()
        .await
        .unwrap();
    let lines = lines(resp, 4).await;
    let second: Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(second["result"]["watch_id"], "1");
    assert_eq!(second["result"]["events"][0]["kv"]["key"], "YmFy");
}

#[tokio::test]
async fn watch_with_malformed_body_is_400() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/watch", r#"{"create_request":"#).await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 3);
}

#[tokio::test]
async fn keepalive_streams_result_lines() {
    let base = serve(1 << 20).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v3/lease/keepalive"))
        .body(r#"{"ID":"7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let lines = lines(resp, 1).await;
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["result"]["ID"], "7");
    assert_eq!(line["result"]["TTL"], "10");
}

#[tokio::test]
async fn snapshot_stream_ends_with_error_chunk() {
    let base = serve(1 << 20).await;
    let (status, body) = post(&base, "/v3/maintenance/snapshot", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        concat!(
            r#"{"result":{"remaining_bytes":"3","blob":"YWJj"}}"#,
            "\n",
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: server stopped","http_status":"Service Unavailable"}}"#
        )
    );
}

#[tokio::test]
async fn oversize_request_is_too_large() {
    let base = serve(1024).await;
    let too_large = r#"{"error":"etcdserver: request is too large","code":3,"message":"etcdserver: request is too large"}"#;

    // The message's protobuf is over max_request_bytes.
    let value = "QUFB".repeat(500);
    let (status, body) = post(
        &base,
        "/v3/kv/put",
        format!(r#"{{"key":"Zm9v","value":"{value}"}}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (400, too_large));

    // The body is over what may be buffered, whatever it holds.
    let unfinished = format!(r#"{{"key":"{}"#, "A".repeat(600 * 1024));
    let (status, body) = post(&base, "/v3/kv/range", unfinished).await;
    assert_eq!((status, body.as_str()), (400, too_large));

    // Under the limit is fine.
    let (status, _) = post(&base, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(status, 200);
}
