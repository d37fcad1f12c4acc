//! The REST API contract, end to end: the seed README's curl scenarios exactly as written, then revisions,
//! history reads, compaction and every kind of bad input. Each test starts its own server on a fresh data
//! directory, so revisions are only compared relative to each other, never to absolute numbers.

mod common;

use std::time::Duration;

use common::{as_i64, as_str, Resp, Server};
use reqwest::Method;
use serde_json::Value;

/// What `curl -d` sends: the seed's clients put JSON in a form-typed body.
const CURL_FORM: &str = "application/x-www-form-urlencoded";

async fn fresh(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), extra).await;
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_readme_curl_scenarios() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();

    // curl -X POST -d '{"key": "cloud", "value": "native"}' http://localhost:8080/put
    let resp = rest
        .call(
            Method::POST,
            "/put",
            Some((CURL_FORM, br#"{"key": "cloud", "value": "native"}"#)),
        )
        .await;
    assert_eq!(resp.status, 200, "seed put: {:?}", resp.body);
    let put = resp.json();
    assert_eq!(as_str(&put, "key"), "cloud");
    assert_eq!(as_str(&put, "value"), "native");
    let put_rev = as_i64(&put, "revision");

    // curl "http://localhost:8080/get?key=cloud"
    let resp = rest.call(Method::GET, "/get?key=cloud", None).await;
    assert_eq!(resp.status, 200, "seed get: {:?}", resp.body);
    let got = resp.json();
    assert_eq!(as_str(&got, "key"), "cloud");
    assert_eq!(as_str(&got, "value"), "native");
    assert_eq!(as_i64(&got, "create_revision"), put_rev);
    assert_eq!(as_i64(&got, "mod_revision"), put_rev);
    assert_eq!(as_i64(&got, "version"), 1);

    // curl -X DELETE "http://localhost:8080/delete?key=cloud"
    let resp = rest.call(Method::DELETE, "/delete?key=cloud", None).await;
    assert_eq!(resp.status, 200, "seed DELETE: {:?}", resp.body);
    let del = resp.json();
    assert_eq!(as_i64(&del, "deleted"), 1);
    assert_eq!(as_i64(&del, "revision"), put_rev + 1);
    rest.get_resp("cloud")
        .await
        .assert_error(404, "get after DELETE");

    // Compatibility mode: curl -X POST "http://localhost:8080/delete?key=cloud"
    let resp = rest
        .call(
            Method::POST,
            "/put",
            Some((CURL_FORM, br#"{"key": "cloud", "value": "native"}"#)),
        )
        .await;
    assert_eq!(resp.status, 200, "re-put: {:?}", resp.body);
    let resp = rest.call(Method::POST, "/delete?key=cloud", None).await;
    assert_eq!(resp.status, 200, "seed POST delete: {:?}", resp.body);
    assert_eq!(as_i64(&resp.json(), "deleted"), 1);
    rest.get_resp("cloud")
        .await
        .assert_error(404, "get after POST delete");

    // Terminal A: curl -v "http://localhost:8080/watch?key=status"
    let watcher = {
        let rest = rest.clone();
        tokio::spawn(async move { rest.watch("key=status", Duration::from_secs(90)).await })
    };
    // Terminal B starts only once the watch is registered, so the event cannot be missed.
    rest.wait_watchers(">= 1", Duration::from_secs(20), |n| n >= 1)
        .await;
    // Terminal B: curl -X POST -d '{"key": "status", "value": "ready"}' http://localhost:8080/put
    let resp = rest
        .call(
            Method::POST,
            "/put",
            Some((CURL_FORM, br#"{"key": "status", "value": "ready"}"#)),
        )
        .await;
    assert_eq!(resp.status, 200, "seed put status: {:?}", resp.body);
    let status_rev = as_i64(&resp.json(), "revision");

    let resp = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watch was not released by the put within 30 s")
        .expect("watch task panicked");
    assert_eq!(resp.status, 200, "watch: {:?}", resp.body);
    let body = resp.json();
    let events = body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {body}"));
    assert_eq!(events.len(), 1, "one event expected: {body}");
    assert_eq!(as_str(&events[0], "type"), "PUT");
    assert_eq!(as_str(&events[0], "key"), "status");
    assert_eq!(as_str(&events[0], "value"), "ready");
    assert_eq!(as_i64(&events[0], "mod_revision"), status_rev);
    assert!(
        as_i64(&body, "revision") >= status_rev,
        "watch revision: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_versions() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();

    // Each put creates exactly one new store revision.
    let r1 = rest.put("a", "1").await;
    let r2 = rest.put("b", "1").await;
    let r3 = rest.put("a", "2").await;
    let r4 = rest.put("a", "3").await;
    assert_eq!(
        (r2, r3, r4),
        (r1 + 1, r1 + 2, r1 + 3),
        "revision must increase by 1 per put"
    );

    let a = rest.get("a").await.expect("a exists");
    assert_eq!(a.value, "3");
    assert_eq!(a.create_revision, r1);
    assert_eq!(a.mod_revision, r4);
    assert_eq!(a.version, 3);

    let b = rest.get("b").await.expect("b exists");
    assert_eq!((b.create_revision, b.mod_revision, b.version), (r2, r2, 1));

    // Delete, then recreate: a new generation with a new create_revision and version 1.
    let del = rest.delete("a").await;
    assert_eq!(del.status, 200, "delete a: {:?}", del.body);
    let del_rev = as_i64(&del.json(), "revision");
    assert_eq!(del_rev, r4 + 1, "a delete creates one revision");
    assert_eq!(as_i64(&del.json(), "deleted"), 1);
    assert_eq!(rest.get("a").await, None);

    let r6 = rest.put("a", "again").await;
    assert_eq!(r6, del_rev + 1);
    let a = rest.get("a").await.expect("a recreated");
    assert_eq!(a.value, "again");
    assert_eq!(
        a.create_revision, r6,
        "recreated key gets a new create_revision"
    );
    assert_eq!(a.mod_revision, r6);
    assert_eq!(a.version, 1, "recreated key starts again at version 1");

    // Deleting something that is not there: 404 and no new revision.
    rest.delete("never-was")
        .await
        .assert_error(404, "DELETE missing key");
    rest.delete_post("never-was")
        .await
        .assert_error(404, "POST delete missing key");
    let r7 = rest.put("c", "x").await;
    assert_eq!(r7, r6 + 1, "a delete of nothing must not create a revision");

    // Keys and values with characters that need escaping round-trip.
    let key = "dir/sub key?&=%ü";
    let value = "line1\nline2 \"quoted\" ✓";
    rest.put(key, value).await;
    let kv = rest.get(key).await.expect("escaped key exists");
    assert_eq!(kv.value, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_and_compaction() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();

    let r1 = rest.put("h", "v1").await;
    let r2 = rest.put("h", "v2").await;
    let r3 = rest.put("other", "x").await;
    let del = rest.delete("h").await;
    assert_eq!(del.status, 200);
    let r4 = as_i64(&del.json(), "revision");
    let r5 = rest.put("h", "v3").await;

    let at = |rev| {
        let rest = rest.clone();
        async move { rest.get_at("h", rev).await }
    };
    let kv1 = at(r1).await.expect("h at r1");
    assert_eq!(
        (kv1.value.as_str(), kv1.mod_revision, kv1.version),
        ("v1", r1, 1)
    );
    let kv2 = at(r2).await.expect("h at r2");
    assert_eq!(
        (
            kv2.value.as_str(),
            kv2.create_revision,
            kv2.mod_revision,
            kv2.version
        ),
        ("v2", r1, r2, 2)
    );
    let kv3 = at(r3).await.expect("h at r3 (unchanged since r2)");
    assert_eq!(kv3.value, "v2");
    assert_eq!(at(r4).await, None, "h was deleted at r4");
    let kv5 = at(r5).await.expect("h at r5");
    assert_eq!(
        (kv5.value.as_str(), kv5.create_revision, kv5.version),
        ("v3", r5, 1)
    );
    assert_eq!(
        rest.get_at("other", r2).await,
        None,
        "other did not exist yet at r2"
    );

    // A future revision is a bad request.
    rest.get_at_resp("h", r5 + 100)
        .await
        .assert_error(400, "get at a future revision");

    // Compact at r3: r3 and later stay readable, earlier revisions are gone.
    let resp = rest.compact(r3).await;
    assert_eq!(resp.status, 200, "compact: {:?}", resp.body);
    rest.get_at_resp("h", r1)
        .await
        .assert_error(410, "get below the compacted revision");
    rest.get_at_resp("h", r2)
        .await
        .assert_error(410, "get below the compacted revision");
    let kv3 = rest
        .get_at("h", r3)
        .await
        .expect("h at the compaction revision");
    assert_eq!(kv3.value, "v2");
    let now = rest.get("h").await.expect("h now");
    assert_eq!(now.value, "v3");
    assert_eq!(rest.get("other").await.expect("other now").mod_revision, r3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_version() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();

    let resp = rest.call(Method::GET, "/health", None).await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(
        v.get("health").and_then(Value::as_str),
        Some("true"),
        "/health: {v}"
    );

    let resp = rest.call(Method::GET, "/version", None).await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    for field in ["etcdserver", "etcdcluster"] {
        let s = v.get(field).and_then(Value::as_str);
        assert!(
            s.is_some_and(|s| !s.is_empty()),
            "/version needs a non-empty {field:?}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_json_4xx_never_5xx() {
    let (_dir, server) = fresh(&["--max-request-bytes", "1024"]).await;
    let rest = server.rest();
    let post = |path: &'static str, ct: &'static str, body: &'static [u8]| {
        let rest = rest.clone();
        async move { rest.call(Method::POST, path, Some((ct, body))).await }
    };

    // Malformed JSON, in both content types the seed's clients use.
    for ct in ["application/json", CURL_FORM] {
        post("/put", ct, br#"{"key": "k", "value": "#)
            .await
            .assert_client_error("truncated JSON");
        post("/put", ct, b"key=k&value=v")
            .await
            .assert_client_error("form-encoded body");
        post("/put", ct, b"")
            .await
            .assert_client_error("empty body");
        post("/put", ct, br#"{"key": 5, "value": "v"}"#)
            .await
            .assert_client_error("key of the wrong type");
        post("/put", ct, br#"["k", "v"]"#)
            .await
            .assert_client_error("JSON array");
    }

    // Missing or empty key.
    post("/put", "application/json", br#"{"value": "v"}"#)
        .await
        .assert_error(400, "put without key");
    post("/put", "application/json", br#"{"key": "", "value": "v"}"#)
        .await
        .assert_error(400, "put with empty key");
    rest.call(Method::GET, "/get", None)
        .await
        .assert_error(400, "get without key");
    rest.call(Method::GET, "/get?key=", None)
        .await
        .assert_error(400, "get with empty key");
    rest.call(Method::DELETE, "/delete", None)
        .await
        .assert_error(400, "delete without key");
    rest.call(Method::DELETE, "/delete?key=", None)
        .await
        .assert_error(400, "delete with empty key");
    rest.call(Method::POST, "/delete?key=", None)
        .await
        .assert_error(400, "POST delete with empty key");

    // Over --max-request-bytes.
    let big = serde_json::json!({"key": "big", "value": "x".repeat(4096)}).to_string();
    let resp = rest
        .call(
            Method::POST,
            "/put",
            Some(("application/json", big.as_bytes())),
        )
        .await;
    resp.assert_error(413, "body over --max-request-bytes");
    assert_eq!(
        rest.get("big").await,
        None,
        "a rejected put must not be stored"
    );
    // Just under the limit is fine.
    rest.put("small", &"y".repeat(512)).await;

    // Unknown route and wrong method.
    rest.call(Method::GET, "/nope", None)
        .await
        .assert_error(404, "unknown route");
    rest.call(Method::POST, "/v2/keys/x", None)
        .await
        .assert_error(404, "unknown route");
    rest.call(Method::GET, "/put", None)
        .await
        .assert_error(405, "GET /put");
    rest.call(Method::DELETE, "/put", None)
        .await
        .assert_error(405, "DELETE /put");
    rest.call(Method::POST, "/get?key=small", None)
        .await
        .assert_error(405, "POST /get");
    rest.call(Method::PUT, "/delete?key=small", None)
        .await
        .assert_error(405, "PUT /delete");

    // Bad revisions on reads.
    rest.call(Method::GET, "/get?key=small&rev=abc", None)
        .await
        .assert_client_error("non-numeric rev");

    // The server is still fine and nothing above changed the store.
    let resp: Resp = rest.call(Method::GET, "/health", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(rest.get("small").await.expect("small").version, 1);
}

/// `(le, count)` of every `{name}_bucket` line, in order, and the `_count` value.
fn histogram(text: &str, name: &str) -> (Vec<(String, u64)>, u64) {
    let mut buckets = Vec::new();
    let mut count = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, n) = rest.split_once("\"} ").expect("a bucket line");
            buckets.push((le.to_string(), n.parse().expect("a bucket count")));
        } else if let Some(n) = line.strip_prefix(&format!("{name}_count ")) {
            count = Some(n.parse().expect("a count"));
        }
    }
    (
        buckets,
        count.unwrap_or_else(|| panic!("no {name}_count in:\n{text}")),
    )
}

/// etcd's buckets, cumulative, with `+Inf` equal to the count.
fn assert_etcd_shape(name: &str, buckets: &[(String, u64)], count: u64) {
    let les: Vec<&str> = buckets.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(
        les,
        [
            "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
            "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"
        ],
        "{name}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets are not cumulative: {buckets:?}"
    );
    assert_eq!(
        buckets.last().map(|b| b.1),
        Some(count),
        "{name}: +Inf is the count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_etcds_disk_latency_histograms() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();
    for i in 0..20 {
        rest.put(&format!("m{i}"), "v").await;
    }
    let wal = "etcd_disk_wal_fsync_duration_seconds";
    let commit = "etcd_disk_backend_commit_duration_seconds";
    // The backend commits on its own every 100 ms; wait for one, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let resp = rest.call(Method::GET, "/metrics", None).await;
        assert_eq!(resp.status, 200);
        if histogram(&resp.body, commit).1 > 0 || std::time::Instant::now() > deadline {
            break resp.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (buckets, count) = histogram(&text, wal);
    assert_etcd_shape(wal, &buckets, count);
    // Every put here waited for its own save; the WAL also synced the first snapshot mark.
    let saves = common::parse_gauge(&text, "mini_etcd_wal_fsyncs_total").expect("fsyncs");
    assert!(
        count >= 20 && count as i64 > saves,
        "{count} fsyncs observed, {saves} saves"
    );
    let (buckets, count) = histogram(&text, commit);
    assert_etcd_shape(commit, &buckets, count);
    assert!(count >= 1, "no backend commit within 10 s:\n{text}");
}
