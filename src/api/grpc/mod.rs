//! The etcd v3 gRPC API: the services etcd clients call, on `--listen-client-urls`: KV, Watch,
//! Lease, Cluster, Maintenance and Auth, and beside them etcd's Lock and Election.
//!
//! Each service only validates, calls the [`Server`] handle and maps errors with
//! [`crate::Error::to_status`] (etcd's codes and texts). Responses carry a full `ResponseHeader`
//! (cluster id, member id, revision, Raft term), filled by the server.
//!
//! The same port also serves etcd's JSON gateway (`/v3/...`) and `/health`, `/version`, `/metrics`:
//! gRPC is HTTP/2 and the gateway HTTP/1.1, and one listener speaks both.
//!
//! tonic serves every service, except the KV service's unary calls in their common form: those take
//! [`unary`], a shorter path to the same `KvService` methods with the same codes and texts.
//!
//! Every call, whichever path serves it (and the gateway's, as etcd counts them), is counted in
//! [`stats`], etcd's `grpc_server_*` series on `/metrics`.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod stats;
pub mod unary;
pub mod watch;

use axum::Router;
use tonic::Status;

use crate::auth::{Caller, ClientCertName};

use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::server::Server;

/// The metadata key etcd clients send their auth token under.
pub const TOKEN_METADATA_KEY: &str = "token";

/// The caller a request with these HTTP/2 headers (gRPC metadata) and extensions is: the token
/// under `token`, as etcd clients send it, or under `authorization` (grpc-gateway's key); without
/// one, the user its connection's client certificate names ([`ClientCertName`]). With auth
/// disabled, nothing is looked at.
pub fn caller_of_headers(
    server: &Server,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Caller, Status> {
    if !server.auth().is_enabled() {
        return Ok(Caller::ANONYMOUS);
    }
    server
        .caller_or_cert(token_of(headers), extensions.get::<ClientCertName>())
        .map_err(|e| e.to_status())
}

/// [`caller_of_headers`] for a tonic request.
pub fn caller_of<T>(server: &Server, req: &tonic::Request<T>) -> Result<Caller, Status> {
    caller_of_headers(server, req.metadata().as_ref(), req.extensions())
}

/// The auth token of a request: under `token`, as etcd clients send it, or under `authorization`
/// (grpc-gateway's key).
pub fn token_of(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(TOKEN_METADATA_KEY)
        .or_else(|| headers.get(http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
}

/// For the Lock and Election services, which act on the keys under `name/` for their caller: with
/// auth enabled the caller must be allowed to read (and, for `write`, to write) that whole prefix,
/// as the reads, puts and deletes etcd's services make for it would need. Refusals keep the
/// services' code (Unknown) with etcd's text.
pub fn check_concurrency<T>(
    server: &Server,
    req: &tonic::Request<T>,
    key: &[u8],
    write: bool,
) -> Result<(), Status> {
    if !server.auth().is_enabled() {
        return Ok(());
    }
    let caller = caller_of(server, req)?;
    let end = crate::watch::prefix_end(key);
    let auth = server.auth();
    auth.check_read(&caller, key, &end)
        .and_then(|()| {
            if write {
                auth.check_write(&caller, key, &end)
            } else {
                Ok(())
            }
        })
        .map_err(|e| e.to_client_side_status())
}

/// The keys of election or lock `name`: `name/`.
pub fn concurrency_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// gRPC's own framing on top of a request, allowed beyond `--max-request-bytes` (etcd allows 512 KiB),
/// so that an oversize request reaches our check and gets etcd's "request is too large" text.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's JSON gateway (`/v3/...`) over the same service implementations gRPC uses.
pub fn gateway_router(server: Server) -> Router {
    crate::api::gateway::router(
        std::sync::Arc::new(kv::KvService::new(server.clone())),
        std::sync::Arc::new(watch::WatchService::new(server.clone())),
        std::sync::Arc::new(lease::LeaseService::new(server.clone())),
        std::sync::Arc::new(cluster::ClusterService::new(server.clone())),
        std::sync::Arc::new(maintenance::MaintenanceService::new(server.clone())),
        std::sync::Arc::new(auth::AuthService::new(server.clone())),
        std::sync::Arc::new(lock::LockService::new(server.clone())),
        std::sync::Arc::new(election::ElectionService::new(server.clone())),
        server.config().max_request_bytes,
    )
}

/// The largest request message a service decodes: `--max-request-bytes` plus gRPC's overhead.
pub fn max_message_bytes(server: &Server) -> usize {
    server.config().max_request_bytes + GRPC_OVERHEAD_BYTES
}

/// Every gRPC service, as one axum router.
pub fn router(server: Server) -> Router {
    let max = max_message_bytes(&server);
    tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(server.clone())).max_decoding_message_size(max),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(server.clone())).max_decoding_message_size(max),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(server.clone())).max_decoding_message_size(max),
    )
    .add_service(MaintenanceServer::new(
        maintenance::MaintenanceService::new(server.clone()),
    ))
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        server.clone(),
    )))
    .add_service(AuthServer::new(auth::AuthService::new(server.clone())))
    .add_service(
        LockServer::new(lock::LockService::new(server.clone())).max_decoding_message_size(max),
    )
    .add_service(
        ElectionServer::new(election::ElectionService::new(server.clone()))
            .max_decoding_message_size(max),
    )
    .into_axum_router()
    .layer(axum::middleware::from_fn(stats::count_calls))
}
