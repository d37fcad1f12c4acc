//! `mini_etcd_rest_requests_total{path,code}`: the requests the REST listener answered, by route and
//! HTTP status.
//!
//! The label values are bounded: `path` is one of the seed API's fixed routes ([`Route`]), and every
//! other path (the web console, the JSON gateway mounted beside it, a typo) is `other`; `code` is a
//! status between 100 and 599. The table is fixed, a counter per route and status, so counting a
//! request is one relaxed atomic add at an index, with no map and no lock. A request is counted
//! once its handler has answered: a long poll when it returns, an event stream when its headers
//! go out (its status cannot change after that). A client that goes away before the answer is not
//! counted, as no status was sent.
//!
//! It counts the REST listener only (`--listen-rest-url`); `/health`, `/version` and `/metrics` on
//! the client port are etcd's endpoints there, and gateway calls are counted as the gRPC methods
//! they call (`crate::api::grpc::stats`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The routes `path` names; everything else is [`Route::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Put,
    Get,
    Delete,
    Watch,
    Compact,
    Health,
    Version,
    Metrics,
    Other,
}

impl Route {
    /// Every route, in table order.
    pub const ALL: [Route; 9] = [
        Route::Put,
        Route::Get,
        Route::Delete,
        Route::Watch,
        Route::Compact,
        Route::Health,
        Route::Version,
        Route::Metrics,
        Route::Other,
    ];

    /// The route of a request path (the query is not part of it).
    pub fn of(path: &str) -> Route {
        match path {
            "/put" => Route::Put,
            "/get" => Route::Get,
            "/delete" => Route::Delete,
            "/watch" => Route::Watch,
            "/compact" => Route::Compact,
            "/health" => Route::Health,
            "/version" => Route::Version,
            "/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    /// The `path` label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Put => "/put",
            Route::Get => "/get",
            Route::Delete => "/delete",
            Route::Watch => "/watch",
            Route::Compact => "/compact",
            Route::Health => "/health",
            Route::Version => "/version",
            Route::Metrics => "/metrics",
            Route::Other => "other",
        }
    }
}

/// The lowest HTTP status counted; [`STATUSES`] follow it.
const FIRST_STATUS: u16 = 100;
/// How many statuses a route has counters for: 100 to 599, every status HTTP defines a class for.
const STATUSES: usize = 500;

/// A counter per route and status.
pub struct RestRequests {
    counts: [[AtomicU64; STATUSES]; Route::ALL.len()],
}

/// The REST listener's table (process-wide, as the gRPC one is).
pub static REST: RestRequests = RestRequests::new();

impl Default for RestRequests {
    fn default() -> Self {
        RestRequests::new()
    }
}

impl RestRequests {
    /// A table of zeros.
    pub const fn new() -> RestRequests {
        RestRequests {
            counts: [const { [const { AtomicU64::new(0) }; STATUSES] }; Route::ALL.len()],
        }
    }

    /// Counts a request to `route` answered `status`; a status outside 100..=599 (which hyper
    /// would not send) is not counted.
    pub fn count(&self, route: Route, status: u16) {
        if let Some(c) = status
            .checked_sub(FIRST_STATUS)
            .and_then(|i| self.counts[route as usize].get(usize::from(i)))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Every non-zero counter: route, status, count, in table order.
    pub fn nonzero(&self) -> Vec<(Route, u16, u64)> {
        let mut out = Vec::new();
        for route in Route::ALL {
            for (i, c) in self.counts[route as usize].iter().enumerate() {
                let n = c.load(Relaxed);
                if n != 0 {
                    // `i` is below STATUSES, so this fits.
                    out.push((route, FIRST_STATUS + i as u16, n));
                }
            }
        }
        out
    }
}

/// Middleware on the REST listener's router: counts every request once it is answered.
pub async fn count_requests(req: Request, next: Next) -> Response {
    let route = Route::of(req.uri().path());
    let response = next.run(req).await;
    REST.count(route, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_statuses() {
        let t = RestRequests::new();
        t.count(Route::of("/put"), 200);
        t.count(Route::of("/put"), 200);
        t.count(Route::of("/ui/index.html"), 404);
        t.count(Route::of("/v3/kv/range"), 599);
        t.count(Route::of("/get"), 99);
        t.count(Route::of("/get"), 600);
        assert_eq!(
            t.nonzero(),
            vec![
                (Route::Put, 200, 2),
                (Route::Other, 404, 1),
                (Route::Other, 599, 1)
            ]
        );
        for r in Route::ALL {
            assert_eq!(Route::of(r.label()), r);
        }
    }
}
