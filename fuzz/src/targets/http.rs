//! The REST API and the JSON gateway: arbitrary requests through their routers, in process.
//!
//! An input is a request in a small text form (what the corpus holds):
//!
//! ```text
//! METHOD /path?query
//! Header-Name: value
//!
//! body
//! ```
//!
//! or, when it starts with a zero byte, bytes from which `arbitrary` picks a method, a known path,
//! query parameters and a JSON body with known field names (so that mutations of a few bytes move
//! between well-formed requests, not only broken ones).

use arbitrary::Unstructured;
use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use crate::server::{send_and_check, shared};

/// Paths and field names of the REST API (`src/api/rest/mod.rs`).
const REST_PATHS: &[&str] = &[
    "/put", "/get", "/delete", "/watch", "/compact", "/health", "/version", "/metrics", "/",
];
const REST_FIELDS: &[&str] = &[
    "key",
    "value",
    "prefix",
    "range_end",
    "revision",
    "rev",
    "limit",
    "lease",
    "ttl",
    "prev_kv",
    "timeout",
    "stream",
    "start_revision",
    "keys_only",
    "count_only",
    "physical",
    "sort_order",
    "sort_target",
];

/// The gateway's paths (`src/api/gateway/mod.rs`), less the calls that change the cluster's
/// membership or leadership: on a one-member cluster they only make every later write wait for a
/// quorum that never comes, which ends the run's usefulness, not its correctness.
const GATEWAY_PATHS: &[&str] = &[
    "/v3/kv/range",
    "/v3/kv/put",
    "/v3/kv/deleterange",
    "/v3/kv/txn",
    "/v3/kv/compaction",
    "/v3/watch",
    "/v3/lease/grant",
    "/v3/lease/revoke",
    "/v3/kv/lease/revoke",
    "/v3/lease/keepalive",
    "/v3/lease/timetolive",
    "/v3/kv/lease/timetolive",
    "/v3/lease/leases",
    "/v3/kv/lease/leases",
    "/v3/cluster/member/list",
    "/v3/maintenance/alarm",
    "/v3/maintenance/status",
    "/v3/maintenance/defragment",
    "/v3/maintenance/hash",
    "/v3/maintenance/hashkv",
    "/v3/maintenance/snapshot",
    "/v3/maintenance/downgrade",
    "/v3/auth/status",
    "/v3/auth/authenticate",
    "/v3/auth/user/add",
    "/v3/auth/user/get",
    "/v3/auth/user/list",
    "/v3/auth/role/list",
    "/health",
    "/version",
    "/metrics",
    "/v3/nope",
];
const GATEWAY_REFUSED: &[&str] = &[
    "/v3/cluster/member/add",
    "/v3/cluster/member/remove",
    "/v3/cluster/member/update",
    "/v3/cluster/member/promote",
    "/v3/maintenance/transfer-leadership",
    "/v3/auth/enable",
];
const GATEWAY_FIELDS: &[&str] = &[
    "key",
    "range_end",
    "value",
    "lease",
    "prev_kv",
    "ignore_value",
    "ignore_lease",
    "limit",
    "revision",
    "sort_order",
    "sort_target",
    "serializable",
    "keys_only",
    "count_only",
    "min_mod_revision",
    "max_mod_revision",
    "min_create_revision",
    "max_create_revision",
    "compare",
    "success",
    "failure",
    "request_put",
    "request_range",
    "request_delete_range",
    "request_txn",
    "result",
    "target",
    "version",
    "create_revision",
    "mod_revision",
    "physical",
    "create_request",
    "cancel_request",
    "progress_request",
    "watch_id",
    "start_revision",
    "progress_notify",
    "filters",
    "fragment",
    "TTL",
    "ID",
    "keys",
    "action",
    "memberID",
    "alarm",
    "name",
    "password",
];

/// The REST API target.
pub fn rest(data: &[u8]) {
    let s = shared();
    let Some(req) = request(data, REST_PATHS, REST_FIELDS) else {
        return;
    };
    let router = mini_etcd::api::rest::router(s.server.clone());
    send_and_check(router, req, check_response);
}

/// The client port's router (gRPC, JSON gateway, `/health` ...) with HTTP/1.1 requests.
pub fn gateway(data: &[u8]) {
    let s = shared();
    let Some(req) = request(data, GATEWAY_PATHS, GATEWAY_FIELDS) else {
        return;
    };
    if GATEWAY_REFUSED.iter().any(|p| req.uri().path() == *p) {
        return;
    }
    let router = mini_etcd::fuzzing::client_router(s.server.clone());
    send_and_check(router, req, check_response);
}

async fn check_response(resp: Response<Body>) {
    let status = resp.status();
    assert!(
        status.as_u16() >= 100 && status.as_u16() < 600,
        "status {status}"
    );
    let json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = resp.into_body().collect().await;
    let Ok(body) = body else {
        return;
    };
    let bytes = body.to_bytes();
    if status.is_server_error() && std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!("{status}: {}", String::from_utf8_lossy(&bytes));
    }
    if json && status != StatusCode::NO_CONTENT {
        // One JSON value, or a stream of them (the gateway's streaming calls).
        for v in serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>() {
            if let Err(e) = v {
                panic!(
                    "a {status} JSON response is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
}

/// The request an input describes; `None` for one no HTTP/1.1 parser would hand to a router.
fn request(data: &[u8], paths: &[&str], fields: &[&str]) -> Option<Request<Body>> {
    if data.first() == Some(&0) {
        return structured(&data[1..], paths, fields).ok();
    }
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next()?;
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (&b"GET"[..], first),
    };
    let method = Method::from_bytes(method).ok()?;
    let mut builder = Request::builder().method(method).uri(uri(target));
    for line in lines {
        let Some(i) = find(line, b": ") else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(&line[i + 2..]),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    builder.body(Body::from(body.to_vec())).ok()
}

/// A request target with every byte a URI may not hold percent-encoded, as a client would send it.
fn uri(target: &[u8]) -> String {
    let mut out = String::with_capacity(target.len() + 1);
    if target.first() != Some(&b'/') {
        out.push('/');
    }
    for &b in target {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | b'#'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request built by `arbitrary` from known paths, parameters and fields.
fn structured(data: &[u8], paths: &[&str], fields: &[&str]) -> arbitrary::Result<Request<Body>> {
    let mut u = Unstructured::new(data);
    let method = u
        .choose(&[Method::GET, Method::POST, Method::DELETE, Method::PUT])?
        .clone();
    let path = *u.choose(paths)?;
    let mut target = path.to_string();
    let params = u.int_in_range(0..=4)?;
    for i in 0..params {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(u.choose(fields)?);
        target.push('=');
        let v = scalar(&mut u)?;
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        target.push_str(
            &uri(v.as_bytes())
                .trim_start_matches('/')
                .replace('&', "%26"),
        );
    }
    let body = if u.arbitrary()? {
        let v = object(&mut u, fields, 0)?;
        serde_json::to_vec(&v).unwrap_or_default()
    } else {
        Vec::new()
    };
    Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|_| arbitrary::Error::IncorrectFormat)
}

fn scalar(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Value::from(u.arbitrary::<i64>()?),
        1 => Value::from(u.int_in_range(-2i64..=10)?),
        2 => Value::from(u.arbitrary::<bool>()?),
        3 => Value::from(u.arbitrary::<String>()?),
        // base64 of arbitrary bytes: what the gateway's bytes fields hold.
        4 => Value::from(base64(&u.arbitrary::<Vec<u8>>()?)),
        5 => Value::from(u.int_in_range(-2i64..=10)?.to_string()),
        _ => Value::Null,
    })
}

fn object(u: &mut Unstructured<'_>, fields: &[&str], depth: u32) -> arbitrary::Result<Value> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let name = (*u.choose(fields)?).to_string();
        let v = match u.int_in_range(0..=5)? {
            0 if depth < 3 => object(u, fields, depth + 1)?,
            1 if depth < 3 => {
                let n = u.int_in_range(0..=3)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(object(u, fields, depth + 1)?);
                }
                Value::Array(items)
            }
            _ => scalar(u)?,
        };
        m.insert(name, v);
    }
    Ok(Value::Object(m))
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
