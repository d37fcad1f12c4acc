//! `/metrics`: etcd's gRPC request counters (go-grpc-prometheus's `grpc_server_*` series, as etcd
//! 3.4.23 prints them) and our REST request counter.
//!
//! The gRPC tests are compatibility tests: `COMPAT_REFERENCE_ETCD=/usr/bin/etcd` runs them against
//! etcd itself (see `common::reference_etcd`), which prints the same series, plus its
//! `grpc.health.v1.Health` service, which mini-etcd does not serve.

mod common;
mod compat;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use etcd_client::GetOptions;

use common::Server;
use compat::{bounded, connect, eventually, ok, start, status};

/// The methods etcd 3.4.23 prints at zero before any call (`grpc_service grpc_method grpc_type`),
/// as `curl /metrics` showed them on a fresh etcd: every method of the services registered before
/// go-grpc-prometheus's `Register`, so not Lock, Election, and no 3.5 method.
const ETCD_3_4_METHODS: &str = "
etcdserverpb.Auth AuthDisable unary
etcdserverpb.Auth AuthEnable unary
etcdserverpb.Auth Authenticate unary
etcdserverpb.Auth RoleAdd unary
etcdserverpb.Auth RoleDelete unary
etcdserverpb.Auth RoleGet unary
etcdserverpb.Auth RoleGrantPermission unary
etcdserverpb.Auth RoleList unary
etcdserverpb.Auth RoleRevokePermission unary
etcdserverpb.Auth UserAdd unary
etcdserverpb.Auth UserChangePassword unary
etcdserverpb.Auth UserDelete unary
etcdserverpb.Auth UserGet unary
etcdserverpb.Auth UserGrantRole unary
etcdserverpb.Auth UserList unary
etcdserverpb.Auth UserRevokeRole unary
etcdserverpb.Cluster MemberAdd unary
etcdserverpb.Cluster MemberList unary
etcdserverpb.Cluster MemberPromote unary
etcdserverpb.Cluster MemberRemove unary
etcdserverpb.Cluster MemberUpdate unary
etcdserverpb.KV Compact unary
etcdserverpb.KV DeleteRange unary
etcdserverpb.KV Put unary
etcdserverpb.KV Range unary
etcdserverpb.KV Txn unary
etcdserverpb.Lease LeaseGrant unary
etcdserverpb.Lease LeaseKeepAlive bidi_stream
etcdserverpb.Lease LeaseLeases unary
etcdserverpb.Lease LeaseRevoke unary
etcdserverpb.Lease LeaseTimeToLive unary
etcdserverpb.Maintenance Alarm unary
etcdserverpb.Maintenance Defragment unary
etcdserverpb.Maintenance Hash unary
etcdserverpb.Maintenance HashKV unary
etcdserverpb.Maintenance MoveLeader unary
etcdserverpb.Maintenance Snapshot server_stream
etcdserverpb.Maintenance Status unary
etcdserverpb.Watch Watch bidi_stream
";

/// etcd's health service, which etcd registers too and mini-etcd does not serve.
const ETCD_HEALTH_METHODS: &str = "
grpc.health.v1.Health Check unary
grpc.health.v1.Health Watch server_stream
";

/// grpc-go's code names, as `grpc_code` carries them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The four families, in the order Prometheus prints them (by name), with etcd's HELP texts.
const FAMILIES: [(&str, &str); 4] = [
    (
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    ),
    (
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
    ),
    (
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
    ),
    (
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
    ),
];

/// The labels of one method, in Prometheus's order (by name).
fn method_labels(service: &str, method: &str, kind: &str) -> String {
    format!("grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"")
}

/// The `grpc_server_*` block a server prints before any call: every family's HELP and TYPE, then
/// its series at zero, sorted as Prometheus sorts them.
fn expected_at_start() -> Vec<String> {
    let mut methods: Vec<(&str, &str, &str)> = ETCD_3_4_METHODS
        .lines()
        .chain(if common::reference_etcd().is_some() {
            ETCD_HEALTH_METHODS.lines()
        } else {
            "".lines()
        })
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[1], f[2])
        })
        .collect();
    methods.sort();
    let mut out = Vec::new();
    for (name, help) in FAMILIES {
        out.push(format!("# HELP {name} {help}"));
        out.push(format!("# TYPE {name} counter"));
        let mut series: Vec<String> = Vec::new();
        for &(service, method, kind) in &methods {
            let labels = method_labels(service, method, kind);
            if name == "grpc_server_handled_total" {
                for code in CODES {
                    series.push(format!("{name}{{grpc_code=\"{code}\",{labels}}} 0"));
                }
            } else {
                series.push(format!("{name}{{{labels}}} 0"));
            }
        }
        series.sort();
        out.extend(series);
    }
    out
}

/// `/metrics` of the client port (where etcd serves it).
async fn metrics(server: &Server) -> String {
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", server.client_url()))
        .timeout(common::REQUEST_BOUND)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e:?}"));
    assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
    resp.text().await.expect("/metrics body")
}

/// The lines of `text` that belong to the `prefix*` families, comments included.
fn block(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.starts_with(prefix)
                || l.strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "))
                    .is_some_and(|rest| rest.starts_with(prefix))
        })
        .map(str::to_string)
        .collect()
}

/// The series of the `prefix*` families whose value is not zero: `name{labels}` to value.
fn nonzero(text: &str, prefix: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: u64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{l:?}: value is not a counter ({e})"));
            (value != 0).then(|| (series.to_string(), value))
        })
        .collect()
}

/// `(series, value)` pairs for the four families of one method: `started`, `received`, `sent`, and
/// `handled` by code name.
fn method_counts(
    service: &str,
    method: &str,
    kind: &str,
    started: u64,
    received: u64,
    sent: u64,
    handled: &[(&str, u64)],
) -> Vec<(String, u64)> {
    let labels = method_labels(service, method, kind);
    let mut out = vec![
        (format!("grpc_server_started_total{{{labels}}}"), started),
        (
            format!("grpc_server_msg_received_total{{{labels}}}"),
            received,
        ),
        (format!("grpc_server_msg_sent_total{{{labels}}}"), sent),
    ];
    for &(code, n) in handled {
        out.push((
            format!("grpc_server_handled_total{{grpc_code=\"{code}\",{labels}}}"),
            n,
        ));
    }
    out.retain(|(_, n)| *n != 0);
    out
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// POSTs `body` to the JSON gateway on the client port; returns the HTTP status.
async fn gateway(server: &Server, path: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}{path}", server.client_url()))
        .body(body.to_string())
        .timeout(common::REQUEST_BOUND)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn grpc_series_at_start_are_etcds() {
    let (server, _dir) = start(&[]).await;
    let got = block(&metrics(&server).await, "grpc_server_");
    let want = expected_at_start();
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
        panic!(
            "grpc_server_* block before any call differs from etcd 3.4's ({} lines, want {}):\n\
             missing {missing:#?}\nextra {extra:#?}",
            got.len(),
            want.len()
        );
    }
}

/// Known calls on every path a call takes (the lean KV path, tonic's services, a watch stream, the
/// JSON gateway) and the exact counters they leave.
#[tokio::test]
async fn grpc_counters_count_known_calls() {
    const PUTS: u64 = 5;
    const EVENTS: u64 = 3;
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;

    // Unary KV calls: PUTS puts (revisions 2..=6), a range, a compaction, and a range at a
    // compacted revision (OutOfRange).
    for i in 0..PUTS {
        ok("put", c.put(format!("k{i}"), "v", None).await);
    }
    ok("get", c.get("k0", None).await);
    ok("compact", c.compact(3, None).await);
    let s = status(
        "get at a compacted revision",
        c.get("k0", Some(GetOptions::new().with_revision(1))).await,
    );
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");

    // Other services: one that answers, one that fails (a lease nobody granted).
    ok("member list", c.member_list().await);
    let s = status("revoke an unknown lease", c.lease_revoke(12345).await);
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");

    // A watch stream: the create request in, `created` and one response per event out; dropped
    // by the client, which cancels it.
    {
        let mut w = ok("watch", bounded("watch", c.watch("w", None)).await);
        let created = ok("created", bounded("created", w.message()).await).expect("created");
        assert!(created.created(), "{created:?}");
        for i in 0..EVENTS {
            ok("put w", c.put("w", format!("{i}"), None).await);
            let r = ok("event", bounded("event", w.message()).await).expect("an event");
            assert_eq!(r.events().len(), 1, "one event per response: {r:?}");
        }
    }

    // The JSON gateway: a put and a range, counted as the gRPC methods they call.
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("g"), b64("v"));
    assert_eq!(gateway(&server, "/v3/kv/put", &put).await, 200);
    let range = format!(r#"{{"key":"{}"}}"#, b64("g"));
    assert_eq!(gateway(&server, "/v3/kv/range", &range).await, 200);

    // The watch stream ends once the server has seen the client go.
    let watch_handled = eventually(
        "the watch stream is counted as handled",
        Duration::from_secs(10),
        || async {
            let text = metrics(&server).await;
            let handled: Vec<(String, u64)> = nonzero(&text, "grpc_server_handled_total")
                .into_iter()
                .filter(|(s, _)| s.contains("grpc_method=\"Watch\""))
                .collect();
            (!handled.is_empty()).then_some(handled)
        },
    )
    .await;
    // etcd itself answers a cancelled watch either Canceled or, when its own context wins the
    // race, Unavailable ("no leader"); mini-etcd counts the client's reset as Canceled.
    let watch_code = watch_handled[0]
        .0
        .split('"')
        .nth(1)
        .expect("grpc_code")
        .to_string();
    if common::reference_etcd().is_none() {
        assert_eq!(watch_code, "Canceled", "{watch_handled:?}");
    }

    let kv = "etcdserverpb.KV";
    let puts = PUTS + EVENTS + 1;
    let want: BTreeMap<String, u64> = [
        method_counts(kv, "Put", "unary", puts, puts, puts, &[("OK", puts)]),
        method_counts(
            kv,
            "Range",
            "unary",
            3,
            3,
            2,
            &[("OK", 2), ("OutOfRange", 1)],
        ),
        method_counts(kv, "Compact", "unary", 1, 1, 1, &[("OK", 1)]),
        method_counts(
            "etcdserverpb.Cluster",
            "MemberList",
            "unary",
            1,
            1,
            1,
            &[("OK", 1)],
        ),
        method_counts(
            "etcdserverpb.Lease",
            "LeaseRevoke",
            "unary",
            1,
            1,
            0,
            &[("NotFound", 1)],
        ),
        method_counts(
            "etcdserverpb.Watch",
            "Watch",
            "bidi_stream",
            1,
            1,
            1 + EVENTS,
            &[(&watch_code, 1)],
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let got = nonzero(&metrics(&server).await, "grpc_server_");
    assert_eq!(got, want, "non-zero grpc_server_* series");
}

/// Lock and Election are counted, but, as in etcd 3.4, printed only once used, and only the codes
/// seen.
#[tokio::test]
async fn lock_and_election_series_appear_once_used() {
    let (server, _dir) = start(&[]).await;
    let before = metrics(&server).await;
    assert!(
        !before.contains("v3lockpb") && !before.contains("v3electionpb"),
        "no Lock or Election series before a call"
    );
    // No campaign: "election: no leader" (Unknown in etcd 3.4).
    let body = format!(r#"{{"name":"{}"}}"#, b64("none"));
    let code = gateway(&server, "/v3/election/leader", &body).await;
    assert_ne!(code, 200, "leader of an election nobody campaigned in");
    let got = nonzero(&metrics(&server).await, "grpc_server_");
    let election: BTreeMap<String, u64> = got
        .into_iter()
        .filter(|(s, _)| s.contains("v3electionpb"))
        .collect();
    let want: BTreeMap<String, u64> = method_counts(
        "v3electionpb.Election",
        "Leader",
        "unary",
        1,
        1,
        0,
        &[("Unknown", 1)],
    )
    .into_iter()
    .collect();
    assert_eq!(election, want);
    let text = metrics(&server).await;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("v3electionpb"))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "started, received, handled Unknown: {lines:#?}"
    );
}

/// `mini_etcd_rest_requests_total{path,code}`: every request on the REST listener, by route (the
/// fixed ones, everything else `other`) and HTTP status.
#[tokio::test]
async fn rest_requests_by_route_and_code() {
    if common::reference_etcd().is_some() {
        return; // the seed's REST API is ours
    }
    let (server, _dir) = start(&[]).await;
    let rest = server.rest();
    rest.put("a", "1").await;
    rest.put("b", "2").await;
    assert!(rest.get("a").await.is_some());
    assert!(rest.get("missing").await.is_none());
    let wrong_method = rest.call(reqwest::Method::GET, "/put", None).await;
    assert_eq!(wrong_method.status, 405);
    let unknown = rest.call(reqwest::Method::GET, "/nope", None).await;
    assert_eq!(unknown.status, 404);
    let first = rest.call(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(first.status, 200);
    // The harness polled /health until the server answered: that many, plus this one.
    let polled = nonzero(
        &first.body,
        "mini_etcd_rest_requests_total{path=\"/health\"",
    )
    .into_values()
    .sum::<u64>();
    assert!(polled >= 1, "the harness's /health polls are counted");
    let health = rest.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health.status, 200);
    assert!(
        !first
            .body
            .contains("mini_etcd_rest_requests_total{path=\"/metrics\""),
        "a request is counted once answered, so not in its own answer"
    );
    // A gateway call on the REST port is `other` here (and a Range for the gRPC counters).
    let body = format!(r#"{{"key":"{}"}}"#, b64("a"));
    let range = rest
        .call(
            reqwest::Method::POST,
            "/v3/kv/range",
            Some(("application/json", body.as_bytes())),
        )
        .await;
    assert_eq!(range.status, 200);
    // A watch poll counts with the status it answered (204: nothing within its timeout).
    let watch = rest.watch("key=a&timeout=0", Duration::from_secs(20)).await;

    let watch_code = watch.status.to_string();

    let text = rest.call(reqwest::Method::GET, "/metrics", None).await.body;
    let name = "mini_etcd_rest_requests_total";
    let got = nonzero(&text, name);
    let want: BTreeMap<String, u64> = [
        ("/put", "200", 2),
        ("/put", "405", 1),
        ("/get", "200", 1),
        ("/get", "404", 1),
        ("/health", "200", polled + 1),
        ("/metrics", "200", 1),
        ("other", "404", 1),
        ("other", "200", 1),
        ("/watch", watch_code.as_str(), 1),
    ]
    .into_iter()
    .map(|(path, code, n)| (format!("{name}{{path=\"{path}\",code=\"{code}\"}}"), n))
    .collect();
    assert_eq!(got, want);
    assert!(
        text.contains(&format!("# TYPE {name} counter\n")),
        "TYPE line:\n{}",
        common::tail(&text, 2000)
    );
}
