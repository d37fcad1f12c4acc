//! `/metrics`: Prometheus text exposition of the server's state, written by hand (a dozen gauges and
//! counters and two histograms need no client library). Names follow etcd's where etcd has the same
//! quantity, so existing dashboards find them; ours carry the `mini_etcd_` prefix. Among them are
//! etcd's gRPC request counters (`grpc_server_*`, counted in `crate::api::grpc::stats`) and the
//! REST listener's requests (`mini_etcd_rest_requests_total`, counted in `super::requests`).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::requests::REST;
use crate::api::grpc::stats::{self, GrpcStats, Method, MethodStats};
use crate::histogram::HistogramSnapshot;
use crate::peer::PeerStats;
use crate::server::Server;

/// Renders every metric.
pub async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let s = server.status();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "etcd_server_has_leader",
        "gauge",
        "Whether a leader exists (1) or not (0).",
        u8::from(s.leader != 0).to_string(),
    );
    metric(
        "etcd_server_is_leader",
        "gauge",
        "Whether this member is the leader.",
        u8::from(s.leader == s.member_id).to_string(),
    );
    metric(
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        server
            .shared()
            .leader_changes
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
    );
    metric(
        "etcd_server_slow_read_indexes_total",
        "counter",
        "The total number of pending read indexes not in sync with leader's or timed out read \
         index requests.",
        server
            .shared()
            .slow_read_indexes
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
    );
    metric(
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        server
            .shared()
            .proposals_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
    );
    metric(
        "etcd_server_is_learner",
        "gauge",
        "Whether this member is a learner.",
        u8::from(
            server
                .shared()
                .members
                .member(s.member_id)
                .is_some_and(|m| m.is_learner),
        )
        .to_string(),
    );
    metric(
        "etcd_server_proposals_committed_total",
        "gauge",
        "The index of the last committed proposal.",
        s.committed_index.to_string(),
    );
    metric(
        "etcd_server_proposals_applied_total",
        "gauge",
        "The index of the last applied proposal.",
        s.applied_index.to_string(),
    );
    metric(
        "etcd_server_proposals_pending",
        "gauge",
        "Proposals waiting to be applied.",
        s.pending_proposals.to_string(),
    );
    metric(
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current store revision.",
        s.revision.to_string(),
    );
    metric(
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction.",
        s.compact_revision.to_string(),
    );
    metric(
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the backend file.",
        s.db_size.to_string(),
    );
    metric(
        "mini_etcd_raft_term",
        "gauge",
        "The current Raft term.",
        s.term.to_string(),
    );
    metric(
        "mini_etcd_snapshot_index",
        "gauge",
        "The Raft index of the last snapshot.",
        s.snapshot_index.to_string(),
    );
    metric(
        "mini_etcd_raft_log_first_index",
        "gauge",
        "The first Raft index held in memory; older entries are only in the WAL.",
        s.log_first_index.to_string(),
    );
    metric(
        "mini_etcd_proposals_total",
        "counter",
        "Proposals made by this member.",
        s.proposals.to_string(),
    );
    metric(
        "mini_etcd_wal_fsyncs_total",
        "counter",
        "WAL fsyncs (proposals per fsync shows group commit).",
        s.wal_syncs.to_string(),
    );
    metric(
        "mini_etcd_raft_inline_turns_total",
        "counter",
        "Raft turns run on the connection's thread that proposed them rather than on the Raft thread.",
        s.inline_turns.to_string(),
    );
    metric(
        "mini_etcd_watchers",
        "gauge",
        "Live watchers.",
        s.watchers.to_string(),
    );
    histogram(
        &mut out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &s.wal_fsync_latency,
    );
    histogram(
        &mut out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &s.backend_commit_latency,
    );
    peers(&mut out, &server);
    grpc(&mut out, &stats::GRPC);
    rest_requests(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// etcd's gRPC request counters (go-grpc-prometheus), from [`stats::GRPC`]: four families in name
/// order, each series sorted by its label values, as Prometheus's Go client prints them, so that
/// the block reads as etcd's does. Methods etcd 3.4 pre-registers are printed at zero, every code
/// of them; the others once counted, and only their non-zero series.
fn grpc(out: &mut String, table: &GrpcStats) {
    use std::sync::atomic::Ordering::Relaxed;
    type Family = (&'static str, &'static str, fn(&MethodStats) -> u64);
    let families: [Family; 3] = [
        (
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            |s| s.received.load(Relaxed),
        ),
        (
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            |s| s.sent.load(Relaxed),
        ),
        (
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            |s| s.started.load(Relaxed),
        ),
    ];
    let labels = |m: Method| {
        let i = m.info();
        format!(
            "grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"",
            i.method,
            i.service,
            i.kind.label()
        )
    };
    let mut lines = Vec::new();
    let name = "grpc_server_handled_total";
    for &m in Method::ALL {
        let row = table.row(m);
        for (code, n) in stats::CODE_NAMES.iter().zip(&row.handled) {
            let n = n.load(Relaxed);
            if m.info().preregistered || n != 0 {
                lines.push(format!("{name}{{grpc_code=\"{code}\",{}}} {n}", labels(m)));
            }
        }
    }
    family(
        out,
        name,
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &mut lines,
    );
    for (name, help, get) in families {
        for &m in Method::ALL {
            let n = get(table.row(m));
            if m.info().preregistered || n != 0 {
                lines.push(format!("{name}{{{}}} {n}", labels(m)));
            }
        }
        family(out, name, help, &mut lines);
    }
}

/// Writes a counter family's HELP and TYPE, then `lines` sorted (label values in label order, as
/// Prometheus sorts series: `"` ends a value and sorts before any character a value holds), and
/// empties `lines`.
fn family(out: &mut String, name: &str, help: &str, lines: &mut Vec<String>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    lines.sort_unstable();
    for l in lines.drain(..) {
        out.push_str(&l);
        out.push('\n');
    }
}

/// `mini_etcd_rest_requests_total`: the REST listener's requests by route and status, the
/// non-zero ones.
fn rest_requests(out: &mut String) {
    let name = "mini_etcd_rest_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests the REST API answered, by route and HTTP status."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (route, code, n) in REST.nonzero() {
        let _ = writeln!(
            out,
            "{name}{{path=\"{}\",code=\"{code}\"}} {n}",
            route.label()
        );
    }
}

/// etcd's per-peer network metrics, labelled with the peer's id in hex.
fn peers(out: &mut String, server: &Server) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(t) = server.shared().transport.get() else {
        return;
    };
    let stats = t.stats();
    let me = format!("{:x}", server.shared().member_id);
    type Counter = (
        &'static str,
        &'static str,
        &'static str,
        fn(&PeerStats) -> u64,
    );
    let counters: [Counter; 3] = [
        (
            "etcd_network_peer_sent_bytes_total",
            "To",
            "The total number of bytes sent to peers.",
            |p| p.sent_bytes.load(Relaxed),
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "To",
            "The total number of send failures to peers (batches dropped: queue full or not connected).",
            |p| p.dropped.load(Relaxed),
        ),
        (
            "etcd_network_peer_received_bytes_total",
            "From",
            "The total number of bytes received from peers.",
            |p| p.received_bytes.load(Relaxed),
        ),
    ];
    for (name, label, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (id, p) in &stats {
            let _ = writeln!(out, "{name}{{{label}=\"{id:x}\"}} {}", get(p));
        }
    }
    let name = "etcd_network_active_peers";
    let _ = writeln!(
        out,
        "# HELP {name} The current number of active peer connections."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (id, p) in &stats {
        let _ = writeln!(
            out,
            "{name}{{Local=\"{me}\",Remote=\"{id:x}\"}} {}",
            u8::from(p.active.load(Relaxed))
        );
    }
    let name = "etcd_network_peer_round_trip_time_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round-Trip-Time histogram between peers."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (id, p) in &stats {
        let h = p.round_trip.snapshot();
        for (le, n) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{To=\"{id:x}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{To=\"{id:x}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{To=\"{id:x}\"}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{To=\"{id:x}\"}} {}", h.count);
    }
}

/// Writes `h` as a Prometheus histogram: cumulative `_bucket` lines, `+Inf`, `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}
