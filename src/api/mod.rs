//! The client-facing APIs. Each one only parses and validates, calls the [`crate::server::Server`]
//! handle, and maps results and errors to its wire format; none of them changes state itself.

pub mod gateway;
pub mod rest;

use std::future::Future;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::Server;

/// Binds every API listener first (so a busy port fails the start), then serves until `shutdown`
/// resolves; in-flight requests finish before it returns.
pub async fn serve(
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = Config::socket_addr(&server.config().listen_rest_url)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::InvalidArgument(format!("cannot listen on {addr} (--listen-rest-url): {e}"))
    })?;
    tracing::info!(%addr, "serving the REST API");
    axum::serve(listener, rest::router(server))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
