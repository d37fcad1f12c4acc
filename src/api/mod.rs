//! The client-facing APIs. Each one only parses and validates, calls the [`crate::server::Server`]
//! handle, and maps results and errors to its wire format; none of them changes state itself.

pub mod gateway;
pub mod grpc;
pub mod rest;

use std::future::Future;

use axum::serve::ListenerExt;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::Server;

/// Binds every API listener first (so a busy port fails the start), then serves until `shutdown`
/// resolves; in-flight requests finish before it returns.
pub async fn serve(
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut listeners = Vec::new();
    let rest_addr = Config::socket_addr(&server.config().listen_rest_url)?;
    listeners.push((
        bind(rest_addr, "--listen-rest-url").await?,
        rest::router(server.clone()),
    ));
    tracing::info!(addr = %rest_addr, "serving the REST API");
    for url in &server.config().listen_client_urls {
        let addr = Config::socket_addr(url)?;
        listeners.push((
            bind(addr, "--listen-client-urls").await?,
            client_router(server.clone()),
        ));
        tracing::info!(%addr, "serving the etcd v3 API (gRPC and JSON gateway)");
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for (listener, router) in listeners {
        let mut stop = stop_tx.subscribe();
        // Small request/response exchanges must not wait for Nagle's algorithm to meet the peer's
        // delayed ACK (a ~40 ms stall per request seen with etcd's Go benchmark tool).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.recv().await;
                })
                .await
        }));
    }
    shutdown.await;
    // Watch streams never end on their own: tell them first, or the drain below waits forever.
    server.begin_shutdown();
    let _ = stop_tx.send(());
    for t in tasks {
        t.await
            .map_err(|e| Error::Internal(format!("listener task failed: {e}")))??;
    }
    Ok(())
}

/// What the client port serves: gRPC, plus etcd's plain-HTTP endpoints.
fn client_router(server: Server) -> axum::Router {
    grpc::router(server.clone())
        .merge(grpc::gateway_router(server.clone()))
        .merge(rest::etcd_http_router(server))
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr} ({flag}): {e}")))
}
