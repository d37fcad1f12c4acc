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

/// One plain-HTTP exchange as the access rules shape it: status, the CORS headers, the body.
#[derive(Debug, PartialEq)]
struct Shaped {
    status: u16,
    cors: Vec<(String, String)>,
    content_type: Option<String>,
    body: String,
}

/// Sends `method path` to `base` with optional `Origin` and `Host` headers, over a raw HTTP/1.1
/// connection (`Connection: close`), so that the `Host` header is exactly the one given (the
/// address itself otherwise).
async fn shaped(
    base: &str,
    method: &str,
    path: &str,
    origin: Option<&str>,
    host: Option<&str>,
) -> Shaped {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let body = if path.starts_with("/v3/") { "{}" } else { "" };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        host.unwrap_or(addr),
        body.len()
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(common::REQUEST_BOUND, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad answer {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut cors: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .cloned()
        .collect();
    cors.sort();
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    Shaped {
        status,
        cors,
        content_type,
        body: body.to_string(),
    }
}

/// `--cors` and `--host-whitelist` answer as etcd 3.4's do: the same CORS headers for an allowed
/// origin, none for another, a preflight answered 200 with no body, and a request naming a host
/// that is not whitelisted refused with 421 and etcd's own text, while gRPC calls pass.
#[tokio::test]
async fn cors_and_host_whitelist_as_etcd() {
    let flags = [
        "--cors=http://a.example:80,http://b.example:81",
        // 127.0.0.1 too, or neither server's start-up health check would be answered.
        "--host-whitelist=localhost,127.0.0.1",
    ];
    let etcd = compat::etcd::Etcd::start_with(&flags).await;
    let (ours, _dir) = start(&flags).await;
    let port_of = |url: &str| url.rsplit(':').next().unwrap_or("").to_string();
    for (name, base) in [("etcd", etcd.url.clone()), ("mini-etcd", ours.client_url())] {
        let local = format!("localhost:{}", port_of(&base));
        let host = Some(local.as_str());
        // Allowed origin: named back, with etcd's methods and headers.
        let got = shaped(
            &base,
            "POST",
            "/v3/maintenance/status",
            Some("http://a.example:80"),
            host,
        )
        .await;
        assert_eq!(got.status, 200, "{name}: {got:?}");
        assert_eq!(
            got.cors,
            vec![
                (
                    "access-control-allow-headers".to_string(),
                    "accept, content-type, authorization".to_string()
                ),
                (
                    "access-control-allow-methods".to_string(),
                    "POST, GET, OPTIONS, PUT, DELETE".to_string()
                ),
                (
                    "access-control-allow-origin".to_string(),
                    "http://a.example:80".to_string()
                ),
            ],
            "{name}"
        );
        // Another origin (the same host without its port is another string): no CORS headers.
        for origin in ["http://c.example:80", "http://a.example"] {
            let got = shaped(&base, "GET", "/health", Some(origin), host).await;
            assert_eq!(got.status, 200, "{name} {origin}: {got:?}");
            assert!(got.cors.is_empty(), "{name} {origin}: {got:?}");
        }
        // A preflight: 200, empty.
        let got = shaped(
            &base,
            "OPTIONS",
            "/v3/kv/put",
            Some("http://b.example:81"),
            host,
        )
        .await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (200, ""),
            "{name}: {got:?}"
        );
        assert_eq!(got.cors.len(), 3, "{name}: {got:?}");
        // A host that is not whitelisted: 421 before anything runs.
        let got = shaped(&base, "POST", "/v3/kv/range", None, Some("evil.example")).await;
        assert_eq!(got.status, 421, "{name}: {got:?}");
        assert_eq!(
            got.content_type.as_deref(),
            Some("text/plain; charset=utf-8"),
            "{name}"
        );
        assert!(
            got.body.contains("etcd --host-whitelist \"evil.example\"")
                && got.body.contains("CVE-2018-5702"),
            "{name}: {got:?}"
        );
        // With a port, on another endpoint: the same refusal, and the same text on both sides,
        // byte for byte.
        let evil = shaped(&base, "GET", "/metrics", None, Some("evil.example:2379")).await;
        assert_eq!(evil.status, 421, "{name}: {evil:?}");
        let etcd_text = shaped(&etcd.url, "GET", "/health", None, Some("evil.example")).await;
        assert_eq!(evil.body, etcd_text.body, "{name}");
    }
    // gRPC is not an HTTP page's business: a call naming a host that is not whitelisted passes.
    let channel = tonic::transport::Endpoint::from_shared(ours.client_url())
        .expect("endpoint")
        .origin("http://evil.example:2379".parse().expect("uri"))
        .connect()
        .await
        .expect("connect");
    let mut kv = mini_etcd::proto::etcdserverpb::kv_client::KvClient::new(channel);
    let put = mini_etcd::proto::etcdserverpb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    compat::bounded("put over gRPC", kv.put(put))
        .await
        .expect("put over gRPC");
    // The REST listener follows the same rules.
    let rest = ours.base_url();
    let got = shaped(&rest, "GET", "/get?key=k", None, Some("evil.example")).await;
    assert_eq!(got.status, 421, "REST: {got:?}");
    let local = format!("localhost:{}", port_of(&rest));
    let got = shaped(
        &rest,
        "GET",
        "/get?key=k",
        Some("http://b.example:81"),
        Some(&local),
    )
    .await;
    assert_eq!(got.status, 200, "REST: {got:?}");
    assert!(
        got.cors
            .iter()
            .any(|(k, v)| k == "access-control-allow-origin" && v == "http://b.example:81"),
        "REST: {got:?}"
    );
}

/// By default (`--cors '*'`, `--host-whitelist '*'`) every origin may read and every host is
/// served, as with etcd: a page on any origin can call the gateway, which is how the console of
/// one member reads the status of the others.
#[tokio::test]
async fn cors_allows_every_origin_by_default() {
    let etcd = compat::etcd::Etcd::start().await;
    let (ours, _dir) = start(&[]).await;
    let mut seen = Vec::new();
    for base in [etcd.url.clone(), ours.client_url(), ours.base_url()] {
        let got = shaped(
            &base,
            "POST",
            "/v3/maintenance/status",
            Some("http://x.example"),
            Some("anything.example"),
        )
        .await;
        assert_eq!(got.status, 200, "{base}: {got:?}");
        let pre = shaped(
            &base,
            "OPTIONS",
            "/v3/maintenance/status",
            Some("http://x.example"),
            None,
        )
        .await;
        assert_eq!(pre.status, 200, "{base}: {pre:?}");
        assert_eq!(got.cors, pre.cors, "{base}");
        seen.push(got.cors);
    }
    assert!(
        seen[0].contains(&("access-control-allow-origin".into(), "*".into())),
        "{seen:?}"
    );
    assert!(seen.iter().all(|c| c == &seen[0]), "{seen:?}");
}
