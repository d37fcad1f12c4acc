//! Serving one client connection: HTTP/1.1 or HTTP/2 on one socket, and where each HTTP/2 stream
//! runs.
//!
//! hyper normally hands every HTTP/2 stream (one gRPC call) to `tokio::spawn`. For a put that is a
//! task per request: allocated, scheduled on whichever worker is free, woken from the Raft thread
//! when its entry is committed, and each finished task wakes the connection's task again to write
//! its response. On two shared vCPUs those wake-ups and thread switches cost more than the request's
//! own work. Here the connection's task runs the streams itself ([`ConnExecutor`] collects them,
//! [`serve_connection`] polls them beside the connection): a Raft batch that answers eight puts of one
//! connection wakes one task, not eight, and their responses leave in one socket write.
//!
//! A stream that may compute for long (a read-only Txn, a snapshot) would hold up every other call
//! on its connection that way, and so would a watch stream encoding its events; so [`runs_inline`]
//! names the few calls that wait for Raft or compute little: Put, DeleteRange and Txn (the KV
//! service moves a read-only Txn, which computes, to a task of its own), and Range: the server
//! reads a range over a key interval on a task of its own, or on the blocking pool when it may read
//! many records (`server::kv::is_wide`), so what is left on the connection's task is the read of one
//! key. Every other stream still gets a task of its own, as hyper would give it. KV calls also skip
//! the axum router: they go to the KV service directly ([`Routes::kv`]).
//!
//! Each round of those inline calls runs inside the listener's [`RoundScope`], a function the
//! server hands in ([`Routes::round`]); this module knows nothing of what it does. (The server
//! uses it to propose a round's writes together, and, on a member that is the only voter, to run
//! their Raft turn on this thread, so that the next round sends the replies with no thread
//! hand-off.)
//!
//! A connection that goes quiet is closed ([`Liveness`]): one that has not sent the first bytes of
//! its protocol, or an HTTP/1 request head, within the header timeout (hyper's own header timer
//! for the head; [`Opening`] for the bytes before hyper knows the protocol, which hyper waits for
//! without a limit), and an HTTP/2 connection that leaves a keep-alive ping unanswered. TCP
//! keep-alive, for a peer that vanished without a word, is the listener's.
//!
//! Not here: routing (the axum router this serves, apart from the KV shortcut), the TLS handshake
//! and the connection limit (the listener's job; this serves whatever stream it hands over).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::Either as BodyEither;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

use crate::api::grpc::unary::{CallFuture, KvCalls, UnaryBody};
use crate::auth::ClientCertName;

/// One HTTP/2 stream's future, as hyper hands it to its executor.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many times one poll of a connection goes round (read requests, run streams, write their
/// responses) before it yields to other tasks.
const ROUNDS_PER_POLL: usize = 4;

/// The streams a connection's task runs: filled by [`ConnExecutor`], emptied by [`serve_connection`].
type Started = Mutex<Vec<StreamFuture>>;

/// hyper's executor for one connection: it keeps the streams that [`runs_inline`] picks, for
/// [`serve_connection`] to poll on the connection's own task, and spawns the others.
///
/// hyper calls the service for a new stream and hands the stream to the executor right after, on
/// the connection's task; the service marks the call in `next_inline` in between. Every stream holds
/// a clone of the executor, so the executor holds the list weakly: a stream left in it when the
/// connection ends is dropped with the list, not kept alive by itself.
#[derive(Clone)]
struct ConnExecutor {
    /// Streams started since the connection's task last took them.
    started: Weak<Started>,
    /// Whether the stream hyper hands over next runs on the connection's task.
    next_inline: Arc<AtomicBool>,
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let inline = self.next_inline.swap(false, Ordering::Relaxed);
        match self.started.upgrade() {
            Some(started) if inline => {
                // A panic in one call ends that call (its stream is reset), as it would in a task of
                // its own, and not the connection's task with every other call on it.
                let fut = AssertUnwindSafe(fut).catch_unwind().map(|result| {
                    if result.is_err() {
                        tracing::error!("a call panicked; its stream is reset");
                    }
                });
                lock(&started).push(Box::pin(fut));
            }
            _ => {
                tokio::spawn(fut);
            }
        }
    }
}

fn lock(started: &Started) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
    started.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a call runs on its connection's task: those that do little but wait for the Raft log
/// (a linearizable Range waits for its read index) and then compute little. A Txn only waits when it
/// writes; `grpc::kv` spawns the read-only ones. The server moves a Range over a key interval off
/// the connection's task.
pub fn runs_inline(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.KV/Range"
            | "/etcdserverpb.KV/Put"
            | "/etcdserverpb.KV/DeleteRange"
            | "/etcdserverpb.KV/Txn"
    )
}

/// Runs one round of a connection's inline calls (the closure polls them), with whatever the server
/// wants around it; [`run_round`] runs them bare.
pub type RoundScope = fn(&mut dyn FnMut());

/// A [`RoundScope`] that adds nothing.
pub fn run_round(calls: &mut dyn FnMut()) {
    calls()
}

/// What a connection serves: an axum router, and the KV calls that skip it.
#[derive(Clone)]
pub struct Routes {
    /// Everything the lean path does not take.
    pub router: axum::Router,
    /// The KV service's unary calls, when this listener serves the etcd API: they skip the router's
    /// path matching and tonic's streaming machinery (`grpc::unary`).
    pub kv: Option<KvCalls>,
    /// Most concurrent HTTP/2 streams a client may open on the connection
    /// (`--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// What each round of inline calls runs inside.
    pub round: RoundScope,
    /// The client's address, set per connection; requests through the router carry it as a
    /// [`PeerAddr`] extension.
    pub remote: Option<std::net::SocketAddr>,
    /// When a quiet connection is closed.
    pub liveness: Liveness,
    /// The Common Name of the connection's verified TLS client certificate, set per connection
    /// with `--client-cert-auth`; every request carries it as a [`ClientCertName`] extension.
    pub client_cert: Option<ClientCertName>,
}

/// When a connection that does not speak is closed.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// The client must send the bytes that tell HTTP/1 from HTTP/2, and then each HTTP/1 request
    /// head, within this long (`--http-read-header-timeout`); it is also how long an HTTP/1
    /// keep-alive connection may sit idle. `None`: no limit.
    pub header_timeout: Option<Duration>,
    /// How often an HTTP/2 connection is pinged when nothing else arrives
    /// (`--grpc-keepalive-interval`). `None`: never.
    pub ping_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed
    /// (`--grpc-keepalive-timeout`).
    pub ping_timeout: Duration,
}

#[cfg(test)]
impl Liveness {
    /// No limits: a connection stays open until the client closes it.
    pub const NONE: Liveness = Liveness {
        header_timeout: None,
        ping_interval: None,
        ping_timeout: Duration::from_secs(20),
    };
}

/// The HTTP/2 connection preface; hyper reads this many bytes (or up to the first that differs)
/// before it picks HTTP/1 or HTTP/2.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection's socket while hyper works out its protocol: a read that would wait past the
/// deadline fails with `TimedOut` instead, which ends the connection. Once the bytes read so far
/// differ from the HTTP/2 preface, or hold all of it, hyper has decided, its own timers take over,
/// and this only passes reads and writes through.
struct Opening<I> {
    /// The socket.
    io: I,
    /// How many bytes of [`H2_PREFACE`] the client has sent so far, while still undecided.
    matched: usize,
    /// Set until the protocol is decided; `None` after, or with no header timeout.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Opening<I> {
    fn new(io: I, timeout: Option<Duration>) -> Self {
        Opening {
            io,
            matched: 0,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        }
    }

    /// Notes bytes just read; drops the deadline once they decide the protocol.
    fn saw(&mut self, bytes: &[u8]) {
        let want = &H2_PREFACE[self.matched..];
        let n = bytes.len().min(want.len());
        if bytes[..n] != want[..n] || self.matched + n == H2_PREFACE.len() {
            self.deadline = None;
        } else {
            self.matched += n;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Opening<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.deadline.is_none() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                if filled > before {
                    this.saw(&buf.filled()[before..filled]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request from the client within the header timeout",
                ))),
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Opening<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The address of the client that sent a request (a request extension on the router's path).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// A reply from the lean path, as the connection's service returns it.
async fn lean(
    call: CallFuture,
) -> Result<hyper::Response<BodyEither<axum::body::Body, UnaryBody>>, Infallible> {
    Ok(call.await.map(BodyEither::Right))
}

/// Serves `io` with `routes` until the peer closes it, or until `stop` resolves and the calls in
/// flight have finished (graceful shutdown: HTTP/2 GOAWAY, HTTP/1.1 close after the response).
pub async fn serve_connection<I>(io: I, routes: Routes, stop: impl Future<Output = ()>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started: Arc<Started> = Arc::default();
    let executor = ConnExecutor {
        started: Arc::downgrade(&started),
        next_inline: Arc::default(),
    };
    let marks = executor.next_inline.clone();
    let max_streams = routes.max_concurrent_streams;
    let round = routes.round;
    let liveness = routes.liveness;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // No CONNECT: nothing here tunnels, and a CONNECT answered 2xx would make hyper start an
        // upgrade task on whichever thread polls the stream, through this connection's executor.
        if req.method() == hyper::Method::CONNECT {
            marks.store(false, Ordering::Relaxed);
            let mut refused = hyper::Response::new(UnaryBody::default());
            *refused.status_mut() = hyper::StatusCode::METHOD_NOT_ALLOWED;
            return Either::Left(lean(Box::pin(std::future::ready(refused))));
        }
        marks.store(runs_inline(req.uri().path()), Ordering::Relaxed);
        let mut req = req;
        if let Some(name) = &routes.client_cert {
            req.extensions_mut().insert(name.clone());
        }
        if let Some((kv, method)) = routes.kv.as_ref().zip(KvCalls::takes(&req)) {
            return Either::Left(lean(kv.call(method, req)));
        }
        let mut req = req.map(axum::body::Body::new);
        if let Some(addr) = routes.remote {
            req.extensions_mut().insert(PeerAddr(addr));
        }
        let call = routes.router.clone().oneshot(req);
        Either::Right(async move { call.await.map(|r| r.map(BodyEither::Left)) })
    });
    let mut builder = Builder::new(executor.clone());
    // No `date` header on HTTP/2 responses: gRPC clients ignore it, and it cost every response a
    // header to build and HPACK-encode, and every client one to decode.
    builder
        .http2()
        .auto_date_header(false)
        .max_concurrent_streams(max_streams)
        .timer(TokioTimer::new())
        .keep_alive_interval(liveness.ping_interval)
        .keep_alive_timeout(liveness.ping_timeout);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(liveness.header_timeout);
    let io = Opening::new(io, liveness.header_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut stop = pin!(stop);
    let mut stopping = false;
    let mut streams: FuturesUnordered<StreamFuture> = FuturesUnordered::new();
    let result = poll_fn(|cx| {
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        for _ in 0..ROUNDS_PER_POLL {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            let new = std::mem::take(&mut *lock(&started));
            let mut progress = !new.is_empty();
            streams.extend(new);
            // What the calls' scope did for them (answers included) is sent by the next round.
            round(&mut || {
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                    progress = true;
                }
            });
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
pub(crate) mod tests;
