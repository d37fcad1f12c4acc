//! The etcd v3 Watch service over gRPC, end to end against the real binary: create, events and
//! cancel; several watches on one stream; replay; ranges; prev_kv; filters; compaction; progress;
//! client-chosen ids and etcd's refusals; fragments; streams that close free their watchers; a
//! shutdown with a watch open. One test runs the service in-process to shorten the progress
//! interval.
//!
//! Nothing here depends on timing: a watch is known to be registered once its `created` response
//! has arrived (the hub registers it before the response is queued), and every wait is bounded by
//! a safety deadline.

mod common;

use std::time::Duration;

use clap::Parser;
use mini_etcd::api::grpc::watch::WatchService;
use mini_etcd::proto::etcdserverpb::kv_client::KvClient;
use mini_etcd::proto::etcdserverpb::watch_client::WatchClient;
use mini_etcd::proto::etcdserverpb::watch_create_request::FilterType;
use mini_etcd::proto::etcdserverpb::watch_request::RequestUnion;
use mini_etcd::proto::etcdserverpb::watch_server::WatchServer;
use mini_etcd::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use mini_etcd::proto::mvccpb::event::EventType;
use mini_etcd::proto::mvccpb::Event;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// Safety bound on any single wait; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(30);

/// etcd's texts, word for word.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

async fn fresh(extra: &[&str]) -> (tempfile::TempDir, common::Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::Server::start(dir.path(), extra).await;
    (dir, server)
}

/// A channel to `url`, retried within the bound (the listener is up once `/health` answers, but
/// be tolerant anyway).
async fn channel(url: &str) -> Channel {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match Channel::from_shared(url.to_string())
            .expect("client url")
            .connect()
            .await
        {
            Ok(ch) => return ch,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("cannot connect to {url} within {BOUND:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A KV client and a Watch client on one connection.
struct Clients {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
}

impl Clients {
    async fn connect(url: &str) -> Clients {
        let ch = channel(url).await;
        Clients {
            kv: KvClient::new(ch.clone()),
            watch: WatchClient::new(ch),
        }
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> i64 {
        let resp = self
            .kv
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("put {key}: {s}"))
            .into_inner();
        resp.header.expect("put header").revision
    }

    async fn delete(&mut self, key: &str, range_end: &[u8]) -> i64 {
        let resp = self
            .kv
            .delete_range(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("delete {key}: {s}"))
            .into_inner();
        resp.header.expect("delete header").revision
    }

    async fn revision(&mut self) -> i64 {
        let resp = self
            .kv
            .range(RangeRequest {
                key: b"any".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("range: {s}"))
            .into_inner();
        resp.header.expect("range header").revision
    }

    async fn stream(&mut self) -> Stream {
        Stream::open(&mut self.watch).await
    }
}

/// One Watch call: requests in, responses out.
struct Stream {
    /// The client's request stream.
    tx: mpsc::Sender<WatchRequest>,
    /// The server's responses.
    rx: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(client: &mut WatchClient<Channel>) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let resp = tokio::time::timeout(BOUND, client.watch(ReceiverStream::new(rx)))
            .await
            .expect("Watch call within bound")
            .unwrap_or_else(|s| panic!("Watch call: {s}"));
        Stream {
            tx,
            rx: resp.into_inner(),
        }
    }

    async fn send(&self, req: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(req),
            })
            .await
            .expect("request stream open");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    async fn cancel(&self, watch_id: i64) {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await;
    }

    async fn progress(&self) {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
    }

    /// The next response, which must come within the bound.
    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(BOUND, self.rx.message()).await {
            Err(_) => panic!("no watch response within {BOUND:?}"),
            Ok(Err(s)) => panic!("watch stream failed: {s}"),
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Ok(Some(r))) => r,
        }
    }

    /// Creates a watch and returns its id, requiring a plain `created` answer.
    async fn watch(&mut self, c: WatchCreateRequest) -> i64 {
        self.create(c).await;
        let r = self.next().await;
        assert!(r.created && !r.canceled, "expected created: {r:?}");
        assert!(r.events.is_empty(), "created carries no events: {r:?}");
        r.watch_id
    }

    /// Collects responses until `n` events have arrived; returns (watch id, event) pairs.
    async fn events(&mut self, n: usize) -> Vec<(i64, Event)> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            assert!(
                !r.created && !r.canceled,
                "expected events, got a control response: {r:?}"
            );
            assert!(!r.events.is_empty(), "expected events, got {r:?}");
            out.extend(r.events.into_iter().map(|e| (r.watch_id, e)));
        }
        assert_eq!(out.len(), n, "more events than expected: {out:?}");
        out
    }
}

fn key_watch(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// (type, key, value, mod_revision) of an event.
fn summary(e: &Event) -> (EventType, String, String, i64) {
    let kv = e.kv.as_ref().expect("event kv");
    (
        EventType::try_from(e.r#type).expect("event type"),
        String::from_utf8_lossy(&kv.key).into_owned(),
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.mod_revision,
    )
}

fn put_ev(key: &str, value: &str, rev: i64) -> (EventType, String, String, i64) {
    (EventType::Put, key.into(), value.into(), rev)
}

fn del_ev(key: &str, rev: i64) -> (EventType, String, String, i64) {
    (EventType::Delete, key.into(), String::new(), rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_events_and_cancel() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;

    let before = c.revision().await;
    s.create(key_watch("a")).await;
    let created = s.next().await;
    assert!(created.created && !created.canceled, "{created:?}");
    assert_eq!(created.watch_id, 0, "server-assigned ids start at 0");
    let header = created.header.expect("created header");
    assert_eq!(
        header.revision, before,
        "created carries the current revision"
    );
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);

    c.put("ab", b"noise").await; // another key, same prefix: not watched
    let r1 = c.put("a", b"v1").await;
    let r2 = c.delete("a", b"").await;
    let evs = s.events(2).await;
    assert_eq!(summary(&evs[0].1), put_ev("a", "v1", r1));
    assert_eq!(summary(&evs[1].1), del_ev("a", r2));
    assert!(evs.iter().all(|(id, _)| *id == 0));

    // Events carry the revision of their write in the header.
    let r3 = c.put("a", b"v2").await;
    let r = s.next().await;
    assert_eq!(r.header.expect("header").revision, r3);
    assert_eq!(r.events.len(), 1);

    s.cancel(0).await;
    let canceled = s.next().await;
    assert!(canceled.canceled && !canceled.created, "{canceled:?}");
    assert_eq!(canceled.watch_id, 0);
    assert_eq!(canceled.header.expect("header").revision, r3);

    // No event of the cancelled watch follows: a put on `a` comes before a put on `z`, yet the
    // first event on the stream is `z`'s.
    let z = s.watch(key_watch("z")).await;
    assert_eq!(z, 1, "the next server-assigned id");
    c.put("a", b"after-cancel").await;
    let rz = c.put("z", b"1").await;
    let evs = s.events(1).await;
    assert_eq!(evs[0].0, z);
    assert_eq!(summary(&evs[0].1), put_ev("z", "1", rz));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watches_on_one_stream_have_distinct_ids() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let a = s.watch(key_watch("one")).await;
    let b = s.watch(key_watch("two")).await;
    assert_ne!(a, b);
    let r1 = c.put("two", b"2").await;
    let r2 = c.put("one", b"1").await;
    let evs = s.events(2).await;
    assert_eq!(evs[0].0, b);
    assert_eq!(summary(&evs[0].1), put_ev("two", "2", r1));
    assert_eq!(evs[1].0, a);
    assert_eq!(summary(&evs[1].1), put_ev("one", "1", r2));

    // A second stream numbers its watches from 0 again.
    let mut s2 = c.stream().await;
    assert_eq!(s2.watch(key_watch("one")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_replays_history_then_goes_live() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let r1 = c.put("k", b"v1").await;
    let r2 = c.put("k", b"v2").await;
    c.put("other", b"x").await;
    let r3 = c.delete("k", b"").await;

    let mut s = c.stream().await;
    let id = s
        .watch(WatchCreateRequest {
            start_revision: r2,
            ..key_watch("k")
        })
        .await;
    let evs = s.events(2).await;
    assert_eq!(summary(&evs[0].1), put_ev("k", "v2", r2));
    assert_eq!(summary(&evs[1].1), del_ev("k", r3));
    assert!(evs.iter().all(|(w, _)| *w == id));
    assert!(r1 < r2);

    let r4 = c.put("k", b"v3").await;
    let evs = s.events(1).await;
    assert_eq!(summary(&evs[0].1), put_ev("k", "v3", r4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_end_watches_a_prefix_and_zero_means_from_key_on() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let prefix = s
        .watch(WatchCreateRequest {
            range_end: b"p0".to_vec(), // the prefix "p/"
            ..key_watch("p/")
        })
        .await;
    let from = s
        .watch(WatchCreateRequest {
            range_end: vec![0],
            ..key_watch("q")
        })
        .await;
    // An empty key is "\0", the smallest key: with range_end "\0" it sees every key.
    let all = s
        .watch(WatchCreateRequest {
            range_end: vec![0],
            ..key_watch("")
        })
        .await;

    let ra = c.put("p/a", b"1").await;
    let rb = c.put("p", b"2").await; // not in "p/"..."p0", below "q"
    let rc = c.put("zz", b"3").await; // from "q" on
    let got = s.events(5).await;
    let mut per: std::collections::HashMap<i64, Vec<_>> = Default::default();
    for (id, e) in &got {
        per.entry(*id).or_default().push(summary(e));
    }
    assert_eq!(per[&prefix], vec![put_ev("p/a", "1", ra)]);
    assert_eq!(per[&from], vec![put_ev("zz", "3", rc)]);
    assert_eq!(
        per[&all],
        vec![
            put_ev("p/a", "1", ra),
            put_ev("p", "2", rb),
            put_ev("zz", "3", rc)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_only_when_asked() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    c.put("k", b"old").await;
    let mut s = c.stream().await;
    let with = s
        .watch(WatchCreateRequest {
            prev_kv: true,
            ..key_watch("k")
        })
        .await;
    let without = s.watch(key_watch("k")).await;
    c.put("k", b"new").await;
    c.delete("k", b"").await;
    let evs = s.events(4).await;
    for (id, e) in evs {
        let prev = e.prev_kv.as_ref().map(|p| p.value.clone());
        if id == with {
            let expected: &[u8] = if e.r#type == EventType::Put as i32 {
                b"old"
            } else {
                b"new"
            };
            assert_eq!(prev.as_deref(), Some(expected), "{e:?}");
        } else {
            assert_eq!(id, without);
            assert_eq!(prev, None, "prev_kv was not asked for: {e:?}");
        }
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A client that stops reading its watch stream must not make the server buffer without bound: 32
/// watchers of one key on one stream, 1,000 puts of 4 KiB (128 MB of events if each watcher's copies
/// piled up) while the client reads nothing. The server's resident size may grow by far less than
/// that, and once the client reads again every watcher gets every revision, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_bounded_and_loses_nothing() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let watchers = 32;
    let mut ids = Vec::new();
    for _ in 0..watchers {
        ids.push(s.watch(key_watch("big")).await);
    }
    let before = rss_kib(server.pid());
    let value = vec![b'v'; 4096];
    let first = c.put("big", &value).await;
    let puts = 1000;
    for _ in 1..puts {
        c.put("big", &value).await;
    }
    let grown_mib = rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!("server resident size grew by {grown_mib} MiB while the client read nothing");
    assert!(
        grown_mib < 64,
        "the server grew by {grown_mib} MiB while the client read nothing"
    );
    // Now read: every watcher sees revisions first..first+puts-1, in order.
    let mut next: std::collections::HashMap<i64, i64> = ids.iter().map(|id| (*id, first)).collect();
    let mut left = watchers * puts as usize;
    while left > 0 {
        let r = s.next().await;
        assert!(!r.canceled, "watch cancelled: {r:?}");
        for e in &r.events {
            let rev = e.kv.as_ref().expect("kv").mod_revision;
            let want = next.get_mut(&r.watch_id).expect("known watch");
            assert_eq!(rev, *want, "watch {} out of order", r.watch_id);
            *want += 1;
            left -= 1;
        }
    }
    assert!(next.values().all(|&n| n == first + puts));
}

/// A watch that starts in the past is caught up from history, which is read without `prev_kv`; a
/// watch that asked for it must still get the replaced record on every replayed put and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_on_replayed_history() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    c.put("k", b"v1").await; // 2
    c.put("k", b"v2").await; // 3
    c.delete("k", b"").await; // 4
    c.put("k", b"v3").await; // 5: a new life of the key
    let mut s = c.stream().await;
    let id = s
        .watch(WatchCreateRequest {
            start_revision: 2,
            prev_kv: true,
            ..key_watch("k")
        })
        .await;
    let evs = s.events(4).await;
    let got: Vec<_> = evs
        .iter()
        .map(|(w, e)| {
            assert_eq!(*w, id);
            let prev = e
                .prev_kv
                .as_ref()
                .map(|p| (p.value.clone(), p.mod_revision));
            (summary(e), prev)
        })
        .collect();
    let v = |x: &str, rev: i64| Some((x.as_bytes().to_vec(), rev));
    assert_eq!(
        got,
        vec![
            ((EventType::Put, "k".into(), "v1".into(), 2), None),
            ((EventType::Put, "k".into(), "v2".into(), 3), v("v1", 2)),
            ((EventType::Delete, "k".into(), "".into(), 4), v("v2", 3)),
            ((EventType::Put, "k".into(), "v3".into(), 5), None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_puts_or_deletes() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let noput = s
        .watch(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..key_watch("f")
        })
        .await;
    let nodelete = s
        .watch(WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..key_watch("f")
        })
        .await;
    let rp = c.put("f", b"v").await;
    let rd = c.delete("f", b"").await;
    let evs = s.events(2).await;
    for (id, e) in evs {
        if id == noput {
            assert_eq!(summary(&e), del_ev("f", rd));
        } else {
            assert_eq!(id, nodelete);
            assert_eq!(summary(&e), put_ev("f", "v", rp));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_revision_cancels_the_watch() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let r1 = c.put("k", b"1").await;
    c.put("k", b"2").await;
    let r3 = c.put("k", b"3").await;
    c.kv.compact(CompactionRequest {
        revision: r3,
        physical: false,
    })
    .await
    .unwrap_or_else(|s| panic!("compact: {s}"));

    let mut s = c.stream().await;
    let id = s
        .watch(WatchCreateRequest {
            start_revision: r1,
            ..key_watch("k")
        })
        .await;
    let r = s.next().await;
    assert!(r.canceled, "{r:?}");
    assert_eq!(r.watch_id, id);
    assert_eq!(r.compact_revision, r3);
    assert!(r.events.is_empty());
    // etcd leaves cancel_reason empty here: clients read compact_revision.
    assert_eq!(r.cancel_reason, "");
    server.rest().wait_watchers("0", BOUND, |n| n == 0).await;

    // As in etcd the id stays taken until the client cancels it.
    s.cancel(id).await;
    let r = s.next().await;
    assert!(r.canceled && r.watch_id == id, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_answers_with_id_minus_one_and_the_current_revision() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    s.watch(key_watch("watched")).await;
    c.put("unwatched", b"1").await;
    let rev = c.put("unwatched", b"2").await;
    // Cancelling an id the stream does not have gets no answer: the next response is the progress.
    s.cancel(99).await;
    s.progress().await;
    let r = s.next().await;
    assert_eq!(r.watch_id, -1, "{r:?}");
    assert!(!r.created && !r.canceled && r.events.is_empty(), "{r:?}");
    assert_eq!(r.header.expect("header").revision, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_ids_and_refused_creates() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let id = s
        .watch(WatchCreateRequest {
            watch_id: 42,
            ..key_watch("x")
        })
        .await;
    assert_eq!(id, 42);

    let expect_refused = |r: WatchResponse, reason: &str| {
        assert!(r.created && r.canceled, "{r:?}");
        assert_eq!(r.watch_id, -1, "{r:?}");
        assert_eq!(r.cancel_reason, reason);
    };
    s.create(WatchCreateRequest {
        watch_id: 42,
        ..key_watch("y")
    })
    .await;
    expect_refused(s.next().await, DUPLICATE_ID);
    s.create(WatchCreateRequest {
        range_end: b"a".to_vec(),
        ..key_watch("b")
    })
    .await;
    expect_refused(s.next().await, EMPTY_RANGE);
    s.create(WatchCreateRequest {
        start_revision: -1,
        ..key_watch("b")
    })
    .await;
    expect_refused(s.next().await, COMPACTED);

    // Server-assigned ids still start at 0, and skip ids the client took.
    assert_eq!(s.watch(key_watch("x")).await, 0);
    let one = s
        .watch(WatchCreateRequest {
            watch_id: 1,
            ..key_watch("x")
        })
        .await;
    assert_eq!(one, 1);
    assert_eq!(s.watch(key_watch("x")).await, 2);

    // Only the three accepted watches on "x"... plus 42: four events for one put.
    let rev = c.put("x", b"v").await;
    let mut ids: Vec<i64> = s.events(4).await.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 42]);
    assert!(rev > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_are_fragmented_when_asked() {
    let (_dir, server) = fresh(&["--max-request-bytes", "4096"]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let value = vec![b'v'; 1000];
    for i in 0..10 {
        c.put(&format!("f/{i}"), &value).await;
    }
    let mut s = c.stream().await;
    let range = WatchCreateRequest {
        range_end: b"f0".to_vec(),
        prev_kv: true,
        ..key_watch("f/")
    };
    let fragmented = s
        .watch(WatchCreateRequest {
            fragment: true,
            ..range.clone()
        })
        .await;
    let whole = s.watch(range).await;
    // One revision, ten deletes, each with a 1000-byte prev_kv: about 10 KB of events.
    let rev = c.delete("f/", b"f0").await;

    let mut parts = Vec::new();
    let mut whole_seen = None;
    while parts.last().is_none_or(|p: &WatchResponse| p.fragment) || whole_seen.is_none() {
        let r = s.next().await;
        assert_eq!(r.header.as_ref().expect("header").revision, rev);
        if r.watch_id == whole {
            assert!(!r.fragment);
            whole_seen = Some(r);
        } else {
            assert_eq!(r.watch_id, fragmented);
            parts.push(r);
        }
    }
    let whole = whole_seen.expect("unfragmented response");
    assert_eq!(whole.events.len(), 10);
    assert!(
        parts.len() > 1,
        "expected several fragments, got {}",
        parts.len()
    );
    for p in &parts {
        assert!(
            p.events.len() == 1 || p.encoded_len() < 4096,
            "a fragment of {} bytes",
            p.encoded_len()
        );
    }
    let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
    assert_eq!(
        joined, whole.events,
        "fragments rejoin to the whole, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_frees_its_watchers() {
    let (_dir, server) = fresh(&[]).await;
    let rest = server.rest();
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    for key in ["a", "b", "c"] {
        s.watch(key_watch(key)).await;
    }
    let mut other = c.stream().await;
    other.watch(key_watch("d")).await;
    rest.wait_watchers("4", BOUND, |n| n == 4).await;

    drop(s);
    rest.wait_watchers("1", BOUND, |n| n == 1).await;

    // The other stream on the same connection is untouched.
    let rev = c.put("d", b"still here").await;
    let evs = other.events(1).await;
    assert_eq!(summary(&evs[0].1), put_ev("d", "still here", rev));

    drop(other);
    rest.wait_watchers("0", BOUND, |n| n == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_watch_stream_exits_cleanly() {
    let (_dir, mut server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    s.watch(key_watch("k")).await;
    server.stop().await; // requires exit 0 within the bound
    match tokio::time::timeout(BOUND, s.rx.message()).await {
        Err(_) => panic!("the watch stream stayed open after the server exited"),
        Ok(Ok(Some(r))) => panic!("unexpected response after shutdown: {r:?}"),
        Ok(Ok(None)) | Ok(Err(_)) => {}
    }
}

/// In-process: the service with a short progress interval, on its own listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_reports_the_revision_to_idle_watches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = common::free_ports(3);
    let data_dir = dir.path().display().to_string();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let cli = mini_etcd::config::Cli::parse_from([
        "mini-etcd",
        "--data-dir",
        &data_dir,
        "--listen-rest-url",
        &urls[0],
        "--listen-client-urls",
        &urls[1],
        "--listen-peer-urls",
        &urls[2],
    ]);
    let config = mini_etcd::config::Config::from_args(cli.server).expect("config");
    let server = mini_etcd::server::Server::start(config)
        .await
        .expect("server start");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = WatchService::with_progress_interval(server.clone(), Duration::from_millis(50));
    let router = tonic::service::Routes::new(WatchServer::new(service)).into_axum_router();
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });

    let mut watch = WatchClient::new(channel(&format!("http://{addr}")).await);
    let mut s = Stream::open(&mut watch).await;
    let id = s
        .watch(WatchCreateRequest {
            progress_notify: true,
            ..key_watch("k")
        })
        .await;
    let put = |value: &'static [u8]| PutRequest {
        key: b"k".to_vec(),
        value: value.to_vec(),
        ..Default::default()
    };
    let rev = server
        .put(put(b"v"))
        .await
        .expect("put")
        .header
        .expect("header")
        .revision;
    // Progress reports may come before the event, but only at revisions below it (a report at R
    // promises every event up to R was sent); after it, the idle watch hears of exactly `rev`.
    let mut saw_event = false;
    loop {
        let r = s.next().await;
        assert_eq!(r.watch_id, id, "{r:?}");
        if r.events.is_empty() {
            assert!(
                !r.created && !r.canceled && r.compact_revision == 0,
                "{r:?}"
            );
            let reported = r.header.expect("header").revision;
            if !saw_event {
                assert!(
                    reported < rev,
                    "progress at {reported} before the event at {rev}"
                );
                continue;
            }
            assert_eq!(reported, rev);
            break;
        }
        assert_eq!(r.events.len(), 1);
        assert_eq!(summary(&r.events[0]), put_ev("k", "v", rev));
        saw_event = true;
    }

    // Shutdown ends the stream with etcd's "server stopped".
    server.shutdown().await.expect("shutdown");
    loop {
        match tokio::time::timeout(BOUND, s.rx.message()).await {
            Err(_) => panic!("the watch stream stayed open after shutdown"),
            Ok(Ok(Some(r))) if r.events.is_empty() && r.watch_id == id => continue, // progress
            Ok(Ok(Some(r))) => panic!("unexpected response after shutdown: {r:?}"),
            Ok(Ok(None)) => panic!("stream ended without the stopped status"),
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "etcdserver: server stopped");
                break;
            }
        }
    }
    serving.abort();
}

/// A watch from an old revision with a progress request right behind it: the progress response
/// never reports a revision at or past an event the stream has not sent yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_never_runs_ahead_of_a_watch_being_caught_up() {
    let (_dir, server) = fresh(&[]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    for i in 0..3000 {
        c.put(&format!("other/{}", i % 50), b"x").await;
    }
    let status = c.put("status", b"up").await;
    for attempt in 0..5 {
        let mut s = c.stream().await;
        s.watch(WatchCreateRequest {
            start_revision: 2,
            ..key_watch("status")
        })
        .await;
        s.progress().await;
        let mut delivered = false;
        loop {
            let r = s.next().await;
            if r.watch_id == -1 {
                let reported = r.header.expect("header").revision;
                assert!(
                    delivered || reported < status,
                    "attempt {attempt}: progress at {reported} before the event at {status} was sent"
                );
                break;
            }
            assert!(
                r.events
                    .iter()
                    .all(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision == status)),
                "{r:?}"
            );
            delivered = true;
        }
    }
}

/// `--max-watches-per-stream`: creates beyond it are refused, the stream and its watches go on,
/// and a cancel makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_per_stream_are_bounded() {
    let (_dir, server) = fresh(&["--max-watches-per-stream", "3"]).await;
    let mut c = Clients::connect(&server.client_url()).await;
    let mut s = c.stream().await;
    let mut ids = Vec::new();
    for k in ["a", "b", "c"] {
        ids.push(s.watch(key_watch(k)).await);
    }
    s.create(key_watch("d")).await;
    let r = s.next().await;
    assert!(r.created && r.canceled && r.watch_id == -1, "{r:?}");
    assert!(
        r.cancel_reason.contains("--max-watches-per-stream"),
        "{r:?}"
    );
    // The watches already there still deliver.
    let rev = c.put("b", b"1").await;
    let got = s.events(1).await;
    assert_eq!(
        (got[0].0, got[0].1.kv.as_ref().map(|kv| kv.mod_revision)),
        (ids[1], Some(rev))
    );
    // A cancel frees a place.
    s.cancel(ids[0]).await;
    let r = s.next().await;
    assert!(r.canceled && r.watch_id == ids[0], "{r:?}");
    s.watch(key_watch("d")).await;
    // Another stream has its own budget.
    let mut other = c.stream().await;
    other.watch(key_watch("e")).await;
}
