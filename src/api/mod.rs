//! The client-facing APIs. Each one only parses and validates, calls the [`crate::server::Server`]
//! handle, and maps results and errors to its wire format; none of them changes state itself.
//!
//! [`serve`] accepts the connections of every listener; `conn` serves each one (HTTP/1.1 or HTTP/2,
//! which calls run on the connection's own task, and when a quiet one is closed).
//!
//! Descriptors are bounded: the REST and client listeners together hold at most
//! `--max-client-connections` connections ([`Slots`]); beyond it a listener stops accepting, and new
//! connections wait in the kernel's listen queue until one closes, rather than the server running
//! out of descriptors for its WAL and backend. The REST listener has [`REST_RESERVE`] more of its
//! own, so `/health` there still answers when clients fill the rest. Accepted sockets get TCP
//! keep-alive ([`TCP_KEEPALIVE`], etcd's), so a client that vanished without closing is noticed
//! even when the connection is idle.
//!
//! An `https://` listen URL (`--listen-client-urls`, `--listen-rest-url`) serves TLS with the client
//! certificate flags (`crate::tls`). The handshake runs on the connection's own task, never in the
//! accept loop, and must finish within the header timeout, so a client that opens a socket and
//! stalls holds one slot, not the listener. With `--client-cert-auth`, the Common Name of the
//! verified client certificate travels with every request of the connection
//! ([`crate::auth::ClientCertName`]).

pub mod access;
mod conn;
pub mod gateway;
pub mod grpc;
pub mod rest;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::Server;

/// How long a stop waits for the calls in flight before it closes their connections: etcd's default
/// request timeout (5 s plus two election timeouts of 1 s), which etcd waits as well. Streams that
/// never end on their own, such as a client's `LeaseKeepAlive`, are cut there.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

/// Connections the REST listener may hold beyond `--max-client-connections`, so that `/health` and
/// an operator's requests get through when clients hold every other slot.
pub const REST_RESERVE: usize = 16;

/// Idle time before TCP keep-alive probes start, and the time between probes, on every accepted
/// socket: etcd's keep-alive listener sets 30 s. With Linux's default 9 probes, a peer that is gone
/// is noticed within about 5 minutes.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The connection slots of the API listeners: one pool they all share, and optionally a reserve
/// that only one listener draws on when the pool is empty. A connection holds its slot (a permit)
/// until it closes.
#[derive(Clone)]
struct Slots {
    /// Shared by every listener.
    shared: Arc<Semaphore>,
    /// This listener's own, used only when `shared` has none.
    reserve: Option<Arc<Semaphore>>,
}

impl Slots {
    /// A slot, once one is free. Warns when it has to wait, once until a slot is free at once again.
    async fn acquire(&self, waited: &mut bool, what: &str) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.shared).try_acquire_owned() {
            *waited = false;
            return Some(p);
        }
        if let Some(p) = self
            .reserve
            .as_ref()
            .and_then(|r| Arc::clone(r).try_acquire_owned().ok())
        {
            return Some(p);
        }
        if !*waited {
            *waited = true;
            tracing::warn!(
                listener = what,
                "--max-client-connections reached: new connections wait until one closes"
            );
        }
        let shared = Arc::clone(&self.shared).acquire_owned();
        match &self.reserve {
            None => shared.await.ok(),
            Some(r) => tokio::select! {
                biased;
                p = shared => p.ok(),
                p = Arc::clone(r).acquire_owned() => p.ok(),
            },
        }
    }
}

/// TCP_NODELAY and keep-alive on an accepted socket; failures only cost latency or liveness.
fn tune_socket(tcp: &tokio::net::TcpStream) {
    // Small request/response exchanges must not wait for Nagle's algorithm to meet the peer's
    // delayed ACK (a ~40 ms stall per request seen with etcd's Go benchmark tool).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keep-alive");
    }
}

/// Binds every API listener first (so a busy port fails the start), then serves until `shutdown`
/// resolves; in-flight requests finish before it returns, or are cut after [`DRAIN_TIMEOUT`].
pub async fn serve(
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = server.config();
    let liveness = conn::Liveness {
        header_timeout: config.http_read_header_timeout,
        ping_interval: config.grpc_keepalive_interval,
        ping_timeout: config.grpc_keepalive_timeout,
    };
    let soft_limit = crate::fdlimit::limits().map(|(soft, _)| soft);
    let max_connections = config
        .max_client_connections
        .unwrap_or_else(|| crate::fdlimit::default_max_connections(soft_limit));
    // Only a value the user chose can be too high; the default is derived from the limit.
    if let Some(soft) = soft_limit.filter(|&soft| {
        config.max_client_connections.is_some()
            && (max_connections + REST_RESERVE) as u64 + crate::fdlimit::RESERVE > soft
    }) {
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            "--max-client-connections leaves fewer than {} descriptors of the open-file limit for \
             the rest of the server",
            crate::fdlimit::RESERVE
        );
    }
    tracing::info!(
        max_connections,
        rest_reserve = REST_RESERVE,
        "client connection limit"
    );
    let shared = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
    let mut listeners = Vec::new();
    let tls = ClientTls::load(config)?;
    let rest_url = &server.config().listen_rest_url;
    let rest_addr = Config::socket_addr(rest_url)?;
    listeners.push((
        bind(rest_addr, "--listen-rest-url").await?,
        tls.for_url(rest_url),
        conn::Routes {
            router: access::layer(
                rest::router(server.clone()),
                access_of(config, tls.for_url(rest_url).is_some()),
            ),
            kv: None,
            max_concurrent_streams: server.config().max_concurrent_streams,
            round: conn::run_round,
            remote: None,
            liveness,
            client_cert: None,
        },
        Slots {
            shared: Arc::clone(&shared),
            reserve: Some(Arc::new(Semaphore::new(REST_RESERVE))),
        },
        "rest",
    ));
    tracing::info!(addr = %rest_addr, "serving the REST API");
    for url in &server.config().listen_client_urls {
        let addr = Config::socket_addr(url)?;
        listeners.push((
            bind(addr, "--listen-client-urls").await?,
            tls.for_url(url),
            conn::Routes {
                router: access::layer(
                    client_router(server.clone()),
                    access_of(config, tls.for_url(url).is_some()),
                ),
                kv: Some(grpc::unary::KvCalls::new(server.clone())),
                max_concurrent_streams: server.config().max_concurrent_streams,
                round: server.call_round(),
                remote: None,
                liveness,
                client_cert: None,
            },
            Slots {
                shared: Arc::clone(&shared),
                reserve: None,
            },
            "client",
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
    for (mut listener, tls, routes, slots, what) in listeners {
        let mut stop = stop_rx.clone();
        let cut = cut_rx.clone();
        let open_tx = open_tx.clone();
        tokio::spawn(async move {
            let mut waited = false;
            loop {
                // A slot first, then the connection: without a slot the connection stays in the
                // listen queue and holds no descriptor of ours.
                let slot = tokio::select! {
                    slot = slots.acquire(&mut waited, what) => slot,
                    _ = stop.wait_for(|&stopping| stopping) => break,
                };
                let Some(slot) = slot else { break };
                let (tcp, remote) = tokio::select! {
                    accepted = Listener::accept(&mut listener) => accepted,
                    _ = stop.wait_for(|&stopping| stopping) => break,
                };
                tune_socket(&tcp);
                let mut conn_stop = stop.clone();
                let mut cut = cut.clone();
                let open_tx = open_tx.clone();
                let routes = conn::Routes {
                    remote: Some(remote),
                    ..routes.clone()
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stopping = async move {
                        let _ = conn_stop.wait_for(|&stopping| stopping).await;
                    };
                    let serve = async move {
                        match tls {
                            None => conn::serve_connection(tcp, routes, stopping).await,
                            Some(tls) => {
                                let timeout = routes.liveness.header_timeout;
                                let Some((stream, client_cert)) =
                                    tls.handshake(tcp, timeout, remote).await
                                else {
                                    return;
                                };
                                let routes = conn::Routes {
                                    client_cert,
                                    ..routes
                                };
                                conn::serve_connection(stream, routes, stopping).await
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        // Dropping the connection cancels its calls and closes the socket.
                        _ = cut.wait_for(|&cut| cut) => {}
                    }
                    drop(slot);
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

/// TLS of the client and REST listeners, loaded once at start.
#[derive(Clone)]
struct ClientTls {
    /// `None` when no certificate is configured (every URL must then be `http://`, as
    /// [`Config`] checked).
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// `--client-cert-auth`: the verified certificate's Common Name names the user.
    cert_names: bool,
}

impl ClientTls {
    fn load(config: &Config) -> Result<ClientTls> {
        let info = &config.client_tls;
        let mut urls: Vec<&url::Url> = config.listen_client_urls.iter().collect();
        urls.push(&config.listen_rest_url);
        let serves_tls = urls.iter().any(|u| u.scheme() == "https");
        for u in urls.iter().filter(|u| u.scheme() == "http") {
            // etcd serves plain there too, with the same warnings.
            if !info.is_empty() {
                tracing::warn!(url = %u, "the scheme of this client URL is HTTP while key/cert \
                    files are given: they are ignored for it");
            }
            if info.client_cert_auth {
                tracing::warn!(url = %u, "the scheme of this client URL is HTTP while \
                    --client-cert-auth is enabled: it is ignored for it");
            }
        }
        if !serves_tls {
            return Ok(ClientTls {
                acceptor: None,
                cert_names: false,
            });
        }
        let hosts = crate::tls::hosts_of(urls);
        let auto_dir = config.data_dir.join("fixtures").join("client");
        let server_config =
            crate::tls::server_config(info, &auto_dir, &hosts, crate::tls::ALPN_CLIENT)?
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "TLS key/cert (--cert-file, --key-file) must be provided for https \
                         client URLs"
                            .into(),
                    )
                })?;
        Ok(ClientTls {
            acceptor: Some(tokio_rustls::TlsAcceptor::from(server_config)),
            cert_names: info.client_cert_auth,
        })
    }

    /// What a listener on `url` uses: TLS for `https://`, nothing for `http://`.
    fn for_url(&self, url: &url::Url) -> Option<ClientTls> {
        (url.scheme() == "https" && self.acceptor.is_some()).then(|| self.clone())
    }

    /// The TLS handshake of one accepted connection, bounded by `timeout`, and the Common Name of
    /// its verified client certificate when that names the user. `None`: the handshake failed
    /// (logged at debug: a client's mistake, or a scan).
    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        timeout: Option<Duration>,
        remote: std::net::SocketAddr,
    ) -> Option<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        Option<crate::auth::ClientCertName>,
    )> {
        let acceptor = self.acceptor.as_ref()?;
        let accept = acceptor.accept(tcp);
        let accepted = match timeout {
            Some(t) => match tokio::time::timeout(t, accept).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return None;
                }
            },
            None => accept.await,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return None;
            }
        };
        let name = if self.cert_names {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::tls::common_name(cert))
                .map(crate::auth::ClientCertName)
        } else {
            None
        };
        Some((stream, name))
    }
}

/// The access rules of a listener: a TLS one checks no host (see [`access`]).
fn access_of(config: &Config, tls: bool) -> access::Access {
    access::Access {
        cors: config.cors.clone(),
        hosts: (!tls).then(|| config.host_whitelist.clone()),
    }
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
