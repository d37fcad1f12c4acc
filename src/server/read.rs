//! Linearizable reads on a cluster: Raft's read index, batched.
//!
//! A read may be served from this member's store once the store has applied everything that was
//! committed when the read arrived; Raft's read index tells that index, after a round of heartbeats
//! confirms the leader still leads (on a follower, the leader is asked). Many reads share one round:
//! a read parks a waiter in [`Reads`] and wakes the Raft thread only if it is the first to wait;
//! the Raft thread takes every waiting read into one `read_index` request ([`InFlight::issue`]),
//! and when Raft hands back the read state, the waiters are answered as soon as the applied index
//! reaches it ([`InFlight::answer`]).
//!
//! A request Raft drops (no leader, a leader change, a lost message) is issued again under a new
//! context after [`REISSUE_AFTER`] or when the leader changes; the client's own deadline bounds the
//! whole wait. A member that is the only voter needs none of this: every acknowledged write is
//! applied before it is acknowledged (`server::mod`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How long a read index request may go unanswered before it is issued again.
pub const REISSUE_AFTER: Duration = Duration::from_millis(500);

/// A parked linearizable read: answered `Ok` once the store may serve it.
pub type ReadWaiter = oneshot::Sender<Result<()>>;

/// Reads waiting for the Raft thread to take them.
#[derive(Default)]
pub struct Reads {
    pending: Mutex<Vec<ReadWaiter>>,
}

impl Reads {
    /// Parks `w`; true if it is the first waiting (the caller then wakes the Raft thread).
    pub fn park(&self, w: ReadWaiter) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push(w);
        p.len() == 1
    }

    fn take(&self) -> Vec<ReadWaiter> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Answers every parked read with `err` (the member stops).
    pub fn fail_all(&self, err: impl Fn() -> Error) {
        for w in self.take() {
            let _ = w.send(Err(err()));
        }
    }
}

/// The Raft thread's side: read index requests in flight, and reads waiting for the apply step.
///
/// A request's context is this member's id and a counter (16 bytes). The leader keeps the read
/// index requests of every member by context and ignores one whose context it already holds, so a
/// context must be unique across members: with the counter alone, two members' requests with the
/// same number met at the leader and the second was never answered (and waited
/// [`REISSUE_AFTER`]), which happened whenever members started counting together.
#[derive(Default)]
pub struct InFlight {
    /// This member's id, the first half of every context.
    member_id: u64,
    next_ctx: u64,
    /// By request context: when it was issued, and its reads.
    issued: HashMap<u64, (Instant, Vec<ReadWaiter>)>,
    /// (read index, reads) Raft confirmed, waiting for the applied index to reach it.
    confirmed: Vec<(u64, Vec<ReadWaiter>)>,
    /// Requests issued again because Raft left them unanswered for [`REISSUE_AFTER`] (etcd's
    /// `etcd_server_slow_read_indexes_total`).
    pub slow: u64,
}

impl InFlight {
    /// The requests of member `member_id`.
    pub fn new(member_id: u64) -> InFlight {
        InFlight {
            member_id,
            ..InFlight::default()
        }
    }

    /// The context of request `n` of this member: the member id, then `n`, big-endian.
    fn context(&self, n: u64) -> Vec<u8> {
        ((u128::from(self.member_id) << 64) | u128::from(n))
            .to_be_bytes()
            .to_vec()
    }

    /// Takes the reads parked in `reads`, and requests that timed out or whose leader changed
    /// (`again`), into one new request; returns its context, or `None` when there is nothing to ask.
    pub fn issue(&mut self, reads: &Reads, now: Instant, again: bool) -> Option<Vec<u8>> {
        let mut waiters = reads.take();
        let stale: Vec<u64> = self
            .issued
            .iter()
            .filter(|(_, (at, _))| again || now.duration_since(*at) >= REISSUE_AFTER)
            .map(|(ctx, _)| *ctx)
            .collect();
        if !again {
            self.slow += stale.len() as u64;
        }
        for ctx in stale {
            if let Some((_, w)) = self.issued.remove(&ctx) {
                waiters.extend(w);
            }
        }
        waiters.retain(|w| !w.is_closed());
        if waiters.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        self.issued.insert(self.next_ctx, (now, waiters));
        Some(self.context(self.next_ctx))
    }

    /// Raft confirmed request `ctx` at `index` (a context that is not this member's is ignored).
    pub fn confirmed(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 16]>::try_from(ctx) else {
            return;
        };
        let ctx = u128::from_be_bytes(bytes);
        if (ctx >> 64) as u64 != self.member_id {
            return;
        }
        if let Some((_, w)) = self.issued.remove(&(ctx as u64)) {
            self.confirmed.push((index, w));
        }
    }

    /// Answers the confirmed reads whose index is applied.
    pub fn answer(&mut self, applied: u64) {
        self.confirmed.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            false
        });
    }

    /// Whether requests are waiting for Raft (the Raft thread then looks again at its next tick).
    pub fn waiting(&self) -> bool {
        !self.issued.is_empty()
    }

    /// Answers everything with `err`.
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, (_, ws)) in self.issued.drain() {
            for w in ws {
                let _ = w.send(Err(err()));
            }
        }
        for (_, ws) in self.confirmed.drain(..) {
            for w in ws {
                let _ = w.send(Err(err()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_share_a_request_and_wait_for_the_apply() {
        let reads = Reads::default();
        let mut f = InFlight::default();
        let now = Instant::now();
        let (a, mut ra) = oneshot::channel();
        let (b, mut rb) = oneshot::channel();
        assert!(reads.park(a), "the first read wakes the thread");
        assert!(!reads.park(b), "the second shares its request");
        let ctx = f.issue(&reads, now, false).expect("a request");
        assert!(f.issue(&reads, now, false).is_none(), "nothing new to ask");
        f.confirmed(&ctx, 10);
        f.answer(9);
        assert!(ra.try_recv().is_err(), "index 10 not applied yet");
        f.answer(10);
        assert!(matches!(ra.try_recv(), Ok(Ok(()))));
        assert!(matches!(rb.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn contexts_are_unique_across_members() {
        let (ra, rb) = (Reads::default(), Reads::default());
        let (mut a, mut b) = (InFlight::new(1), InFlight::new(2));
        let now = Instant::now();
        let (wa, mut got_a) = oneshot::channel();
        let (wb, _got_b) = oneshot::channel();
        ra.park(wa);
        rb.park(wb);
        let ca = a.issue(&ra, now, false).expect("a request");
        let cb = b.issue(&rb, now, false).expect("b request");
        assert_ne!(ca, cb, "the first request of two members");
        // Another member's context answers nothing here.
        a.confirmed(&cb, 3);
        a.answer(3);
        assert!(got_a.try_recv().is_err());
        a.confirmed(&ca, 3);
        a.answer(3);
        assert!(matches!(got_a.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn unanswered_requests_are_issued_again() {
        let reads = Reads::default();
        let mut f = InFlight::default();
        let now = Instant::now();
        let (a, mut ra) = oneshot::channel();
        reads.park(a);
        let first = f.issue(&reads, now, false).expect("a request");
        assert!(f
            .issue(&reads, now + Duration::from_millis(10), false)
            .is_none());
        assert_eq!(f.slow, 0);
        let second = f
            .issue(&reads, now + REISSUE_AFTER, false)
            .expect("issued again");
        assert_ne!(first, second);
        assert_eq!(f.slow, 1, "a request left unanswered is counted slow");
        f.confirmed(&first, 5);
        f.answer(100);
        assert!(ra.try_recv().is_err(), "the old context is forgotten");
        f.confirmed(&second, 5);
        f.answer(5);
        assert!(matches!(ra.try_recv(), Ok(Ok(()))));
        // A leader change issues everything again at once.
        let (b, _rb) = oneshot::channel();
        reads.park(b);
        let c = f.issue(&reads, now, false).expect("a request");
        let d = f.issue(&reads, now, true).expect("again");
        assert_ne!(c, d);
        assert_eq!(f.slow, 1, "a leader change is not slowness");
    }
}
