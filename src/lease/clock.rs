//! Where the lessor reads the time: the system clock in a server, a hand-driven clock in tests.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A monotonic time source. The lessor asks it for "now" on every call, so a test can move time by hand
/// and see leases expire without sleeping.
pub trait Clock: Send + Sync {
    /// The current instant; never goes backwards.
    fn now(&self) -> Instant;
}

/// The real monotonic clock ([`Instant::now`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it, for deterministic expiry tests.
#[derive(Debug)]
pub struct ManualClock {
    /// The instant the clock started at; real time, so `Instant` arithmetic stays in range.
    start: Instant,
    /// How far the clock has been advanced since `start`. A mutex rather than an atomic because a
    /// `Duration` is wider than any atomic; it is held for one read or one add.
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading the current real instant, frozen there.
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        // A poisoned lock still holds a valid Duration: the only write is one `+=`.
        let mut elapsed = self.elapsed.lock().unwrap_or_else(PoisonError::into_inner);
        *elapsed += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let elapsed = *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner);
        self.start + elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        let sys = SystemClock;
        assert!(sys.now() <= SystemClock.now());
    }
}
