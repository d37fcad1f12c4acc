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
//! - `Content-Security-Policy` allows scripts, styles and connections only from the page's own
//!   origin, no inline script or style, no plugins, no framing, and form posts nowhere: a value
//!   stored in etcd that looks like HTML can never run, even if the script had a bug that put it
//!   into the page as markup (it does not: data reaches the page only as text nodes and attribute
//!   values). The charts are inline SVG elements built by the script, which needs no `img-src`.
//! - `Cache-Control: no-cache` with an `ETag` (a hash of the file): the browser keeps a copy but
//!   asks each time, and gets `304 Not Modified` while the binary is the same, so an upgraded
//!   server never runs an old script against a new API.
//! - `Referrer-Policy: no-referrer`, so that key names in the console's URL never leak.
//!
//! Left out on purpose: a separate port or path prefix for the console (it is one more client of
//! the REST listener), CORS (the gateway is mounted on the same origin instead), and any server-side
//! session: the token lives in the tab's `sessionStorage` and dies with it.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::Digest as _;

/// The page: markup only, no inline script or style.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// The whole console's behaviour.
const APP_JS: &str = include_str!("assets/app.js");
/// Its looks, light and dark.
const APP_CSS: &str = include_str!("assets/app.css");

/// The policy every console response carries. `connect-src 'self'` is what keeps the console on
/// the public APIs of the server that served it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

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

    /// The file, or 304 when the browser already holds this version.
    fn respond(&self, headers: &HeaderMap) -> Response {
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
        security_headers(h);
        response
    }
}

/// The headers every console response carries, whatever its status.
fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
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

/// The console's routes, to merge into the REST router.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|h: HeaderMap| async move { INDEX.respond(&h) }))
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { SCRIPT.respond(&h) }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { STYLE.respond(&h) }),
        )
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
    fn etag_revalidates() {
        let mut h = HeaderMap::new();
        let first = SCRIPT.respond(&h);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        let again = SCRIPT.respond(&h);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
