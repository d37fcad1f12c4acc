//! One mini-etcd member per process, on a temporary data dir, for the request targets. Nothing
//! listens: requests go through the routers in process.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use futures::FutureExt;
use http::{Request, Response};
use tower::ServiceExt;

use mini_etcd::config::Config;
use mini_etcd::server::Server;

/// How long one request may take before the target stops waiting (long polls and streams would
/// otherwise run for their own timeouts). Dropping the response is what a client that goes away
/// does, so this is no failure.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(300);

pub struct Shared {
    pub runtime: tokio::runtime::Runtime,
    pub server: Server,
    _dir: tempfile::TempDir,
}

/// The process's member, started on first use.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::with_data_dir(dir.path()).expect("config");
        let server = runtime
            .block_on(Server::start(config))
            .expect("server start");
        Shared {
            runtime,
            server,
            _dir: dir,
        }
    })
}

/// Fails the input if the member stopped itself (a panic on one of its core threads).
pub fn assert_alive(server: &Server) {
    if let Some(e) = server.fatal_error() {
        panic!("the member stopped: {e}");
    }
}

/// Deactivates every alarm an input raised (the Alarm call accepts activations, as etcd's does):
/// a NOSPACE alarm left on would refuse every later write, and the write paths would go unfuzzed.
pub fn disarm(shared: &Shared) {
    use mini_etcd::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest};
    let server = &shared.server;
    shared.runtime.block_on(async {
        let Ok(active) = server.alarm(AlarmRequest::default()).await else {
            return;
        };
        for a in active.alarms {
            let _ = tokio::time::timeout(
                REQUEST_DEADLINE,
                server.alarm(AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: a.member_id,
                    alarm: a.alarm,
                }),
            )
            .await;
        }
    });
}

/// Sends `req` through `router` on the process's member, runs `check` on the response for at most
/// [`REQUEST_DEADLINE`] (a panic in either fails the input), then checks the member is alive and
/// clears the alarms the input raised.
pub fn send_and_check<F>(router: axum::Router, req: Request<Body>, check: fn(Response<Body>) -> F)
where
    F: Future<Output = ()>,
{
    let s = shared();
    let fut = AssertUnwindSafe(async move {
        let resp = router
            .oneshot(req)
            .await
            .expect("axum routers are infallible");
        check(resp).await
    })
    .catch_unwind();
    let outcome = s
        .runtime
        .block_on(async { tokio::time::timeout(REQUEST_DEADLINE, fut).await });
    if let Ok(Err(panic)) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_alive(&s.server);
    disarm(s);
}
