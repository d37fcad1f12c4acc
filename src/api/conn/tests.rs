//! [`serve_connection`] over a real loopback socket and hyper's HTTP/2 client: inline calls run
//! side by side on one connection, a spawned call does not hold them up, and a stop lets a call in
//! flight finish. No test depends on timing; every wait is bounded by [`BOUND`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

/// Safety bound on any single wait; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(30);

/// A path [`runs_inline`] keeps on the connection's task, and one it spawns.
const INLINE: &str = "/etcdserverpb.KV/Put";
const SPAWNED: &str = "/etcdserverpb.KV/Compact";

/// Serves `router` on a fresh loopback port with etcd's default stream limit (none); returns an
/// HTTP/2 client for it, the stop trigger and the serving task.
async fn serve(
    router: axum::Router,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    serve_limited(router, u32::MAX).await
}

/// [`serve`] with at most `max_streams` concurrent streams per connection.
async fn serve_limited(
    router: axum::Router,
    max_streams: u32,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let routes = Routes {
            router,
            kv: None,
            max_concurrent_streams: max_streams,
            round: crate::api::conn::run_round,
            remote: None,
            liveness: crate::api::conn::Liveness::NONE,
            client_cert: None,
        };
        serve_connection(tcp, routes, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    let client = h2_client(addr).await;
    // One answered request first: the server's SETTINGS (its stream limit among them) come before
    // any answer, so afterwards the client knows the limit. Without it a call sent right after the
    // handshake could race the SETTINGS and be refused (REFUSED_STREAM) instead of held back.
    let warm_up = send(&client, hyper::Request::post("http://localhost/warm-up")).await;
    assert!(warm_up.is_ok(), "warm-up request failed: {warm_up:?}");
    (client, stop_tx, served)
}

/// An HTTP/2 client connected to `addr`, its connection driven by a task of its own.
pub(crate) async fn h2_client<B>(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    client
}

/// Sends `req` with an empty body; the answer, or the error (a reset stream), within [`BOUND`].
async fn send(
    client: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    req: http::request::Builder,
) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
    let req = req.body(Empty::new()).expect("request");
    tokio::time::timeout(BOUND, client.clone().send_request(req))
        .await
        .expect("an answer within the bound")
}

/// POSTs to `path` and returns the status and body text.
async fn call(
    client: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String) {
    let resp = send(
        client,
        hyper::Request::post(format!("http://localhost{path}")),
    )
    .await
    .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn only_calls_that_wait_for_raft_and_compute_little_run_inline() {
    assert!(runs_inline("/etcdserverpb.KV/Range"));
    assert!(runs_inline("/etcdserverpb.KV/Put"));
    assert!(runs_inline("/etcdserverpb.KV/DeleteRange"));
    assert!(runs_inline("/etcdserverpb.KV/Txn"));
    for path in [
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Maintenance/Snapshot",
        "/v3/kv/put",
        "/v2/keys/a",
    ] {
        assert!(!runs_inline(path), "{path}");
    }
}

/// `CALLS` calls on one connection that each wait until all have started: they can only finish if
/// the connection lets that many streams be open at once and its task polls them side by side.
fn barrier_router(calls: usize) -> axum::Router {
    let barrier = Arc::new(tokio::sync::Barrier::new(calls));
    axum::Router::new().route(
        INLINE,
        post(move || {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                "done"
            }
        }),
    )
}

/// 500 inline calls on one connection, each waiting for all the others: more than hyper's default
/// limit of 200 streams, which etcd does not have (`--max-concurrent-streams` defaults to 2^32 - 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_calls_on_one_connection_run_side_by_side() {
    const CALLS: usize = 500;
    let (client, _stop, _served) = serve(barrier_router(CALLS)).await;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { call(&client, INLINE).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("call"), (200, "done".to_string()));
    }
}

/// With `--max-concurrent-streams 1`, a second call on the connection starts only once the first
/// has ended. The first call is released as soon as the second starts, or after a grace period if
/// it never does; the second records whether the first had ended when it started. Without the
/// limit the second starts at once and sees the first still open, so the test fails whatever the
/// timing; with it, the grace period only delays the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_limit_holds_further_calls_back() {
    let first_ended = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let router = axum::Router::new()
        .route(INLINE, {
            let (first_ended, release, started_tx) =
                (first_ended.clone(), release.clone(), started_tx.clone());
            post(move || {
                let (first_ended, release, started_tx) =
                    (first_ended.clone(), release.clone(), started_tx.clone());
                async move {
                    let _ = started_tx.send("first").await;
                    release.notified().await;
                    first_ended.store(true, Ordering::SeqCst);
                    "first"
                }
            })
        })
        .route("/etcdserverpb.KV/DeleteRange", {
            let first_ended = first_ended.clone();
            post(move || {
                let (first_ended, started_tx) = (first_ended.clone(), started_tx.clone());
                async move {
                    let saw = first_ended.load(Ordering::SeqCst);
                    let _ = started_tx.send("second").await;
                    if saw {
                        "second, after the first"
                    } else {
                        "second, beside the first"
                    }
                }
            })
        });
    let (client, _stop, _served) = serve_limited(router, 1).await;
    let first = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, INLINE).await })
    };
    let started = tokio::time::timeout(BOUND, started_rx.recv()).await;
    assert_eq!(started.expect("first started").expect("open"), "first");
    let second = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, "/etcdserverpb.KV/DeleteRange").await })
    };
    // Release the first when the second starts, or after the grace period.
    let _ = tokio::time::timeout(Duration::from_secs(2), started_rx.recv()).await;
    release.notify_one();
    assert_eq!(first.await.expect("first"), (200, "first".to_string()));
    assert_eq!(
        second.await.expect("second"),
        (200, "second, after the first".to_string())
    );
}

/// A spawned call that keeps its thread busy (it never yields) until an inline call on the same
/// connection has been answered: had it run on the connection's task, the inline call could not
/// be read, and the busy call would give up at its deadline and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_spawned_call_does_not_hold_up_its_connection() {
    let answered = Arc::new(AtomicBool::new(false));
    let seen = answered.clone();
    let router = axum::Router::new()
        .route(
            SPAWNED,
            post(move || {
                let seen = seen.clone();
                async move {
                    let deadline = Instant::now() + BOUND;
                    while !seen.load(Ordering::SeqCst) {
                        if Instant::now() > deadline {
                            return "gave up";
                        }
                        std::thread::yield_now();
                    }
                    "saw the inline call"
                }
            }),
        )
        .route(INLINE, post(|| async { "inline" }));
    let (client, _stop, _served) = serve(router).await;
    let busy = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, SPAWNED).await })
    };
    // The busy call is running once the inline one can be answered at all; send it until then.
    assert_eq!(call(&client, INLINE).await, (200, "inline".to_string()));
    answered.store(true, Ordering::SeqCst);
    assert_eq!(
        busy.await.expect("busy call"),
        (200, "saw the inline call".to_string())
    );
}

/// An inline call that panics is reset alone: the connection and the other calls on it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_inline_call_resets_only_its_stream() {
    let router = axum::Router::new()
        .route(INLINE, post(|| async { "fine" }))
        .route(
            "/etcdserverpb.KV/DeleteRange",
            post(|| async {
                panic!("a handler bug");
                #[allow(unreachable_code)]
                ""
            }),
        );
    let (client, _stop, _served) = serve(router).await;
    let reset = send(
        &client,
        hyper::Request::post("http://localhost/etcdserverpb.KV/DeleteRange"),
    )
    .await;
    assert!(reset.is_err(), "the panicking call was answered: {reset:?}");
    for _ in 0..3 {
        assert_eq!(call(&client, INLINE).await, (200, "fine".to_string()));
    }
}

/// A stop while an inline call waits: the call is answered, then the connection closes and
/// `serve_connection` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_the_call_in_flight_finish() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let router = axum::Router::new().route(
        INLINE,
        post(move || {
            let started_tx = started_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                if let Some(tx) = started_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release_rx.lock().await.take() {
                    let _ = rx.await;
                }
                "finished"
            }
        }),
    );
    let (client, stop, served) = serve(router).await;
    let in_flight = tokio::spawn(async move { call(&client, INLINE).await });
    tokio::time::timeout(BOUND, started_rx)
        .await
        .expect("the call started within the bound")
        .expect("started");
    stop.send(()).expect("stop");
    release_tx.send(()).expect("release");
    assert_eq!(
        in_flight.await.expect("call"),
        (200, "finished".to_string())
    );
    tokio::time::timeout(BOUND, served)
        .await
        .expect("the connection closed within the bound")
        .expect("served");
}

/// A CONNECT is refused with 405 before any routing: nothing here tunnels, and the connection goes
/// on serving other calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused() {
    let router = axum::Router::new().route(INLINE, post(|| async { "fine" }));
    let (client, _stop, _served) = serve(router).await;
    let resp = send(&client, hyper::Request::connect("localhost:2379"))
        .await
        .expect("a response");
    assert_eq!(resp.status(), 405);
    assert_eq!(call(&client, INLINE).await, (200, "fine".to_string()));
}

/// An executor whose connection has ended holds nothing: a stream handed to it then runs in a task
/// of its own, instead of waiting in a list nobody polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_outliving_its_connection_spawns() {
    let started: Arc<Started> = Arc::default();
    let executor = ConnExecutor {
        started: Arc::downgrade(&started),
        next_inline: Arc::new(AtomicBool::new(true)),
    };
    drop(started);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    hyper::rt::Executor::execute(&executor, async move {
        let _ = tx.send(());
    });
    tokio::time::timeout(BOUND, rx)
        .await
        .expect("ran within the bound")
        .expect("ran");
}
