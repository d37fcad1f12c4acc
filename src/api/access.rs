//! Who may call the plain-HTTP endpoints from where: etcd's `--cors` and `--host-whitelist`.
//!
//! Both apply, as in etcd, to every HTTP request that is not a gRPC call: the JSON gateway
//! (`/v3/...`), `/health`, `/version`, `/metrics`, and on the REST listener the seed's API and the
//! console. gRPC calls (`content-type: application/grpc...`) pass untouched, since no browser
//! makes them.
//!
//! - **CORS.** When `--cors` allows every origin (`*`, etcd's default) every answer carries
//!   `Access-Control-Allow-Origin: *`; otherwise an answer to a request whose `Origin` is on the
//!   list names that origin, and any other origin gets no CORS header (the browser then refuses
//!   to hand the answer to the page; the server still answers, as etcd's does). The allowed
//!   methods and headers are etcd's, `authorization` among them, so a page can send a token. An
//!   `OPTIONS` request (a preflight) is answered `200` with those headers and no body.
//! - **Host whitelist** (DNS rebinding, CVE-2018-5702). On a plain-HTTP listener a request whose
//!   `Host` (without its port) is not on `--host-whitelist` is refused with `421 Misdirected
//!   Request` and etcd's explanation, before anything else runs, so that a hostile web page whose
//!   name was made to resolve to 127.0.0.1 cannot read or write the store through a user's browser.
//!   `*` (the default) allows every host. A TLS listener checks no host: the certificate already
//!   ties the connection to the server's names.
//!
//! Left out: etcd's `/v3beta/` to `/v3/` rewrite (this server's gateway has never served
//! `/v3beta`), and CORS on the peer port (etcd's peer handler has none either).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// A set of names that is either everything (`*`) or an explicit list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// `*` or an empty flag: every name.
    All,
    /// Exactly these (compared as written, as etcd compares them).
    Only(Vec<String>),
}

impl Allowed {
    /// Parses a comma-separated flag value: empty, or containing `*`, means every name.
    pub fn parse(value: &str) -> Allowed {
        let names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.is_empty() || names.iter().any(|n| n == "*") {
            Allowed::All
        } else {
            Allowed::Only(names)
        }
    }

    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Allowed::All => true,
            Allowed::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The access rules of one listener.
#[derive(Clone, Debug)]
pub struct Access {
    /// `--cors`: origins whose pages may read the answers.
    pub cors: Allowed,
    /// `--host-whitelist`, or `None` on a TLS listener (which checks no host).
    pub hosts: Option<Allowed>,
}

/// etcd's answer to a request for a host that is not whitelisted.
fn misdirected(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist \"{host}\"\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    )
}

/// The host a request names, without its port: the `Host` header for HTTP/1.1, the URI's
/// authority for HTTP/2.
fn host_of(req: &Request) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    strip_port(&raw).to_string()
}

/// `host:port` → `host`; `[::1]:80` → `::1`; a name without a port is returned as it is.
fn strip_port(hostport: &str) -> &str {
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match hostport.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address, no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => hostport,
    }
}

/// Whether `req` is a gRPC call, which these rules leave alone.
fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The middleware: checks the host, answers preflights, and adds the CORS headers.
pub async fn check(
    axum::extract::State(access): axum::extract::State<Arc<Access>>,
    req: Request,
    next: Next,
) -> Response {
    if is_grpc(&req) {
        return next.run(req).await;
    }
    if let Some(hosts) = &access.hosts {
        let host = host_of(&req);
        if !hosts.allows(&host) {
            tracing::warn!(%host, "rejecting HTTP request to prevent DNS rebinding attacks");
            let mut refused = (StatusCode::MISDIRECTED_REQUEST, misdirected(&host)).into_response();
            let h = refused.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            return refused;
        }
    }
    let origin = match &access.cors {
        Allowed::All => Some(HeaderValue::from_static("*")),
        Allowed::Only(_) => req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| access.cors.allows(o)))
            .cloned(),
    };
    let mut response = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
    response
}

/// `router` with these rules in front of it.
pub fn layer(router: axum::Router, access: Access) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        check,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_or_empty_allows_all() {
        assert_eq!(Allowed::parse("*"), Allowed::All);
        assert_eq!(Allowed::parse(""), Allowed::All);
        assert_eq!(Allowed::parse("a,*"), Allowed::All);
        let only = Allowed::parse("localhost, 127.0.0.1");
        assert!(only.allows("localhost"));
        assert!(only.allows("127.0.0.1"));
        assert!(!only.allows("evil.example"));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("localhost:2379"), "localhost");
        assert_eq!(strip_port("localhost"), "localhost");
        assert_eq!(strip_port("[::1]:2379"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }
}
