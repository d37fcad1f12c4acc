//! The built-in web console: three static files at `/ui` on the REST listener.
//!
//! The console is a page, a script and a style sheet, written by hand and compiled into the binary
//! with `include_str!`, so the server needs no files on disk, no CDN and no Node build step. This
//! module only serves them; it has no handler of its own that reads or changes the store. Every
//! thing the console shows or does, it does through the public APIs on the same listener: the seed's
//! REST API (`/put`, `/get`, `/delete`, `/watch?stream=true`, `/health`, `/metrics`) and etcd's JSON
//! gateway (`/v3/...`), which [`crate::api::rest::router`] mounts there too so that the console can
//! reach it from its own origin. Whoever can use the console could therefore do the same with
//! `curl`; the console adds no back door, and auth is checked exactly where it is checked for
//! them (the console logs in with `/v3/auth/authenticate` and sends the token).
//!
//! What is served, and why each header:
//!
//! - `/ui` redirects to `/ui/`, so that the page's relative asset URLs resolve under `/ui/`.
//! - `Content-Type` is exact, with `X-Content-Type-Options: nosniff`, so the browser never guesses.
//! - `Content-Security-Policy` allows scripts and styles only from the page's own origin,
//!   connections only to it and to the client URLs of the cluster's members (the console asks each
//!   member for its own status through that member's JSON gateway, which etcd's `--cors` lets a
//!   page of another origin read), no inline script or style, no plugins, no framing, and form
//!   posts nowhere: a value stored in etcd that looks like HTML can never run, even if the script
//!   had a bug that put it into the page as markup (it does not: data reaches the page only as text
//!   nodes and attribute values), and the page can send nothing anywhere but to the cluster. The
//!   members' URLs are those of the membership when the page is loaded: a member added later is
//!   reachable after a reload. The charts are inline SVG elements built by the script, which needs
//!   no `img-src`.
//! - `Cache-Control: no-cache` with an `ETag` (a hash of the file): the browser keeps a copy but
//!   asks each time, and gets `304 Not Modified` while the binary is the same, so an upgraded
//!   server never runs an old script against a new API.
//! - `Referrer-Policy: no-referrer`, so that key names in the console's URL never leak.
//!
//! Left out on purpose: a separate port or path prefix for the console (it is one more client of
//! the REST listener; the gateway is mounted on its origin, so the console needs CORS only to reach
//! the other members), and any server-side session: the token lives in the tab's `sessionStorage`
//! and dies with it.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::Digest as _;

use crate::server::Server;

/// The page: markup only, no inline script or style.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// The whole console's behaviour.
const APP_JS: &str = include_str!("assets/app.js");
/// Its looks, light and dark.
const APP_CSS: &str = include_str!("assets/app.css");

/// The policy every console response carries, but for `connect-src`, which [`policy`] completes.
const POLICY_HEAD: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; connect-src 'self'";

/// The policy with `connect-src` naming the origins of `client_urls` too: what keeps the console
/// on the public APIs of the cluster that served it.
pub fn policy<'a>(client_urls: impl IntoIterator<Item = &'a str>) -> String {
    let mut origins: Vec<String> = client_urls
        .into_iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(|u| u.origin().ascii_serialization())
        .collect();
    origins.sort();
    origins.dedup();
    let mut p = POLICY_HEAD.to_string();
    for o in origins {
        p.push(' ');
        p.push_str(&o);
    }
    p
}

/// One embedded file: its bytes, content type and entity tag.
struct Asset {
    /// The file as compiled in.
    body: &'static str,
    /// Sent as is, so the browser never has to sniff (and `nosniff` forbids it to).
    content_type: &'static str,
    /// A hash of `body`: changes exactly when the binary serves a different file.
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = sha2::Sha256::digest(body.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            etag: format!("\"{hex}\""),
        }
    }

    /// The file, or 304 when the browser already holds this version, under `policy`.
    fn respond(&self, headers: &HeaderMap, policy: &str) -> Response {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|tag| tag.trim() == self.etag));
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = self.body.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            r
        };
        let h = response.headers_mut();
        if let Ok(tag) = HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, tag);
        }
        security_headers(h, policy);
        response
    }
}

/// The headers every console response carries, whatever its status.
fn security_headers(h: &mut HeaderMap, policy: &str) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // A policy that cannot be a header value (it cannot: origins are ASCII) falls back to the
    // strictest one.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(policy).unwrap_or(HeaderValue::from_static(POLICY_HEAD)),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(INDEX_HTML, "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(APP_JS, "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| Asset::new(APP_CSS, "text/css; charset=utf-8"));

/// The page, under a policy that lets it reach every member's client URLs.
async fn index(State(server): State<Server>, h: HeaderMap) -> Response {
    let members = server.member_list().members;
    let urls = members.iter().flat_map(|m| m.client_ur_ls.iter());
    INDEX.respond(&h, &policy(urls.map(String::as_str)))
}

/// The console's routes, to merge into the REST router.
pub fn router(server: Server) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { SCRIPT.respond(&h, POLICY_HEAD) }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { STYLE.respond(&h, POLICY_HEAD) }),
        )
        .with_state(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_no_inline_script_or_style() {
        // The policy forbids them; one would silently not run.
        let lower = INDEX_HTML.to_ascii_lowercase();
        for tag in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
            let end = tag.find('>').unwrap_or(tag.len());
            assert!(tag[..end].contains("src="), "inline <script> in index.html");
        }
        assert!(!lower.contains("<style"), "inline <style> in index.html");
        assert!(!lower.contains(" style="), "style attribute in index.html");
        assert!(!lower.contains(" onclick="), "inline handler in index.html");
    }

    #[test]
    fn policy_names_each_member_origin_once() {
        let p = policy([
            "http://127.0.0.1:2379",
            "http://127.0.0.1:2379/",
            "https://10.0.0.2:2379",
            "unix:///tmp/sock",
        ]);
        assert!(
            p.ends_with("connect-src 'self' http://127.0.0.1:2379 https://10.0.0.2:2379"),
            "{p}"
        );
        assert!(p.contains("script-src 'self';"), "{p}");
        assert_eq!(policy([]), POLICY_HEAD);
    }

    #[test]
    fn etag_revalidates() {
        let mut h = HeaderMap::new();
        let first = SCRIPT.respond(&h, POLICY_HEAD);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        let again = SCRIPT.respond(&h, POLICY_HEAD);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
