//! What a run found: latency percentiles, throughput, errors; printed for people or as JSON.
//!
//! Latencies are kept exactly (a sample per request: when it finished and how long it took, two
//! `u64` of nanoseconds; sorted once at the end) rather than in a histogram: a million requests cost
//! 16 MB, the percentiles are then exact, and `--plot` can draw the run over time. Percentiles
//! use the nearest-rank rule: p99 of 1000 samples is the 990th smallest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples the figures are computed from.
    pub count: u64,
    /// Fastest.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// Summarises `samples` (nanoseconds; sorted here).
    pub fn from_nanos(mut samples: Vec<u64>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let ms = |ns: u64| ns as f64 / 1e6;
        // Nearest rank: the smallest sample with at least p of all samples at or below it.
        let pct = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            ms(samples[rank - 1])
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Latency {
            count: n as u64,
            min: ms(samples[0]),
            mean: sum as f64 / n as f64 / 1e6,
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: ms(samples[n - 1]),
        }
    }
}

/// Extra figures of the `watch` workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WatchStats {
    /// Watchers on the key.
    pub watchers: u64,
    /// Puts acknowledged by the server.
    pub puts: u64,
    /// `puts * watchers`: events that should have arrived.
    pub events_expected: u64,
    /// Events that arrived for an acknowledged put.
    pub events_received: u64,
    /// `events_expected - events_received`: events that never arrived before the grace period ended.
    pub events_lost: u64,
    /// Event latency measured from the put's send instead of its acknowledgement (etcd's
    /// `benchmark watch-latency` measure).
    pub latency_from_put_sent_ms: Latency,
}

/// The result of one run, as printed by `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The workload's name (`put`, `range`, ...).
    pub workload: String,
    /// The endpoints loaded.
    pub endpoints: Vec<String>,
    /// gRPC connections used.
    pub conns: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests asked for (`--total`; puts for `watch`).
    pub total: u64,
    /// Requests answered without error (events received for `watch`).
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Each distinct error text and how often it occurred.
    pub error_counts: BTreeMap<String, u64>,
    /// True if `--timeout` ended the run before `--total` was reached.
    pub timed_out: bool,
    /// Wall time of the measured phase, in seconds.
    pub duration_s: f64,
    /// `ok / duration_s` (events per second for `watch`).
    pub requests_per_s: f64,
    /// Request latency (event latency for `watch`: put acknowledged -> event received).
    pub latency_ms: Latency,
    /// Only for `watch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStats>,
    /// Every successful request (every event for `watch`), for `--plot` and `--samples`; not in the
    /// JSON summary.
    #[serde(skip)]
    pub samples: Vec<super::plot::Sample>,
}

impl Summary {
    /// The summary for people, in the spirit of etcd's `benchmark` output.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "Summary ({} on {}, {} clients, {} conns):",
            self.workload,
            self.endpoints.join(","),
            self.clients,
            self.conns
        );
        let _ = writeln!(s, "  Total:        {:.4} secs.", self.duration_s);
        let _ = writeln!(s, "  Requests/sec: {:.1}", self.requests_per_s);
        let _ = writeln!(
            s,
            "  OK:           {}   Errors: {}{}",
            self.ok,
            self.errors,
            if self.timed_out {
                "   (stopped by --timeout)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  Latency (ms): min {:.3}  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(w) = &self.watch {
            let _ = writeln!(
                s,
                "  Watch:        {} watchers, {} puts, {} of {} events received, {} lost",
                w.watchers, w.puts, w.events_received, w.events_expected, w.events_lost
            );
            let l = &w.latency_from_put_sent_ms;
            let _ = writeln!(
                s,
                "  From put sent (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        for (text, n) in &self.error_counts {
            let _ = writeln!(s, "  error x{n}: {text}");
        }
        s
    }
}

/// A self-drawn progress line on stderr: redrawn in place a few times a second on a terminal, one
/// plain line every few seconds otherwise (so logs stay readable).
#[derive(Debug)]
pub struct Progress {
    /// Stops the drawing task when dropped.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The drawing task, awaited on `finish` so its last line is out before the summary.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `done` against `total`; does nothing if `enabled` is false.
    pub fn start(label: String, done: Arc<AtomicU64>, total: u64, enabled: bool) -> Progress {
        if !enabled {
            return Progress {
                stop: None,
                task: None,
            };
        }
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut rx => true,
                };
                let line =
                    progress_line(&label, done.load(Ordering::Relaxed), total, start.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K{}", if last { "\n" } else { "" })
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
                if last {
                    break;
                }
            }
        });
        Progress {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Draws the final state and stops.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// One progress line: `put [#########-----------]  45%  4500/10000  1234 req/s  3.6s`.
pub fn progress_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(1);
    let done_c = done.min(total);
    let filled = (done_c * WIDTH / total) as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    format!(
        "{label} [{}{}] {:3}%  {done}/{total}  {rate:.0} req/s  {:.1}s",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        done_c * 100 / total,
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        // 1..=1000 ms.
        let samples: Vec<u64> = (1..=1000u64).rev().map(|i| i * 1_000_000).collect();
        let l = Latency::from_nanos(samples);
        assert_eq!(l.count, 1000);
        assert_eq!(l.min, 1.0);
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p90, 900.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.max, 1000.0);
        assert!((l.mean - 500.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_and_none() {
        let l = Latency::from_nanos(vec![2_500_000]);
        assert_eq!((l.p50, l.p999, l.max), (2.5, 2.5, 2.5));
        assert_eq!(Latency::from_nanos(Vec::new()), Latency::default());
    }

    #[test]
    fn progress_line_is_bounded() {
        let l = progress_line("put", 5, 10, Duration::from_secs(1));
        assert!(l.contains(" 50%"), "{l}");
        assert!(l.contains("5/10"), "{l}");
        // More done than asked (cannot happen, but must not panic).
        assert!(progress_line("put", 20, 10, Duration::ZERO).contains("100%"));
        assert!(progress_line("put", 0, 0, Duration::ZERO).contains("0%"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let s = Summary {
            workload: "put".into(),
            ok: 3,
            ..Summary::default()
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for f in [
            "workload",
            "ok",
            "errors",
            "duration_s",
            "requests_per_s",
            "latency_ms",
        ] {
            assert!(v.get(f).is_some(), "missing {f}: {v}");
        }
        assert!(v["latency_ms"].get("p999").is_some());
        assert!(v.get("watch").is_none());
        assert!(s.to_text().contains("OK:           3"));
    }
}
