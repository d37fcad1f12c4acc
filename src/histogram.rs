//! Latency histograms in Prometheus' shape, for the two disk latencies etcd operators watch first:
//! the WAL's fsync (`etcd_disk_wal_fsync_duration_seconds`) and the backend's commit
//! (`etcd_disk_backend_commit_duration_seconds`).
//!
//! The buckets are etcd's for both: upper bounds of 1 ms doubling up to 8.192 s (14 buckets), plus
//! the implicit `+Inf`. A [`Histogram`] is a row of atomic counters, one per bucket, and a sum in
//! nanoseconds: recording is two relaxed atomic additions and takes no lock, so the Raft thread and
//! the backend committer can record on their hot paths while `/metrics` reads. A reader may see a
//! count and a sum from slightly different instants; Prometheus tolerates that, and nothing here is
//! used for decisions.
//!
//! What it leaves out: configurable buckets, quantiles, and any other metric type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most finite buckets a histogram has.
const MAX_BUCKETS: usize = 16;
/// etcd's disk buckets: 14, the first up to 1 ms.
const DISK: (u64, usize) = (1_000_000, 14);
/// etcd's peer round-trip buckets: 16, the first up to 100 µs.
const ROUND_TRIP: (u64, usize) = (100_000, 16);

/// A latency histogram with exponential buckets (each bound twice the last), etcd's disk buckets
/// unless made with [`Histogram::round_trip`].
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the slot after the last finite one is `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    /// Sum of every observation, in nanoseconds.
    sum_nanos: AtomicU64,
    /// Upper bound of the first bucket, in nanoseconds.
    first_nanos: u64,
    /// Finite buckets in use.
    buckets: usize,
}

/// A histogram as Prometheus exposes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative, ascending; `+Inf` is
    /// not listed (it is `count`).
    pub buckets: Vec<(f64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_buckets(DISK)
    }
}

impl Histogram {
    /// An empty histogram with etcd's disk buckets (1 ms to 8.192 s).
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// An empty histogram with etcd's peer round-trip buckets (100 µs to 3.2768 s).
    pub fn round_trip() -> Histogram {
        Histogram::with_buckets(ROUND_TRIP)
    }

    fn with_buckets((first_nanos, buckets): (u64, usize)) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            first_nanos,
            buckets: buckets.min(MAX_BUCKETS),
        }
    }

    /// Records one observation. A value equal to a bound counts in that bound's bucket (`le`).
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let slot = (0..self.buckets)
            .find(|&i| nanos <= self.bound_nanos(i))
            .unwrap_or(self.buckets);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The cumulative view Prometheus wants.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.buckets);
        let mut running = 0u64;
        for i in 0..self.buckets {
            running += self.counts[i].load(Ordering::Relaxed);
            buckets.push((self.bound_nanos(i) as f64 / 1e9, running));
        }
        let count = running + self.counts[self.buckets].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Histogram {
    /// Upper bound of finite bucket `i`, in nanoseconds.
    fn bound_nanos(&self, i: usize) -> u64 {
        self.first_nanos << i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_etcds_and_cumulative_with_inclusive_bounds() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50)); // le 0.001
        h.observe(ms(1)); // exactly on the first bound: still le 0.001
        h.observe(Duration::from_micros(1_001)); // le 0.002
        h.observe(ms(3)); // le 0.004
        h.observe(ms(9_000)); // above 8.192 s: only +Inf
        let s = h.snapshot();
        let bounds: Vec<f64> = s.buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds.len(), 14);
        assert_eq!(bounds[0], 0.001);
        assert_eq!(bounds[13], 8.192);
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.1).collect();
        assert_eq!(&counts[..4], &[2, 3, 4, 4]);
        assert_eq!(counts[13], 4, "9 s is beyond the last finite bucket");
        assert_eq!(s.count, 5);
        let expected = 0.000_05 + 0.001 + 0.001_001 + 0.003 + 9.0;
        assert!((s.sum_seconds - expected).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn an_empty_histogram_has_zero_everywhere() {
        let rtt = Histogram::round_trip();
        rtt.observe(Duration::from_micros(150));
        let r = rtt.snapshot();
        assert_eq!(r.buckets.len(), 16);
        assert_eq!(r.buckets[0], (0.0001, 0));
        assert_eq!(r.buckets[1], (0.0002, 1));
        assert!((r.buckets[15].0 - 3.2768).abs() < 1e-9);
        let s = Histogram::new().snapshot();
        assert!(s.buckets.iter().all(|b| b.1 == 0));
        assert_eq!((s.count, s.sum_seconds), (0, 0.0));
    }
}
