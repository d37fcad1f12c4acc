//! etcd's HTTP/1.1 JSON gateway: the v3 gRPC API as `POST /v3/...` with JSON bodies, the way etcd
//! 3.4+ serves it through grpc-gateway v1 (`curl -X POST localhost:2379/v3/kv/range -d '{"key":"Zm9v"}'`).
//!
//! The gateway knows nothing of the store. It is generic over the eight tonic service traits
//! ([`Kv`], [`Watch`], [`Lease`], [`Cluster`], [`Maintenance`], [`Auth`], [`Lock`], [`Election`])
//! and calls them in process, so whatever implements the gRPC API also answers here, with the same
//! errors.
//!
//! A call is: decode the body as the request message (proto3 JSON through pbjson: `.proto` field
//! names, int64 as strings, bytes as base64; an empty body is the default message), copy the
//! `Authorization` header into the request metadata as `token` (the key etcd's auth reads) and
//! `authorization` (the key grpc-gateway forwards it under), call the method, and answer 200 with
//! the response message as JSON. A failed call answers grpc-gateway v1's error body with the HTTP
//! status grpc-gateway gives its code; see [`error`].
//!
//! Streams: `/v3/watch` and `/v3/lease/keepalive` read every JSON message the body holds, as the
//! bytes arrive, and feed them to the service as its request stream; the body's end is the client's
//! half-close. `/v3/maintenance/snapshot`, `/v3/election/observe` and those two answer a chunked stream of
//! `{"result": ...}` lines for as long as the service streams and the client stays; an error after
//! the first line ends the stream with an `{"error": {...}}` chunk, an error before it is the HTTP
//! status of its code. A client that goes away drops the response stream, and with it the
//! service's stream (for a watch, its watchers).
//!
//! Every call is counted as the gRPC method it calls (`crate::api::grpc::stats`), as etcd's gateway
//! calls etcd's gRPC server over a loopback connection: once its first JSON message decoded (etcd's
//! gateway makes no call before), with each message the service reads and sends, and the code it
//! ends with.
//!
//! Deliberate differences from etcd: a malformed first message on a stream is a 400 here, where
//! etcd's gateway would leave the stream hanging; the `/v3beta` and `/v3alpha` prefixes of etcd 3.3
//! are not served; `/v3/maintenance/hashkv` is HashKV (etcd 3.5 before 3.5.10 routed it to Hash by
//! mistake). Unknown paths and wrong methods are left to whoever merges this router, so that it can
//! be merged with another that has its own fallback.

mod body;
pub mod error;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Codec;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, KeyAndValueRef, MetadataMap};
use tonic::Status;

use crate::api::grpc::stats::{Call, Method, GRPC};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;

use body::{result_chunk, JsonReader, Limits};
use error::{error_response, http_status, json_response, stream_error_chunk};

/// The metadata key etcd's auth reads a token from (`rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA_KEY: &str = "token";

/// The prefix grpc-gateway maps to and from gRPC metadata, both ways.
const METADATA_HEADER_PREFIX: &str = "grpc-metadata-";

/// The JSON gateway over the eight etcd services, every route under `/v3/`.
///
/// `max_request_bytes` is etcd's `--max-request-bytes`: a request message whose protobuf encoding
/// is larger is refused with "etcdserver: request is too large" (InvalidArgument, 400).
#[allow(clippy::too_many_arguments)]
pub fn router<K, W, L, C, M, A, LK, E>(
    kv: Arc<K>,
    watch: Arc<W>,
    lease: Arc<L>,
    cluster: Arc<C>,
    maintenance: Arc<M>,
    auth: Arc<A>,
    lock: Arc<LK>,
    election: Arc<E>,
    max_request_bytes: usize,
) -> Router
where
    K: Kv,
    W: Watch,
    L: Lease,
    C: Cluster,
    M: Maintenance,
    A: Auth,
    LK: Lock,
    E: Election,
{
    let limits = Limits::new(max_request_bytes);

    // One route per method: `unary!(service, method, row)`, and so on for the streaming shapes. The
    // closure is the only per-method code; `s.$method(r)` picks the request and response types.
    macro_rules! unary {
        ($svc:expr, $method:ident, $row:ident) => {
            unary_route($svc.clone(), limits, Method::$row, |s, r| async move {
                s.$method(r).await
            })
        };
    }
    macro_rules! bidi {
        ($svc:expr, $method:ident, $row:ident) => {
            bidi_route($svc.clone(), limits, Method::$row, |s, r| async move {
                s.$method(r).await
            })
        };
    }
    macro_rules! server_streaming {
        ($svc:expr, $method:ident, $row:ident) => {
            server_streaming_route($svc.clone(), limits, Method::$row, |s, r| async move {
                s.$method(r).await
            })
        };
    }

    Router::new()
        // KV
        .route("/v3/kv/range", unary!(kv, range, KvRange))
        .route("/v3/kv/put", unary!(kv, put, KvPut))
        .route(
            "/v3/kv/deleterange",
            unary!(kv, delete_range, KvDeleteRange),
        )
        .route("/v3/kv/txn", unary!(kv, txn, KvTxn))
        .route("/v3/kv/compaction", unary!(kv, compact, KvCompact))
        // Watch
        .route("/v3/watch", bidi!(watch, watch, Watch))
        // Lease: etcd binds three methods under /v3/kv/lease/ as well.
        .route("/v3/lease/grant", unary!(lease, lease_grant, LeaseGrant))
        .route("/v3/lease/revoke", unary!(lease, lease_revoke, LeaseRevoke))
        .route(
            "/v3/kv/lease/revoke",
            unary!(lease, lease_revoke, LeaseRevoke),
        )
        .route(
            "/v3/lease/keepalive",
            bidi!(lease, lease_keep_alive, LeaseKeepAlive),
        )
        .route(
            "/v3/lease/timetolive",
            unary!(lease, lease_time_to_live, LeaseTimeToLive),
        )
        .route(
            "/v3/kv/lease/timetolive",
            unary!(lease, lease_time_to_live, LeaseTimeToLive),
        )
        .route("/v3/lease/leases", unary!(lease, lease_leases, LeaseLeases))
        .route(
            "/v3/kv/lease/leases",
            unary!(lease, lease_leases, LeaseLeases),
        )
        // Cluster
        .route(
            "/v3/cluster/member/add",
            unary!(cluster, member_add, MemberAdd),
        )
        .route(
            "/v3/cluster/member/remove",
            unary!(cluster, member_remove, MemberRemove),
        )
        .route(
            "/v3/cluster/member/update",
            unary!(cluster, member_update, MemberUpdate),
        )
        .route(
            "/v3/cluster/member/list",
            unary!(cluster, member_list, MemberList),
        )
        .route(
            "/v3/cluster/member/promote",
            unary!(cluster, member_promote, MemberPromote),
        )
        // Maintenance
        .route("/v3/maintenance/alarm", unary!(maintenance, alarm, Alarm))
        .route(
            "/v3/maintenance/status",
            unary!(maintenance, status, Status),
        )
        .route(
            "/v3/maintenance/defragment",
            unary!(maintenance, defragment, Defragment),
        )
        .route("/v3/maintenance/hash", unary!(maintenance, hash, Hash))
        .route(
            "/v3/maintenance/hashkv",
            unary!(maintenance, hash_kv, HashKv),
        )
        .route(
            "/v3/maintenance/snapshot",
            server_streaming!(maintenance, snapshot, Snapshot),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            unary!(maintenance, move_leader, MoveLeader),
        )
        .route(
            "/v3/maintenance/downgrade",
            unary!(maintenance, downgrade, Downgrade),
        )
        // Auth
        .route("/v3/auth/enable", unary!(auth, auth_enable, AuthEnable))
        .route("/v3/auth/disable", unary!(auth, auth_disable, AuthDisable))
        .route("/v3/auth/status", unary!(auth, auth_status, AuthStatus))
        .route(
            "/v3/auth/authenticate",
            unary!(auth, authenticate, Authenticate),
        )
        .route("/v3/auth/user/add", unary!(auth, user_add, UserAdd))
        .route("/v3/auth/user/get", unary!(auth, user_get, UserGet))
        .route("/v3/auth/user/list", unary!(auth, user_list, UserList))
        .route(
            "/v3/auth/user/delete",
            unary!(auth, user_delete, UserDelete),
        )
        .route(
            "/v3/auth/user/changepw",
            unary!(auth, user_change_password, UserChangePassword),
        )
        .route(
            "/v3/auth/user/grant",
            unary!(auth, user_grant_role, UserGrantRole),
        )
        .route(
            "/v3/auth/user/revoke",
            unary!(auth, user_revoke_role, UserRevokeRole),
        )
        .route("/v3/auth/role/add", unary!(auth, role_add, RoleAdd))
        .route("/v3/auth/role/get", unary!(auth, role_get, RoleGet))
        .route("/v3/auth/role/list", unary!(auth, role_list, RoleList))
        .route(
            "/v3/auth/role/delete",
            unary!(auth, role_delete, RoleDelete),
        )
        .route(
            "/v3/auth/role/grant",
            unary!(auth, role_grant_permission, RoleGrantPermission),
        )
        .route(
            "/v3/auth/role/revoke",
            unary!(auth, role_revoke_permission, RoleRevokePermission),
        )
        // Lock
        .route("/v3/lock/lock", unary!(lock, lock, Lock))
        .route("/v3/lock/unlock", unary!(lock, unlock, Unlock))
        // Election
        .route(
            "/v3/election/campaign",
            unary!(election, campaign, Campaign),
        )
        .route(
            "/v3/election/proclaim",
            unary!(election, proclaim, Proclaim),
        )
        .route("/v3/election/leader", unary!(election, leader, Leader))
        .route(
            "/v3/election/observe",
            server_streaming!(election, observe, Observe),
        )
        .route("/v3/election/resign", unary!(election, resign, Resign))
}

/// A unary method: one message in, one message out.
fn unary_route<S, Req, Resp, F, Fut>(
    svc: Arc<S>,
    limits: Limits,
    method: Method,
    call: F,
) -> MethodRouter
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    post(move |headers: HeaderMap, body: Body| {
        let (svc, call) = (svc.clone(), call.clone());
        async move {
            // Only the first message counts; grpc-gateway's decoder never reads past it.
            let msg = match JsonReader::new(body, limits).next::<Req>().await {
                Ok(msg) => msg.unwrap_or_default(),
                Err(status) => return error_response(&status),
            };
            let counted = Call::start(method);
            counted.received();
            match call(svc, grpc_request(&headers, msg)).await {
                Ok(response) => {
                    counted.answered();
                    unary_response(response)
                }
                Err(status) => {
                    counted.finish(status.code());
                    error_response(&status)
                }
            }
        }
    })
}

/// A server-streaming method (snapshot): one message in, a stream out.
fn server_streaming_route<S, Req, Resp, St, F, Fut>(
    svc: Arc<S>,
    limits: Limits,
    method: Method,
    call: F,
) -> MethodRouter
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<St>, Status>> + Send + 'static,
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    post(move |headers: HeaderMap, body: Body| {
        let (svc, call) = (svc.clone(), call.clone());
        async move {
            let msg = match JsonReader::new(body, limits).next::<Req>().await {
                Ok(msg) => msg.unwrap_or_default(),
                Err(status) => return error_response(&status),
            };
            let counted = Call::start(method);
            counted.received();
            match call(svc, grpc_request(&headers, msg)).await {
                Ok(response) => stream_response(response, counted).await,
                Err(status) => {
                    counted.finish(status.code());
                    error_response(&status)
                }
            }
        }
    })
}

/// A bidirectional method (watch, lease keep-alive): the body's messages in, a stream out.
fn bidi_route<S, Req, Resp, St, F, Fut>(
    svc: Arc<S>,
    limits: Limits,
    method: Method,
    call: F,
) -> MethodRouter
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, tonic::Request<tonic::Streaming<Req>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<St>, Status>> + Send + 'static,
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    St: Stream<Item = Result<Resp, Status>> + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    post(move |headers: HeaderMap, body: Body| {
        let (svc, call) = (svc.clone(), call.clone());
        async move {
            let mut reader = JsonReader::new(body, limits);
            // The first message is decoded before the call so that a malformed body is a 400.
            let first = match reader.next::<Req>().await {
                Ok(first) => first,
                Err(status) => return error_response(&status),
            };
            let counted = Call::start(method);
            let requests = request_stream(first, reader, limits, method);
            match call(svc, grpc_request(&headers, requests)).await {
                Ok(response) => stream_response(response, counted).await,
                Err(status) => {
                    counted.finish(status.code());
                    error_response(&status)
                }
            }
        }
    })
}

/// The tonic request a service expects, carrying `msg` and the metadata the headers give.
///
/// `Authorization` becomes `token` (etcd clients and etcd's auth use that key) and `authorization`
/// (where grpc-gateway puts it); `Grpc-Metadata-<key>` headers become `<key>`, as grpc-gateway does.
fn grpc_request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    let metadata = request.metadata_mut();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        if let (Ok(key), Ok(value)) = (
            key.parse::<AsciiMetadataKey>(),
            AsciiMetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| AsciiMetadataValue::try_from(v.as_bytes()).ok())
    {
        metadata.insert(TOKEN_METADATA_KEY, token.clone());
        metadata.insert("authorization", token);
    }
    request
}

/// 200 with the response message as JSON.
fn unary_response<T: Serialize>(response: tonic::Response<T>) -> Response {
    let (metadata, msg, _) = response.into_parts();
    match serde_json::to_vec(&msg) {
        Ok(bytes) => {
            let mut response = json_response(StatusCode::OK, Body::from(bytes));
            forward_metadata(&metadata, response.headers_mut());
            response
        }
        Err(e) => error_response(&Status::internal(format!("marshalling the response: {e}"))),
    }
}

/// A streamed answer: a line per message, for as long as the service streams.
///
/// Waits for the first message before answering, as grpc-gateway does (it waits for the gRPC
/// headers, which etcd sends with the first message): an error then is still an HTTP status.
///
/// `counted` counts each message the service sends and the code its stream ends with; a client
/// that goes away drops it unfinished, which counts the call `Canceled`, as etcd's gateway cancels
/// its gRPC call then. So does a message the gateway cannot write as JSON, after which it stops.
async fn stream_response<St, T>(response: tonic::Response<St>, counted: Call) -> Response
where
    St: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    let (metadata, stream, _) = response.into_parts();
    let mut stream = Box::pin(stream);
    let first = match stream.next().await {
        None => {
            counted.finish(tonic::Code::Ok);
            // Nothing more to poll: the stream is over.
            let body = Body::from_stream(futures::stream::empty::<Result<Bytes, Infallible>>());
            let mut response = json_response(StatusCode::OK, body);
            forward_metadata(&metadata, response.headers_mut());
            return response;
        }
        Some(Ok(msg)) => {
            counted.sent();
            match result_chunk(&msg) {
                Ok(chunk) => chunk,
                Err(status) => return error_response(&status),
            }
        }
        Some(Err(status)) => {
            counted.finish(status.code());
            let body = Body::from(stream_error_chunk(&status));
            return json_response(http_status(status.code()), body);
        }
    };
    // After the first error chunk the stream is over, whatever the service would still send.
    let rest = futures::stream::unfold(Some((stream, counted)), |state| async move {
        let (mut stream, counted) = state?;
        match stream.next().await {
            None => {
                counted.finish(tonic::Code::Ok);
                None
            }
            Some(Ok(msg)) => {
                counted.sent();
                match result_chunk(&msg) {
                    Ok(chunk) => Some((chunk, Some((stream, counted)))),
                    Err(status) => Some((stream_error_chunk(&status), None)),
                }
            }
            Some(Err(status)) => {
                counted.finish(status.code());
                Some((stream_error_chunk(&status), None))
            }
        }
    });
    let chunks = futures::stream::once(async move { first })
        .chain(rest)
        .map(|chunk| Ok::<_, Infallible>(Bytes::from(chunk)));
    let mut response = json_response(StatusCode::OK, Body::from_stream(chunks));
    forward_metadata(&metadata, response.headers_mut());
    response
}

/// Response metadata as `Grpc-Metadata-<key>` headers, as grpc-gateway forwards it.
fn forward_metadata(metadata: &MetadataMap, headers: &mut HeaderMap) {
    for entry in metadata.iter() {
        let KeyAndValueRef::Ascii(key, value) = entry else {
            continue;
        };
        let name = format!("{METADATA_HEADER_PREFIX}{}", key.as_str());
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_encoded_bytes()),
        ) {
            headers.append(name, value);
        }
    }
}

/// The service's request stream: `first`, then every message the rest of the body holds.
///
/// A task decodes the body and feeds gRPC frames to a `tonic::Streaming`, the type the service
/// traits take; it stops when the body ends (the client's half-close), when a message is malformed
/// (grpc-gateway stops sending too), or when the service drops the stream.
fn request_stream<T>(
    first: Option<T>,
    mut reader: JsonReader,
    limits: Limits,
    method: Method,
) -> tonic::Streaming<T>
where
    T: DeserializeOwned + prost::Message + Default + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let mut next = first;
        loop {
            if let Some(msg) = next.take() {
                if tx.send(Ok(grpc_frame(&msg))).await.is_err() {
                    return;
                }
                GRPC.received(method);
            }
            let decoded = tokio::select! {
                decoded = reader.next::<T>() => decoded,
                _ = tx.closed() => return,
            };
            match decoded {
                Ok(Some(msg)) => next = Some(msg),
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "gateway: ending a request stream");
                    return;
                }
            }
        }
    });
    let decoder = tonic_prost::ProstCodec::<T, T>::default().decoder();
    // Messages were already held to max_request_bytes; the frame limit only must not be lower.
    let max_frame = limits.max_request_bytes.saturating_add(1024);
    tonic::Streaming::new_request(
        decoder,
        Body::from_stream(ReceiverStream::new(rx)),
        None,
        Some(max_frame),
    )
}

/// `msg` as one gRPC length-prefixed message: uncompressed flag, big-endian length, protobuf.
fn grpc_frame<T: prost::Message>(msg: &T) -> Bytes {
    let encoded = msg.encode_to_vec();
    // A message was held to max_request_bytes, far below 4 GiB; saturate rather than wrap anyway.
    let len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

#[cfg(test)]
mod tests;
