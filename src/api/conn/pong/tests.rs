//! [`PongHold`] against a socket stand-in that records each write: what is held, for how long, and
//! that bytes keep their order. Time is tokio's paused clock, so the hold is exact.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use futures::task::{waker, ArcWake};

use super::*;

/// Records every write (one entry per call) and takes at most `per_write` bytes a call.
struct Recorder {
    writes: Vec<Vec<u8>>,
    per_write: usize,
    shut: bool,
}

impl Recorder {
    fn new(per_write: usize) -> Recorder {
        Recorder {
            writes: Vec::new(),
            per_write,
            shut: false,
        }
    }

    fn all(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut taken = Vec::new();
        for b in bufs {
            let room = self.per_write - taken.len();
            taken.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = taken.len();
        if n > 0 {
            self.writes.push(taken);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

/// Counts wake-ups.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn ping(flags: u8) -> Vec<u8> {
    let mut f = vec![0, 0, 8, PING, flags, 0, 0, 0, 0];
    f.extend_from_slice(b"opaque!!");
    f
}

/// One call each, with a context that counts wake-ups.
struct Driver {
    hold: PongHold<Recorder>,
    wakes: Arc<Wakes>,
}

impl Driver {
    fn new(per_write: usize) -> Driver {
        Driver {
            hold: PongHold::new(Recorder::new(per_write)),
            wakes: Arc::default(),
        }
    }

    fn cx<R>(&mut self, f: impl FnOnce(Pin<&mut PongHold<Recorder>>, &mut Context<'_>) -> R) -> R {
        let w = waker(self.wakes.clone());
        let mut cx = Context::from_waker(&w);
        f(Pin::new(&mut self.hold), &mut cx)
    }

    /// Writes all of `bytes`, however many calls the socket needs.
    fn write(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            match self.cx(|h, cx| h.poll_write(cx, &bytes[at..])) {
                Poll::Ready(Ok(n)) => {
                    assert!(n > 0, "a write of nothing");
                    at += n;
                }
                other => panic!("write: {other:?}"),
            }
        }
    }

    fn flush(&mut self) {
        let r = self.cx(|h, cx| h.poll_flush(cx));
        assert!(matches!(r, Poll::Ready(Ok(()))), "flush: {r:?}");
    }

    fn writes(&self) -> &[Vec<u8>] {
        &self.hold.io.writes
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_ping_ack_is_held_and_leaves_with_the_next_write() {
    let mut d = Driver::new(usize::MAX);
    d.write(&ping(ACK));
    d.flush();
    assert!(d.writes().is_empty(), "the acknowledgement left alone");
    tokio::time::advance(HOLD / 2).await;
    d.flush();
    assert!(
        d.writes().is_empty(),
        "the acknowledgement left before the hold passed"
    );
    d.write(b"responses");
    let mut expected = ping(ACK);
    expected.extend_from_slice(b"responses");
    assert_eq!(d.writes(), [expected], "one write, acknowledgement first");
}

#[tokio::test(start_paused = true)]
async fn a_held_ack_goes_alone_once_the_hold_passes_and_the_deadline_wakes_the_task() {
    let mut d = Driver::new(usize::MAX);
    d.write(&ping(ACK));
    d.flush();
    assert_eq!(d.wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    tokio::time::advance(HOLD).await;
    assert!(
        d.wakes.0.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the deadline did not wake the connection's task"
    );
    d.flush();
    assert_eq!(d.writes(), [ping(ACK)]);
    // Nothing is held any more: the next write goes as it is.
    d.write(b"later");
    assert_eq!(d.writes().last().map(Vec::as_slice), Some(&b"later"[..]));
}

#[tokio::test(start_paused = true)]
async fn only_a_ping_ack_is_held() {
    let mut d = Driver::new(usize::MAX);
    d.write(&ping(0)); // a ping of our own, not an acknowledgement
    let settings_ack = [0u8, 0, 0, 4, 1, 0, 0, 0, 0];
    d.write(&settings_ack);
    let mut not_ping = ping(ACK);
    not_ping[3] = 0x0; // a 17-byte DATA frame
    d.write(&not_ping);
    assert_eq!(d.writes(), [ping(0), settings_ack.to_vec(), not_ping]);

    // An acknowledgement handed over in two slices is still one frame, and is held.
    let ack = ping(ACK);
    let r = d
        .cx(|h, cx| h.poll_write_vectored(cx, &[IoSlice::new(&ack[..5]), IoSlice::new(&ack[5..])]));
    assert!(matches!(r, Poll::Ready(Ok(17))), "{r:?}");
    assert_eq!(
        d.writes().len(),
        3,
        "the split acknowledgement left at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_ack_is_not_held_behind_the_first() {
    let mut d = Driver::new(usize::MAX);
    d.write(&ping(ACK));
    d.write(&ping(ACK));
    let mut both = ping(ACK);
    both.extend_from_slice(&ping(ACK));
    assert_eq!(d.writes(), [both]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_what_is_held() {
    let mut d = Driver::new(usize::MAX);
    d.write(&ping(ACK));
    let r = d.cx(|h, cx| h.poll_shutdown(cx));
    assert!(matches!(r, Poll::Ready(Ok(()))), "{r:?}");
    assert_eq!(d.writes(), [ping(ACK)]);
    assert!(d.hold.io.shut);
}

#[tokio::test(start_paused = true)]
async fn bytes_keep_their_order_when_the_socket_takes_a_few_at_a_time() {
    let mut d = Driver::new(5);
    d.write(&ping(ACK));
    d.write(b"hello, world");
    let mut expected = ping(ACK);
    expected.extend_from_slice(b"hello, world");
    assert_eq!(d.hold.io.all(), expected);
    assert!(d.writes().iter().all(|w| w.len() <= 5));
}
