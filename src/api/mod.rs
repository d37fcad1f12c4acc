//! The client-facing APIs. Each one only parses and validates, calls the [`crate::server::Server`]
//! handle, and maps results and errors to its wire format; none of them changes state itself.
//!
//! [`serve`] accepts the connections of every listener; `conn` serves each one (HTTP/1.1 or HTTP/2,
//! and which calls run on the connection's own task).

mod conn;
pub mod gateway;
pub mod grpc;
pub mod rest;

use std::future::Future;

use axum::serve::Listener;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::Server;

/// How long a stop waits for the calls in flight before it closes their connections: etcd's default
/// request timeout (5 s plus two election timeouts of 1 s), which etcd waits as well. Streams that
/// never end on their own, such as a client's `LeaseKeepAlive`, are cut there.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

/// Binds every API listener first (so a busy port fails the start), then serves until `shutdown`
/// resolves; in-flight requests finish before it returns, or are cut after [`DRAIN_TIMEOUT`].
pub async fn serve(
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut listeners = Vec::new();
    let rest_addr = Config::socket_addr(&server.config().listen_rest_url)?;
    listeners.push((
        bind(rest_addr, "--listen-rest-url").await?,
        conn::Routes {
            router: rest::router(server.clone()),
            kv: None,
            max_concurrent_streams: server.config().max_concurrent_streams,
            round: conn::run_round,
        },
    ));
    tracing::info!(addr = %rest_addr, "serving the REST API");
    for url in &server.config().listen_client_urls {
        let addr = Config::socket_addr(url)?;
        listeners.push((
            bind(addr, "--listen-client-urls").await?,
            conn::Routes {
                router: client_router(server.clone()),
                kv: Some(grpc::unary::KvCalls::new(server.clone())),
                max_concurrent_streams: server.config().max_concurrent_streams,
                round: server.call_round(),
            },
        ));
        tracing::info!(%addr, "serving the etcd v3 API (gRPC and JSON gateway)");
    }
    // `true` once the server is stopping; a watch channel, so that a connection accepted at that
    // moment still sees it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // `true` once the drain has taken too long: connections still open are dropped.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone of `open_tx`; when the last one ends, `open_rx` closes.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    for (mut listener, routes) in listeners {
        let mut stop = stop_rx.clone();
        let cut = cut_rx.clone();
        let open_tx = open_tx.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = Listener::accept(&mut listener) => accepted,
                    _ = stop.wait_for(|&stopping| stopping) => break,
                };
                // Small request/response exchanges must not wait for Nagle's algorithm to meet the
                // peer's delayed ACK (a ~40 ms stall per request seen with etcd's Go benchmark tool).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let mut conn_stop = stop.clone();
                let mut cut = cut.clone();
                let open_tx = open_tx.clone();
                let routes = routes.clone();
                tokio::spawn(async move {
                    let stopping = async move {
                        let _ = conn_stop.wait_for(|&stopping| stopping).await;
                    };
                    tokio::select! {
                        _ = conn::serve_connection(tcp, routes, stopping) => {}
                        // Dropping the connection cancels its calls and closes the socket.
                        _ = cut.wait_for(|&cut| cut) => {}
                    }
                    drop(open_tx);
                });
            }
        });
    }
    drop(open_tx);
    shutdown.await;
    // Watch streams never end on their own: tell them first, or the drain below waits forever.
    server.begin_shutdown();
    let _ = stop_tx.send(true);
    // In-flight requests finish before this returns, or are cut after the drain timeout.
    if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?DRAIN_TIMEOUT,
            "calls still open after the drain timeout: closing their connections"
        );
        let _ = cut_tx.send(true);
        let _ = open_rx.recv().await;
    }
    Ok(())
}

/// What the client port serves: gRPC, plus etcd's plain-HTTP endpoints.
pub(crate) fn client_router(server: Server) -> axum::Router {
    grpc::router(server.clone())
        .merge(grpc::gateway_router(server.clone()))
        .merge(rest::etcd_http_router(server))
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr} ({flag}): {e}")))
}
