//! etcd compatibility: the JSON gateway (grpc-gateway) on the client port, over plain HTTP/1.1.
//!
//! Shapes observed on etcd 3.4.23 (`COMPAT_REFERENCE_ETCD=/usr/bin/etcd` re-checks them): bytes fields are
//! base64, 64-bit integers are JSON strings, fields at their default value are left out, errors are
//! `{"error", "message", "code"}` with the gRPC code and an HTTP status mapped from it, and `/v3/watch` is a
//! chunked stream of `{"result": WatchResponse}` objects, one per line.

mod common;
mod compat;

use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};

use common::Server;
use compat::start;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// POSTs a JSON body to `path` on the client port; returns status and parsed body.
async fn post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}{path}", server.client_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(common::REQUEST_BOUND)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: body is not JSON ({e}): {status} {text:?}"));
    (status, v)
}

/// A full header, as etcd's gateway writes it: ids and numbers as strings.
fn assert_gw_header(what: &str, v: &Value, revision: i64) {
    let h = &v["header"];
    let nonzero = |f: &str| {
        h[f].as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n != 0)
    };
    assert!(nonzero("cluster_id"), "{what}: cluster_id in {v}");
    assert!(nonzero("member_id"), "{what}: member_id in {v}");
    assert!(nonzero("raft_term"), "{what}: raft_term in {v}");
    assert_eq!(
        h["revision"],
        revision.to_string(),
        "{what}: revision in {v}"
    );
}

/// The error contract: HTTP `status`, body `{"error": msg, "message": msg, "code": code}`.
fn assert_gw_error(what: &str, got: (u16, Value), status: u16, code: i64, msg: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{what}: HTTP status, body {v}");
    assert_eq!(v["code"], code, "{what}: {v}");
    assert_eq!(v["error"], msg, "{what}: {v}");
    assert_eq!(v["message"], msg, "{what}: {v}");
}

#[tokio::test]
async fn gw_put_range_delete_txn() {
    let (server, _dir) = start(&[]).await;
    let body = json!({"key": b64("gk"), "value": b64("v")}).to_string();
    let (s, v) = post(&server, "/v3/kv/put", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_gw_header("put", &v, 2);

    let (s, v) = post(
        &server,
        "/v3/kv/range",
        &json!({"key": b64("gk")}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_gw_header("range", &v, 2);
    assert_eq!(v["count"], "1");
    assert_eq!(
        v["kvs"][0],
        json!({"key": b64("gk"), "create_revision": "2", "mod_revision": "2", "version": "1", "value": b64("v")})
    );

    // An empty range: no kvs field, no count field (defaults are left out).
    let (s, v) = post(
        &server,
        "/v3/kv/range",
        &json!({"key": b64("none")}).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v.get("kvs").is_none() && v.get("count").is_none(), "{v}");

    // Prefix range: range_end is the key with its last byte incremented.
    post(
        &server,
        "/v3/kv/put",
        &json!({"key": b64("gl"), "value": b64("w")}).to_string(),
    )
    .await;
    let (_, v) = post(
        &server,
        "/v3/kv/range",
        &json!({"key": b64("g"), "range_end": b64("h"), "keys_only": true}).to_string(),
    )
    .await;
    assert_eq!(v["count"], "2");
    assert!(v["kvs"][0].get("value").is_none(), "keys_only: {v}");

    let (_, v) = post(
        &server,
        "/v3/kv/txn",
        &json!({
            "compare": [{"key": b64("gk"), "target": "VERSION", "result": "EQUAL", "version": "1"}],
            "success": [{"request_range": {"key": b64("gk")}}],
            "failure": [{"request_put": {"key": b64("gk"), "value": b64("x")}}],
        })
        .to_string(),
    )
    .await;
    assert_eq!(v["succeeded"], true, "{v}");
    assert_eq!(v["responses"][0]["response_range"]["count"], "1", "{v}");
    // The nested header carries only the revision.
    assert_eq!(
        v["responses"][0]["response_range"]["header"],
        json!({"revision": "3"})
    );

    let (s, v) = post(
        &server,
        "/v3/kv/deleterange",
        &json!({"key": b64("gk"), "prev_kv": true}).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert_gw_header("deleterange", &v, 4);
    assert_eq!(v["deleted"], "1");
    assert_eq!(v["prev_kvs"][0]["value"], b64("v"));

    let (s, v) = post(&server, "/v3/maintenance/status", "{}").await;
    assert_eq!(s, 200);
    assert!(
        v["version"].as_str().is_some_and(|s| s.starts_with("3.")),
        "{v}"
    );
    assert_eq!(v["leader"], v["header"]["member_id"]);
}

#[tokio::test]
async fn gw_errors() {
    let (server, _dir) = start(&[]).await;
    // Bad base64: 400 with gRPC code 3 (InvalidArgument). etcd's message comes from Go's decoder
    // ("illegal base64 data at input byte 0"), so only the shape is asserted.
    let (s, v) = post(
        &server,
        "/v3/kv/put",
        &json!({"key": "!!!", "value": b64("v")}).to_string(),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], 3, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["error"], v["message"]);

    // Not JSON at all: 400, code 3.
    let (s, v) = post(&server, "/v3/kv/range", "notjson").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], 3, "{v}");

    assert_gw_error(
        "empty key",
        post(
            &server,
            "/v3/kv/put",
            &json!({"key": "", "value": b64("v")}).to_string(),
        )
        .await,
        400,
        3,
        "etcdserver: key is not provided",
    );
    // OutOfRange (11) maps to 400 as well.
    assert_gw_error(
        "future revision",
        post(
            &server,
            "/v3/kv/range",
            &json!({"key": b64("k"), "revision": "99"}).to_string(),
        )
        .await,
        400,
        11,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // NotFound (5) maps to 404.
    assert_gw_error(
        "unknown lease",
        post(
            &server,
            "/v3/lease/revoke",
            &json!({"ID": "4660"}).to_string(),
        )
        .await,
        404,
        5,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn gw_version_and_health() {
    let (server, _dir) = start(&[]).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/version", server.client_url()))
        .timeout(common::REQUEST_BOUND)
        .send()
        .await
        .expect("GET /version");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("version JSON");
    for field in ["etcdserver", "etcdcluster"] {
        let s = v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {v}"));
        let parts: Vec<&str> = s.split('.').collect();
        assert!(
            parts.len() == 3 && parts[0] == "3" && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "{field} = {s:?} is not 3.x.y"
        );
    }

    let resp = client
        .get(format!("{}/health", server.client_url()))
        .timeout(common::REQUEST_BOUND)
        .send()
        .await
        .expect("GET /health");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("health JSON");
    // etcd 3.4: {"health":"true"} (a string).
    assert_eq!(v["health"], "true", "{v}");
}

#[tokio::test]
async fn gw_watch_stream() {
    let (server, _dir) = start(&[]).await;
    post(
        &server,
        "/v3/kv/put",
        &json!({"key": b64("wk"), "value": b64("1")}).to_string(),
    )
    .await; // 2
    post(
        &server,
        "/v3/kv/deleterange",
        &json!({"key": b64("wk")}).to_string(),
    )
    .await; // 3

    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v3/watch", server.client_url()))
        .body(json!({"create_request": {"key": b64("wk"), "start_revision": "2"}}).to_string())
        .send()
        .await
        .expect("POST /v3/watch");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();

    // Reads newline-separated JSON objects until `n` have arrived (bounded).
    let mut buf = Vec::new();
    let mut objects: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live_sent = false;
    let mut events: Vec<Value> = Vec::new();
    while events.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(other) => panic!("watch stream ended: {other:?}; objects so far {objects:?}"),
            Err(_) => panic!("watch stream: no 3 events within 30s; objects {objects:?}"),
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {text:?}"));
            let result = v
                .get("result")
                .unwrap_or_else(|| panic!("watch line without `result`: {v}"))
                .clone();
            if objects.is_empty() {
                assert_eq!(result["created"], true, "first object is `created`: {v}");
            }
            if let Some(evs) = result.get("events").and_then(Value::as_array) {
                events.extend(evs.iter().cloned());
            }
            objects.push(v);
        }
        if events.len() == 2 && !live_sent {
            post(
                &server,
                "/v3/kv/put",
                &json!({"key": b64("wk"), "value": b64("2")}).to_string(),
            )
            .await; // 4
            live_sent = true;
        }
    }
    // PUT is the default event type, so etcd leaves `type` out; DELETE is spelled out.
    assert!(events[0].get("type").is_none(), "{events:?}");
    assert_eq!(events[0]["kv"]["value"], b64("1"));
    assert_eq!(events[0]["kv"]["mod_revision"], "2");
    assert_eq!(events[1]["type"], "DELETE");
    assert_eq!(events[1]["kv"]["mod_revision"], "3");
    assert_eq!(events[2]["kv"]["value"], b64("2"));
    assert_eq!(events[2]["kv"]["version"], "1");
}
