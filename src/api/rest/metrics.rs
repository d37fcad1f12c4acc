//! `/metrics`: Prometheus text exposition of the server's state, written by hand (a dozen gauges and
//! counters and two histograms need no client library). Names follow etcd's where etcd has the same
//! quantity, so existing dashboards find them; ours carry the `mini_etcd_` prefix.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::histogram::HistogramSnapshot;
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
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
