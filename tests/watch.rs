//! Watch over REST: long-polls on one key and on a prefix, replay from a revision, lossless re-polling while
//! writes continue, the 204 timeout, many watchers released by one write, abandoned watchers freed, and the
//! Server-Sent Events stream.
//!
//! Ordering between "the watch is registered" and "the write happens" is never left to timing: a test either
//! waits for the `mini_etcd_watchers` gauge to count the watch, or watches with `rev=` so that an event that
//! already happened is replayed.

mod common;

use std::time::{Duration, Instant};

use common::{as_i64, as_str, Server};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const REGISTER_BOUND: Duration = Duration::from_secs(30);

async fn fresh() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    (dir, server)
}

/// The `events` array of a 200 watch response.
fn events(resp: &common::Resp) -> Vec<Value> {
    assert_eq!(
        resp.status, 200,
        "watch: status {} body {:?}",
        resp.status, resp.body
    );
    let body = resp.json();
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("watch response without an events array: {body}"))
        .clone()
}

fn summary(e: &Value) -> (String, String, i64) {
    (
        as_str(e, "type"),
        as_str(e, "key"),
        as_i64(e, "mod_revision"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_long_poll_sees_put_and_delete() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();

    let w = {
        let rest = rest.clone();
        tokio::spawn(async move {
            rest.watch("key=single&timeout=30", Duration::from_secs(60))
                .await
        })
    };
    rest.wait_watchers(">= 1", REGISTER_BOUND, |n| n >= 1).await;
    rest.put("single-other", "noise").await; // another key: must not release the watch
    rest.put("singl", "noise").await; // a prefix of the key: must not release it either
    let rev = rest.put("single", "v1").await;
    let resp = w.await.expect("watch task");
    let ev = events(&resp);
    assert_eq!(ev.len(), 1, "exactly the put on `single`: {ev:?}");
    assert_eq!(summary(&ev[0]), ("PUT".into(), "single".into(), rev));
    assert_eq!(as_str(&ev[0], "value"), "v1");
    assert!(as_i64(&resp.json(), "revision") >= rev);

    // A delete is delivered as a DELETE event.
    let w = {
        let rest = rest.clone();
        tokio::spawn(async move {
            rest.watch("key=single&timeout=30", Duration::from_secs(60))
                .await
        })
    };
    rest.wait_watchers(">= 1", REGISTER_BOUND, |n| n >= 1).await;
    let del = rest.delete("single").await;
    assert_eq!(del.status, 200);
    let del_rev = as_i64(&del.json(), "revision");
    let ev = events(&w.await.expect("watch task"));
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(summary(&ev[0]), ("DELETE".into(), "single".into(), del_rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_replays_history_in_order() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();

    let r1 = rest.put("replay", "one").await;
    rest.put("replay-other", "noise").await;
    let r2 = rest.put("replay", "two").await;
    let r3 = rest.put("replay", "three").await;
    let del = rest.delete("replay").await;
    let r4 = as_i64(&del.json(), "revision");

    let resp = rest
        .watch(
            &format!("key=replay&rev={r1}&timeout=10"),
            Duration::from_secs(30),
        )
        .await;
    let ev = events(&resp);
    let got: Vec<_> = ev.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("PUT".into(), "replay".into(), r1),
            ("PUT".into(), "replay".into(), r2),
            ("PUT".into(), "replay".into(), r3),
            ("DELETE".into(), "replay".into(), r4),
        ]
    );
    let values: Vec<_> = ev[..3].iter().map(|e| as_str(e, "value")).collect();
    assert_eq!(values, ["one", "two", "three"]);

    // From the middle: only what came at or after that revision.
    let ev = events(
        &rest
            .watch(
                &format!("key=replay&rev={r3}&timeout=10"),
                Duration::from_secs(30),
            )
            .await,
    );
    let got: Vec<_> = ev.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("PUT".into(), "replay".into(), r3),
            ("DELETE".into(), "replay".into(), r4)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_watch_live_and_replayed() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();

    let w = {
        let rest = rest.clone();
        tokio::spawn(async move {
            rest.watch("key=app%2F&prefix=true&timeout=30", Duration::from_secs(60))
                .await
        })
    };
    rest.wait_watchers(">= 1", REGISTER_BOUND, |n| n >= 1).await;
    let first = rest.put("apple", "not under app/").await;
    rest.put("app", "not under app/ either").await;
    let rev = rest.put("app/x", "1").await;
    let ev = events(&w.await.expect("watch task"));
    assert_eq!(ev.len(), 1, "only app/x is under app/: {ev:?}");
    assert_eq!(summary(&ev[0]), ("PUT".into(), "app/x".into(), rev));
    assert_eq!(as_str(&ev[0], "value"), "1");

    let rev_y = rest.put("app/y/z", "2").await;
    rest.put("other", "3").await;
    let rev_x2 = rest.put("app/x", "4").await;
    let ev = events(
        &rest
            .watch(
                &format!("key=app%2F&prefix=true&rev={first}&timeout=10"),
                Duration::from_secs(30),
            )
            .await,
    );
    let got: Vec<_> = ev.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("PUT".into(), "app/x".into(), rev),
            ("PUT".into(), "app/y/z".into(), rev_y),
            ("PUT".into(), "app/x".into(), rev_x2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repolling_from_last_revision_loses_nothing() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();
    const N: usize = 300;

    let start = rest.put("repoll-start", "x").await + 1;
    let writer = {
        let rest = rest.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..N {
                revs.push(rest.put("repoll", &i.to_string()).await);
                if i % 3 == 0 {
                    rest.put("repoll-noise", &i.to_string()).await;
                }
            }
            revs
        })
    };

    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut next = start;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut polls = 0;
    while seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "re-polling did not see all {N} events in time; saw {}",
            seen.len()
        );
        polls += 1;
        assert!(polls <= 10 * N, "too many polls");
        let resp = rest
            .watch(
                &format!("key=repoll&rev={next}&timeout=5"),
                Duration::from_secs(30),
            )
            .await;
        if resp.status == 204 {
            continue;
        }
        for e in events(&resp) {
            assert_eq!(as_str(&e, "type"), "PUT");
            assert_eq!(as_str(&e, "key"), "repoll");
            let rev = as_i64(&e, "mod_revision");
            assert!(
                rev >= next,
                "event at {rev} is older than the requested revision {next}"
            );
            seen.push((as_str(&e, "value"), rev));
            next = rev + 1;
        }
    }
    let revs = writer.await.expect("writer");
    assert_eq!(seen.len(), N, "more events than writes: {:?}", &seen[N..]);
    let expected: Vec<(String, i64)> = revs
        .iter()
        .enumerate()
        .map(|(i, r)| (i.to_string(), *r))
        .collect();
    assert_eq!(seen, expected, "events must be every write, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_204_with_current_revision() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();
    rest.put("t", "1").await;
    let rev = rest.put("unrelated", "2").await;

    let resp = rest.watch("key=t&timeout=1", Duration::from_secs(30)).await;
    assert_eq!(
        resp.status, 204,
        "a watch that times out answers 204; body {:?}",
        resp.body
    );
    assert!(resp.body.is_empty(), "204 has no body: {:?}", resp.body);
    let header = resp
        .header("X-Etcd-Revision")
        .unwrap_or_else(|| panic!("204 without X-Etcd-Revision: {:?}", resp.headers));
    assert_eq!(
        header
            .trim()
            .parse::<i64>()
            .expect("numeric X-Etcd-Revision"),
        rev
    );
    rest.wait_watchers("0 after the timeout", REGISTER_BOUND, |n| n == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_put_releases_200_long_polls() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();
    const WATCHES: usize = 200;

    let tasks: Vec<_> = (0..WATCHES)
        .map(|_| {
            let rest = rest.clone();
            tokio::spawn(async move {
                rest.watch("key=crowd&timeout=60", Duration::from_secs(90))
                    .await
            })
        })
        .collect();
    rest.wait_watchers(&format!(">= {WATCHES}"), REGISTER_BOUND, |n| {
        n >= WATCHES as i64
    })
    .await;
    let rev = rest.put("crowd", "go").await;

    for (i, t) in tasks.into_iter().enumerate() {
        let resp = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| panic!("watch {i} was not released by the put"))
            .expect("watch task");
        let ev = events(&resp);
        assert_eq!(ev.len(), 1, "watch {i}: {ev:?}");
        assert_eq!(summary(&ev[0]), ("PUT".into(), "crowd".into(), rev));
        assert_eq!(as_str(&ev[0], "value"), "go");
    }
    rest.wait_watchers("0 after release", REGISTER_BOUND, |n| n == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_long_polls_are_freed() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();
    const WATCHES: usize = 500;
    let addr = server.base_url().trim_start_matches("http://").to_string();

    // Raw sockets, so that dropping them certainly closes the connections.
    let mut conns = Vec::with_capacity(WATCHES);
    for i in 0..WATCHES {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /watch?key=abandoned-{}&timeout=300 HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            i % 7
        );
        s.write_all(req.as_bytes())
            .await
            .expect("send watch request");
        conns.push(s);
    }
    rest.wait_watchers(&format!("{WATCHES}"), REGISTER_BOUND, |n| {
        n >= WATCHES as i64
    })
    .await;

    drop(conns);
    rest.wait_watchers(
        "0 after the clients went away",
        Duration::from_secs(20),
        |n| n == 0,
    )
    .await;

    // The hub is still healthy: a new watch works.
    let w = {
        let rest = rest.clone();
        tokio::spawn(async move {
            rest.watch("key=abandoned-0&timeout=30", Duration::from_secs(60))
                .await
        })
    };
    rest.wait_watchers(">= 1", REGISTER_BOUND, |n| n >= 1).await;
    let rev = rest.put("abandoned-0", "back").await;
    let ev = events(&w.await.expect("watch task"));
    assert_eq!(summary(&ev[0]), ("PUT".into(), "abandoned-0".into(), rev));
}

/// Reads SSE `data:` payloads from a streaming response until `n` arrived (bounded).
async fn read_sse(resp: reqwest::Response, n: usize, bound: Duration) -> Vec<Value> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "SSE: only {} of {n} events within {bound:?}: {out:?}",
                    out.len()
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "SSE stream ended after {} of {n} events: {out:?}",
                    out.len()
                )
            })
            .expect("SSE stream error");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let normalized = buf.replace("\r\n", "\n");
        buf = normalized;
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // comments / keep-alives
            }
            let joined = data.join("\n");
            let v: Value = serde_json::from_str(&joined)
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {joined:?}"));
            out.push(v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_delivers_events_in_order() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();

    let client = rest.client.clone();
    let url = rest.url("/watch?key=sse&stream=true&timeout=30");
    let pending = tokio::spawn(async move {
        client
            .get(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
    });
    rest.wait_watchers(">= 1", REGISTER_BOUND, |n| n >= 1).await;

    let mut expected = Vec::new();
    for i in 0..5 {
        let rev = rest.put("sse", &format!("e{i}")).await;
        rest.put("sse-noise", "x").await;
        expected.push(("PUT".to_string(), "sse".to_string(), rev, format!("e{i}")));
    }
    let del = rest.delete("sse").await;
    expected.push((
        "DELETE".into(),
        "sse".into(),
        as_i64(&del.json(), "revision"),
        String::new(),
    ));

    let resp = pending.await.expect("sse task").expect("SSE request");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");

    let got = read_sse(resp, expected.len(), Duration::from_secs(30)).await;
    for (e, (ty, key, rev, value)) in got.iter().zip(&expected) {
        assert_eq!(
            summary(e),
            (ty.clone(), key.clone(), *rev),
            "SSE events in order: {got:?}"
        );
        if ty == "PUT" {
            assert_eq!(&as_str(e, "value"), value);
        }
    }
    // The stream was dropped with `got`'s response: the watcher is freed.
    rest.wait_watchers(
        "0 after the SSE client left",
        Duration::from_secs(20),
        |n| n == 0,
    )
    .await;
}

/// Writes `n` revisions on `other/*` keys, 16 at a time.
async fn write_many(rest: &common::Rest, n: usize) {
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| async move {
            rest.put(&format!("other/{}", i % 50), "x").await;
        })
        .await;
}

/// The scenario: after many writes, a watch from an old revision polled with `timeout=0`
/// must not answer 204 with a revision at or past an event it has not delivered; a client that
/// re-polls from the reported revision + 1, as the README says, gets the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_never_reports_a_revision_past_an_undelivered_event() {
    let (_dir, server) = fresh().await;
    let rest = server.rest();
    write_many(&rest, 3000).await;
    let status = rest.put("status", "up").await;
    for attempt in 0..5 {
        let mut rev = 3;
        let mut polls = 0;
        loop {
            let r = rest
                .call(
                    reqwest::Method::GET,
                    &format!("/watch?key=status&rev={rev}&timeout=0"),
                    None,
                )
                .await;
            if r.status == 200 {
                let evs = events(&r);
                assert!(
                    evs.iter().any(|e| as_i64(e, "mod_revision") == status),
                    "attempt {attempt}: 200 without the event at {status}: {}",
                    r.body
                );
                assert!(as_i64(&r.json(), "revision") >= status, "{}", r.body);
                break;
            }
            assert_eq!(r.status, 204, "attempt {attempt}: {}", r.body);
            let reported: i64 = r
                .headers
                .get("X-Etcd-Revision")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("X-Etcd-Revision on a 204");
            assert!(
                reported < status,
                "attempt {attempt}: 204 with X-Etcd-Revision {reported}, but the event at \
                 {status} was never delivered"
            );
            assert!(
                reported >= rev - 1,
                "progress went back: {reported} < {rev} - 1"
            );
            rev = reported + 1;
            polls += 1;
            assert!(polls < 10_000, "the event never arrived");
        }
    }
}

/// `--max-rest-watches-per-client`: one client address holds at most that many open watches;
/// one more answers 429 with a JSON error, and a finished watch frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_watches_per_client_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--max-rest-watches-per-client", "2"]).await;
    let rest = server.rest();
    let open: Vec<_> = (0..2)
        .map(|i| {
            let rest = rest.clone();
            tokio::spawn(async move {
                rest.call(
                    reqwest::Method::GET,
                    &format!("/watch?key=held{i}&timeout=3"),
                    None,
                )
                .await
            })
        })
        .collect();
    rest.wait_watchers("two open watches", REGISTER_BOUND, |n| n == 2)
        .await;
    let refused = rest
        .call(reqwest::Method::GET, "/watch?key=more&timeout=0", None)
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        as_str(&refused.json(), "error").contains("--max-rest-watches-per-client"),
        "{}",
        refused.body
    );
    for w in open {
        assert_eq!(w.await.expect("watch task").status, 204);
    }
    let again = rest
        .call(reqwest::Method::GET, "/watch?key=more&timeout=0", None)
        .await;
    assert_eq!(again.status, 204, "{}", again.body);
}
