//! The seed's REST API (`/put`, `/get`, `/delete`, `/watch`), plus `/compact`, `/health`, `/version`
//! and `/metrics`.
//!
//! The same listener also serves the web console at `/ui` ([`crate::api::ui`]) and etcd's JSON
//! gateway (`/v3/...`: the client port's own router and handlers, with the same auth checks), so
//! that the console reaches every API it uses from its own origin.
//!
//! Bodies are JSON whatever their `Content-Type` says: the seed's `curl -d '{...}'` sends
//! `application/x-www-form-urlencoded`, and its lines must work unchanged. Keys and values are JSON
//! strings, so UTF-8; the store itself holds bytes (the gRPC API writes any bytes), and a key or value
//! that is not valid UTF-8 is shown base64-encoded in a `key_base64` / `value_base64` field instead of
//! `key` / `value`.
//!
//! With auth enabled (`etcdctl auth enable`), `/put`, `/get`, `/delete`, `/watch` and `/compact`
//! need credentials, as the gRPC API does: HTTP Basic with a user's name and password
//! (`curl -u alice:secret ...`; the password is checked with bcrypt, successes are cached), or
//! `Authorization: Bearer <token>` with a token from `Authenticate` (`/v3/auth/authenticate` on the
//! client port). The user's roles apply as on gRPC: reads need read permission on the key (or the
//! prefix, for `/watch?prefix=true`), writes need write permission; `/compact` needs any valid user.
//! No credentials answer 401 (with `WWW-Authenticate: Basic`), wrong ones 401, a key outside the
//! user's roles 403. `/health`, `/version` and `/metrics` stay open, as etcd's are.
//!
//! Every error is a 4xx/5xx with a JSON body `{"error": "..."}` whose text is etcd's where etcd has one.
//! Request bodies are capped at `--max-request-bytes` (413).
//!
//! Every request the listener answers is counted by route and status ([`requests`]).
//!
//! `/watch` long-polls: it answers as soon as there are events, or 204 No Content when `timeout`
//! seconds pass (header `X-Etcd-Revision` carries the current revision, so the next poll can start at
//! revision + 1 and miss nothing). A watch from an old revision is first caught up from history:
//! its `timeout` counts only once it has been sent everything up to the revision the store had when
//! the poll began (or after [`CATCH_UP_WAIT`] at most), so `timeout=0` means "what is there now",
//! history included, never "nothing yet" while history is being read. `stream=true` turns it into
//! Server-Sent Events. A client that goes away drops its handler future, and with it the watcher.

mod metrics;
pub mod requests;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use base64::Engine as _;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::conn::PeerAddr;
use crate::auth::{Caller, ClientCertName};
use crate::error::Error;
use crate::mvcc::{Event, EventKind, KeyValue};
use crate::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, ResponseHeader,
};
use crate::server::Server;
use crate::watch::{WatchRequest, Watcher};

/// Default long-poll timeout, seconds.
pub const DEFAULT_WATCH_TIMEOUT_SECS: u64 = 60;
/// The longest a watch may be asked to wait, seconds.
pub const MAX_WATCH_TIMEOUT_SECS: u64 = 600;
/// The etcd API level `/version` reports (clients parse it to choose their API paths).
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Long-polls and event streams open per client address, against `--max-rest-watches-per-client`.
struct WatchesPerClient {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    limit: usize,
}

/// One open REST watch of a client; closing it (dropping the guard) frees its place.
struct ClientWatch(Arc<WatchesPerClient>, std::net::IpAddr);

impl WatchesPerClient {
    /// A place for one more watch of `ip`, or `None` if it holds the limit already.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientWatch> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientWatch(Arc::clone(self), ip))
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// The REST router for `server`.
pub fn router(server: Server) -> Router {
    let per_client = Arc::new(WatchesPerClient {
        open: Default::default(),
        limit: server.config().max_rest_watches_per_client,
    });
    Router::new()
        .route("/put", post(put))
        .route("/get", get(get_key))
        .route("/delete", axum::routing::delete(delete).post(delete))
        .route("/watch", get(watch))
        .route("/compact", post(compact))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(per_client))
        .with_state(server.clone())
        // The web console and the JSON gateway it calls: the gateway's handlers and auth checks are
        // the client port's own, mounted here so that the console reaches them from its origin.
        .merge(crate::api::ui::router(server.clone()))
        .merge(crate::api::grpc::gateway_router(server))
        // Every request of the listener, whichever router answers it.
        .layer(axum::middleware::from_fn(requests::count_requests))
}

/// etcd's plain-HTTP endpoints, served on the client port beside gRPC.
pub fn etcd_http_router(server: Server) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics::metrics))
        .with_state(server)
}

/// An API error: an [`Error`] rendered as JSON with its HTTP status.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "request failed");
        }
        let mut response = (status, Json(json!({ "error": self.0.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mini-etcd\""),
            );
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who a REST request is: with auth enabled, the user its `Authorization` header names (HTTP Basic
/// with a password, or a bearer token), else the user its connection's verified client certificate
/// names (`--client-cert-auth`); with auth disabled, an anonymous client nothing is checked for.
async fn rest_caller(
    server: &Server,
    headers: &HeaderMap,
    cert: Option<&ClientCertName>,
) -> ApiResult<Caller> {
    if !server.auth().is_enabled() {
        return Ok(Caller::ANONYMOUS);
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return match cert {
            Some(cert) => Ok(server.caller_or_cert(None, Some(cert))?),
            None => Err(ApiError(Error::UserEmpty)),
        };
    };
    let value = value
        .to_str()
        .map_err(|_| bad("Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(server.caller(Some(rest.trim()))?);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                bad("Authorization: Basic credentials are not base64 of user:password")
            })?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("Authorization: Basic credentials are not user:password"))?;
        return Ok(server
            .caller_with_password(name.to_string(), password.to_string())
            .await?);
    }
    Err(bad(
        "Authorization must be Basic (user:password) or Bearer (a token)",
    ))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(Error::InvalidArgument(msg.into()))
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound("no such endpoint".into()))
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "error": "method not allowed" })),
    )
        .into_response()
}

/// Reads a request body of at most `--max-request-bytes`.
async fn read_body(server: &Server, body: Body) -> ApiResult<Bytes> {
    let limit = server.config().max_request_bytes;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError(Error::RequestTooLarge))
}

/// Parses a JSON object body. Serde would also take a struct from an array (`["k","v"]`); the REST
/// API promises objects, so anything else is rejected.
fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> ApiResult<T> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed JSON body: {e}")))?;
    if !value.is_object() {
        return Err(bad("the JSON body must be an object"));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Adds `name` (or `name_base64` when not UTF-8) to a JSON object.
fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

fn kv_json(kv: &KeyValue) -> Value {
    let mut o = Map::new();
    put_bytes(&mut o, "key", &kv.key);
    put_bytes(&mut o, "value", &kv.value);
    o.insert("create_revision".into(), kv.create_revision.into());
    o.insert("mod_revision".into(), kv.mod_revision.into());
    o.insert("version".into(), kv.version.into());
    if kv.lease != 0 {
        o.insert("lease".into(), kv.lease.into());
    }
    Value::Object(o)
}

fn event_json(ev: &Event) -> Value {
    let mut o = Map::new();
    let kind = match ev.kind {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    };
    o.insert("type".into(), kind.into());
    put_bytes(&mut o, "key", &ev.kv.key);
    if matches!(ev.kind, EventKind::Put) {
        put_bytes(&mut o, "value", &ev.kv.value);
        o.insert("version".into(), ev.kv.version.into());
        o.insert("create_revision".into(), ev.kv.create_revision.into());
    }
    o.insert("mod_revision".into(), ev.kv.mod_revision.into());
    Value::Object(o)
}

fn revision_of(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

#[derive(Deserialize)]
struct PutBody {
    key: Option<String>,
    value: Option<String>,
}

async fn put(
    State(server): State<Server>,
    headers: HeaderMap,
    cert: Option<Extension<ClientCertName>>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let caller = rest_caller(&server, &headers, cert.as_ref().map(|c| &c.0)).await?;
    let bytes = read_body(&server, body).await?;
    let req: PutBody = parse_json(&bytes)?;
    let key = req
        .key
        .filter(|k| !k.is_empty())
        .ok_or(ApiError(Error::EmptyKey))?;
    let value = req.value.ok_or_else(|| bad("\"value\" is required"))?;
    let res = server
        .put_as(
            &caller,
            PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(
        json!({ "key": key, "value": value, "revision": revision_of(&res.header) }),
    ))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
    rev: Option<String>,
}

fn required_key(key: Option<String>) -> ApiResult<String> {
    key.filter(|k| !k.is_empty())
        .ok_or(ApiError(Error::EmptyKey))
}

fn parse_rev(rev: Option<&str>) -> ApiResult<i64> {
    match rev {
        None | Some("") => Ok(0),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(bad(format!(
                "rev must be a non-negative integer, got {s:?}"
            ))),
        },
    }
}

async fn get_key(
    State(server): State<Server>,
    headers: HeaderMap,
    cert: Option<Extension<ClientCertName>>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<Value>> {
    let caller = rest_caller(&server, &headers, cert.as_ref().map(|c| &c.0)).await?;
    let key = required_key(q.key)?;
    let revision = parse_rev(q.rev.as_deref())?;
    let res = server
        .range_as(
            &caller,
            &RangeRequest {
                key: key.into_bytes(),
                revision,
                ..Default::default()
            },
        )
        .await?;
    let kv = res.kvs.first().ok_or(ApiError(Error::KeyNotFound))?;
    Ok(Json(kv_json(kv)))
}

async fn delete(
    State(server): State<Server>,
    headers: HeaderMap,
    cert: Option<Extension<ClientCertName>>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<Value>> {
    // Routed for DELETE and for POST, the seed's compatibility mode (PowerShell).
    let caller = rest_caller(&server, &headers, cert.as_ref().map(|c| &c.0)).await?;
    let key = required_key(q.key)?;
    let res = server
        .delete_range_as(
            &caller,
            DeleteRangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            },
        )
        .await?;
    if res.deleted == 0 {
        return Err(ApiError(Error::KeyNotFound));
    }
    Ok(Json(
        json!({ "deleted": res.deleted, "revision": revision_of(&res.header) }),
    ))
}

#[derive(Deserialize)]
struct CompactBody {
    revision: i64,
}

async fn compact(
    State(server): State<Server>,
    headers: HeaderMap,
    cert: Option<Extension<ClientCertName>>,
    body: Body,
) -> ApiResult<Json<Value>> {
    // Any valid user may compact, as on gRPC; without auth, anyone.
    rest_caller(&server, &headers, cert.as_ref().map(|c| &c.0)).await?;
    let bytes = read_body(&server, body).await?;
    let req: CompactBody = parse_json(&bytes)?;
    if req.revision <= 0 {
        return Err(bad("revision must be positive"));
    }
    let res = server
        .compact(CompactionRequest {
            revision: req.revision,
            physical: false,
        })
        .await?;
    Ok(Json(
        json!({ "revision": revision_of(&res.header), "compact_revision": req.revision }),
    ))
}

#[derive(Deserialize)]
struct WatchQuery {
    key: Option<String>,
    rev: Option<String>,
    prefix: Option<String>,
    timeout: Option<String>,
    stream: Option<String>,
}

fn flag(v: Option<&str>, name: &str) -> ApiResult<bool> {
    match v {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(bad(format!("{name} must be true or false, got {other:?}"))),
    }
}

async fn watch(
    State(server): State<Server>,
    Extension(per_client): Extension<Arc<WatchesPerClient>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    cert: Option<Extension<ClientCertName>>,
    Query(q): Query<WatchQuery>,
) -> ApiResult<Response> {
    let caller = rest_caller(&server, &headers, cert.as_ref().map(|c| &c.0)).await?;
    let key = required_key(q.key)?;
    let start_revision = parse_rev(q.rev.as_deref())?;
    let prefix = flag(q.prefix.as_deref(), "prefix")?;
    let stream = flag(q.stream.as_deref(), "stream")?;
    let timeout_secs = match q.timeout.as_deref() {
        None | Some("") => DEFAULT_WATCH_TIMEOUT_SECS,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| t.ceil() as u64)
            .ok_or_else(|| bad(format!("timeout must be a number of seconds, got {s:?}")))?,
    }
    .min(MAX_WATCH_TIMEOUT_SECS);
    let key = key.into_bytes();
    let range_end = if prefix {
        crate::watch::prefix_end(&key)
    } else {
        Vec::new()
    };
    server.auth().check_read(&caller, &key, &range_end)?;
    // Held until the answer is complete (for a stream, until it ends).
    let place = match peer {
        Some(Extension(PeerAddr(addr))) => Some(per_client.enter(addr.ip()).ok_or_else(|| {
            ApiError(Error::ClientLimit(
                "too many watches from this client address (--max-rest-watches-per-client)".into(),
            ))
        })?),
        None => None,
    };
    let head = server.revision();
    let watcher = server.watch(WatchRequest {
        key,
        range_end,
        start_revision,
        ..Default::default()
    });
    let timeout = Duration::from_secs(timeout_secs);
    if stream {
        return Ok(sse(watcher, timeout, place).into_response());
    }
    long_poll(watcher, timeout, head).await
}

/// The longest a long poll waits for its watch to be caught up from history before its own
/// `timeout` starts to count (then it answers 204 with the revision reached so far).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How often a long poll whose watch is being caught up looks whether it has been.
const CATCH_UP_STEP: Duration = Duration::from_millis(5);

/// Waits for the first events of `watcher`: `timeout` after it has been sent everything up to `head`
/// (the store's revision when the poll began), and at most [`CATCH_UP_WAIT`] for that.
async fn long_poll(mut watcher: Watcher, timeout: Duration, head: i64) -> ApiResult<Response> {
    let began = tokio::time::Instant::now();
    let first = loop {
        let caught_up = watcher.progress().revision() >= head;
        let limit = began
            + if caught_up {
                timeout
            } else {
                timeout.max(CATCH_UP_WAIT)
            };
        let now = tokio::time::Instant::now();
        // Not caught up, `limit` is at least `CATCH_UP_WAIT` away: the wait for history is bounded.
        if now >= limit {
            // Not the store's head: a watch still being caught up from history has been sent
            // only so far, and a client resuming after this revision must miss nothing.
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&watcher.progress().revision().to_string()) {
                headers.insert("X-Etcd-Revision", v);
            }
            return Ok((StatusCode::NO_CONTENT, headers).into_response());
        }
        let step = if caught_up {
            limit.saturating_duration_since(now)
        } else {
            CATCH_UP_STEP
        };
        // `recv` is cancel-safe: a batch is either handed out or left in the channel.
        match tokio::time::timeout(step, watcher.recv()).await {
            Err(_) => continue,
            Ok(None) => return Err(ApiError(Error::Stopped)),
            Ok(Some(batch)) => break batch,
        }
    };
    if first.compact_revision != 0 {
        return Ok((
            StatusCode::GONE,
            Json(json!({
                "error": Error::Compacted.to_string(),
                "compact_revision": first.compact_revision,
            })),
        )
            .into_response());
    }
    let mut events: Vec<Value> = first.events.iter().map(event_json).collect();
    // Whatever else is already waiting goes out in the same answer.
    while let Some(Some(more)) = futures::FutureExt::now_or_never(watcher.recv()) {
        if more.compact_revision != 0 {
            break;
        }
        events.extend(more.events.iter().map(event_json));
    }
    if let Some(last) = events.last().and_then(|e| e["mod_revision"].as_i64()) {
        watcher.forwarded(last);
    }
    let revision = watcher.progress().revision();
    let mut resp = Json(json!({ "events": events, "revision": revision })).into_response();
    if let Ok(v) = HeaderValue::from_str(&revision.to_string()) {
        resp.headers_mut().insert("X-Etcd-Revision", v);
    }
    Ok(resp)
}

fn sse(
    watcher: Watcher,
    timeout: Duration,
    place: Option<ClientWatch>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    // The client's place goes with the stream: it is freed when the stream ends or is dropped.
    let events = futures::stream::unfold(
        ((watcher, place), Vec::<Value>::new().into_iter(), false),
        move |(mut held, mut queued, done)| async move {
            loop {
                if let Some(ev) = queued.next() {
                    let e = SseEvent::default().data(ev.to_string());
                    return Some((Ok(e), (held, queued, done)));
                }
                if done {
                    return None;
                }
                match tokio::time::timeout_at(deadline, held.0.recv()).await {
                    Ok(Some(batch)) if batch.compact_revision != 0 => {
                        let e = SseEvent::default().event("error").data(
                            json!({
                                "error": Error::Compacted.to_string(),
                                "compact_revision": batch.compact_revision,
                            })
                            .to_string(),
                        );
                        return Some((Ok(e), (held, queued, true)));
                    }
                    Ok(Some(batch)) => {
                        let v: Vec<Value> = batch.events.iter().map(event_json).collect();
                        queued = v.into_iter();
                    }
                    _ => return None,
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn health(State(server): State<Server>) -> Response {
    let st = server.status();
    // etcd 3.5's reasons; a member that stopped (a fatal error, or removed) says why.
    let reason = if let Some(why) = server.fatal_error() {
        Some(why)
    } else if st.leader == 0 {
        Some("RAFT NO LEADER".to_string())
    } else if server.shared().alarms.no_space() {
        Some("ALARM NOSPACE".to_string())
    } else {
        None
    };
    if let Some(reason) = reason {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "health": "false", "reason": reason })),
        )
            .into_response();
    }
    Json(json!({ "health": "true", "reason": "" })).into_response()
}

async fn version() -> Response {
    let mut resp = Json(json!({ "etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION }))
        .into_response();
    resp.headers_mut().insert(
        header::SERVER,
        HeaderValue::from_static(concat!("mini-etcd/", env!("CARGO_PKG_VERSION"))),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_is_base64() {
        let mut o = Map::new();
        put_bytes(&mut o, "value", &[0xff, 0x00]);
        assert_eq!(o.get("value_base64"), Some(&Value::String("/wA=".into())));
        assert!(o.get("value").is_none());
    }
}
