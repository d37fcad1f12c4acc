//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd offers it.
//!
//! - `periodic`: keep the history of the last `retention` (a duration: `1h`, `30m`, `45s`, or a bare
//!   number of hours as etcd accepts). The compactor samples the store revision every tenth of the
//!   compaction period and, once per period, compacts at the newest sample that is at least
//!   `retention` old. The period is the retention itself, but at most one hour (etcd's rule).
//! - `revision`: keep the last `retention` revisions; every five minutes compact at
//!   `current - retention` when that moved forward.
//!
//! The decision is a pure function of the times and revisions it is shown ([`Compactor::observe`]),
//! so tests drive it with synthetic instants; the server's task feeds it the real clock and proposes
//! the compaction through Raft like any client would.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the revision-mode compactor looks (etcd: 5 minutes).
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

pub use crate::config::Retention;

impl Retention {
    /// How often the compactor should be shown the store's revision.
    pub fn sample_interval(&self) -> Duration {
        match self {
            Retention::Periodic(d) => (period(*d) / 10).max(Duration::from_millis(100)),
            Retention::Revisions(_) => REVISION_MODE_INTERVAL,
        }
    }
}

fn period(retention: Duration) -> Duration {
    retention.min(Duration::from_secs(3600))
}

/// The compaction decision.
#[derive(Debug)]
pub struct Compactor {
    /// What to keep.
    retention: Retention,
    /// (time, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Instant, i64)>,
    /// When the last compaction was decided (periodic mode).
    last_run: Instant,
    /// The last revision compacted at.
    last_compacted: i64,
}

impl Compactor {
    /// A compactor starting at `now`.
    pub fn new(retention: Retention, now: Instant) -> Compactor {
        Compactor {
            retention,
            samples: VecDeque::new(),
            last_run: now,
            last_compacted: 0,
        }
    }

    /// Shows the compactor the store's revision at `now`; returns the revision to compact at, if it is
    /// time to.
    pub fn observe(&mut self, now: Instant, revision: i64) -> Option<i64> {
        match self.retention {
            Retention::Revisions(keep) => {
                let target = revision - keep;
                (target > self.last_compacted && target > 0).then(|| {
                    self.last_compacted = target;
                    target
                })
            }
            Retention::Periodic(keep) => {
                self.samples.push_back((now, revision));
                if now.saturating_duration_since(self.last_run) < period(keep) {
                    return None;
                }
                // The newest sample at least `keep` old.
                let cutoff = now.checked_sub(keep)?;
                let target = self
                    .samples
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= cutoff)
                    .map(|(_, r)| *r)?;
                self.samples.retain(|(t, _)| *t > cutoff);
                self.last_run = now;
                (target > self.last_compacted).then(|| {
                    self.last_compacted = target;
                    target
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_flags() {
        assert_eq!(Retention::parse("periodic", "0").unwrap(), None);
        assert_eq!(
            Retention::parse("periodic", "1").unwrap(),
            Some(Retention::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            Retention::parse("periodic", "30m").unwrap(),
            Some(Retention::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            Retention::parse("revision", "1000").unwrap(),
            Some(Retention::Revisions(1000))
        );
        assert!(Retention::parse("revision", "1h").is_err());
        assert!(Retention::parse("sometimes", "1").is_err());
    }

    #[test]
    fn revision_mode_keeps_the_last_n() {
        let t = Instant::now();
        let mut c = Compactor::new(Retention::Revisions(100), t);
        assert_eq!(c.observe(t, 50), None);
        assert_eq!(c.observe(t, 150), Some(50));
        assert_eq!(c.observe(t, 150), None, "nothing new to compact");
        assert_eq!(c.observe(t, 400), Some(300));
    }

    #[test]
    fn periodic_mode_compacts_at_the_revision_retention_ago() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        let mut c = Compactor::new(Retention::Periodic(keep), t0);
        let step = Retention::Periodic(keep).sample_interval();
        assert_eq!(step, Duration::from_secs(6));
        let mut out = Vec::new();
        // Revision grows by 10 every 6 s for 3 minutes.
        for i in 0..=30u32 {
            if let Some(r) = c.observe(t0 + step * i, i64::from(i) * 10) {
                out.push((i, r));
            }
        }
        // First decision once a period has passed and a sample is a minute old: at t=60 s the sample
        // from t=0 (revision 0) is exactly a minute old, but revision 0 is nothing to compact; at
        // t=120 s the sample from t=60 s (revision 100) qualifies, and so on.
        assert_eq!(out, vec![(20, 100), (30, 200)]);
    }
}
