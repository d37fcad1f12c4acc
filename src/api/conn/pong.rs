//! A connection's socket, with a lone HTTP/2 PING acknowledgement held back briefly so that it leaves
//! with the next write instead of in a write of its own.
//!
//! grpc-go clients (etcd's client, its load tool, Kubernetes) estimate bandwidth with PING frames:
//! each time a DATA frame arrives and no ping is out, the client sends one. Against mini-etcd that is
//! about one ping per response write. h2 answers a ping at once, and at that moment the puts that came
//! with it are still waiting for their Raft batch. So the acknowledgement (17 bytes) went out alone,
//! and a few hundred microseconds later the responses followed in a second write. Under etcd's
//! `benchmark put --clients 64 --conns 8` on tmpfs, 919 of 3,438 socket writes in a half-second
//! `strace` sample were exactly such an acknowledgement. Each one is a system call here and a
//! wake-up and a read for the client.
//!
//! [`PongHold`] wraps the socket under hyper. A write that is exactly one PING ACK frame, while
//! nothing else is held, is kept (the write reports success) for at most [`HOLD`]. The next write
//! sends it first, in the same vectored write; a flush after the hold has passed sends it alone; a
//! shutdown sends it before closing. Bytes always leave in the order they were written. The
//! acknowledgement is late by at most [`HOLD`], and only while the connection has nothing else to
//! write: during a large response the next data frame takes it along at once, so a client's bandwidth
//! estimate during a transfer is not skewed. RFC 9113 asks that PING responses be given priority over
//! other frames; none is sent before it. A 1 ms bound is far below any keepalive timeout.
//!
//! The deadline wakes the connection's task, and h2 flushes on every poll of a connection, so the
//! held frame goes out even if nothing else happens. With `scripts/syscalls-put.sh` (two alternated
//! runs each): socket writes per put 0.33 -> 0.19, the load tool's reads per put 0.45 -> 0.30 and its
//! CPU per put 29.6-31.0 -> 27.2-27.4 µs.
//!
//! What it leaves out: any other frame. Only a PING ACK is held, so HTTP/1.1 connections, which
//! never write one, pass straight through.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The longest a PING acknowledgement waits for company.
pub const HOLD: Duration = Duration::from_millis(1);

/// A PING frame: 9 bytes of header (length 8, type 6, flags, stream 0) and 8 of payload.
const PING_FRAME_LEN: usize = 17;
/// The PING frame type.
const PING: u8 = 0x6;
/// The ACK flag of a PING frame.
const ACK: u8 = 0x1;
/// The most slices of one vectored write passed on (h2 writes one or two).
const MAX_SLICES: usize = 64;

/// A socket that holds back a lone PING acknowledgement (see the module docs).
pub struct PongHold<I> {
    /// The socket.
    io: I,
    /// The held acknowledgement; `held[sent..]` is still to be written.
    held: [u8; PING_FRAME_LEN],
    /// How much of `held` is written; `PING_FRAME_LEN` when nothing is held.
    sent: usize,
    /// When a held acknowledgement must go, whatever else happens.
    deadline: Pin<Box<Sleep>>,
}

impl<I> PongHold<I> {
    /// Wraps `io`.
    pub fn new(io: I) -> PongHold<I> {
        PongHold {
            io,
            held: [0; PING_FRAME_LEN],
            sent: PING_FRAME_LEN,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    fn holding(&self) -> bool {
        self.sent < PING_FRAME_LEN
    }
}

/// True when `bytes` are exactly one PING frame with the ACK flag.
fn is_ping_ack(bytes: &[u8; PING_FRAME_LEN]) -> bool {
    bytes[..3] == [0, 0, 8] && bytes[3] == PING && bytes[4] & ACK != 0 && bytes[5..9] == [0; 4]
}

/// `bufs` joined, when they add up to exactly one frame's length.
fn as_frame(bufs: &[IoSlice<'_>]) -> Option<[u8; PING_FRAME_LEN]> {
    if bufs.iter().map(|b| b.len()).sum::<usize>() != PING_FRAME_LEN {
        return None;
    }
    let mut frame = [0; PING_FRAME_LEN];
    let mut at = 0;
    for b in bufs {
        frame[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    Some(frame)
}

impl<I: AsyncWrite + Unpin> PongHold<I> {
    /// Writes what is held and then `bufs`, in one vectored write where the socket takes it all;
    /// returns how many bytes of `bufs` were written (never 0 for a non-empty `bufs`).
    fn write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        while self.holding() {
            let held = self.held;
            let mut slices = Vec::with_capacity(bufs.len().min(MAX_SLICES) + 1);
            slices.push(IoSlice::new(&held[self.sent..]));
            slices.extend(bufs.iter().take(MAX_SLICES).map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            let left = PING_FRAME_LEN - self.sent;
            self.sent += n.min(left);
            if n > left {
                return Poll::Ready(Ok(n - left));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    /// Writes what is held, alone.
    fn write_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.holding() {
            let held = self.held;
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PongHold<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PongHold<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.holding() {
            if let Some(frame) = as_frame(bufs).filter(is_ping_ack) {
                self.held = frame;
                self.sent = 0;
                self.deadline.as_mut().reset(Instant::now() + HOLD);
                return Poll::Ready(Ok(PING_FRAME_LEN));
            }
        }
        self.write_after_held(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Polling the deadline also arranges the wake-up that brings the task back to flush.
        if self.holding() && self.deadline.as_mut().poll(cx).is_ready() {
            ready!(self.write_held(cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.write_held(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
