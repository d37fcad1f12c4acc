//! etcd compatibility, Watch service, through the `etcd-client` crate.
//!
//! Expectations observed on etcd 3.4.23 (`COMPAT_REFERENCE_ETCD=/usr/bin/etcd` re-checks them).

mod common;
mod compat;

use compat::{assert_header, bounded, connect, ok, start};
use etcd_client::{
    Client, EventType, GetOptions, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

/// The next message of a watch stream, bounded; panics if the stream ends or fails.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    match bounded("watch message", stream.message()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("watch stream ended"),
        Err(e) => panic!("watch stream failed: {e:?}"),
    }
}

/// Opens a watch and returns the stream and the id from its `created` response.
async fn watch(c: &mut Client, key: &str, opts: WatchOptions) -> (WatchStream, i64) {
    let mut stream = ok("watch", bounded("watch", c.watch(key, Some(opts))).await);
    let created = next(&mut stream).await;
    assert!(
        created.created(),
        "first response is `created`: {created:?}"
    );
    assert!(!created.canceled());
    assert!(created.events().is_empty());
    assert_header("created", created.header(), None);
    let id = created.watch_id();
    (stream, id)
}

/// One event reduced to (type, key, value, mod_revision).
type Ev = (EventType, String, String, i64);

fn flat(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            (
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// Reads responses until `n` events arrived (for watch `id`), returning them in order.
async fn events(stream: &mut WatchStream, id: i64, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(stream).await;
        assert_eq!(r.watch_id(), id, "events for another watch: {r:?}");
        assert!(!r.canceled(), "watch canceled early: {r:?}");
        assert_header("events", r.header(), None);
        out.extend(flat(&r));
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

fn put_ev(k: &str, v: &str, rev: i64) -> Ev {
    (EventType::Put, k.into(), v.into(), rev)
}

fn del_ev(k: &str, rev: i64) -> Ev {
    (EventType::Delete, k.into(), String::new(), rev)
}

#[tokio::test]
async fn watch_live_replay_and_ranges() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    ok("put", c.put("a", "1", None).await); // 2
    ok("put", c.put("b/1", "2", None).await); // 3
    ok("delete", c.delete("a", None).await); // 4

    // Replay from a start revision, then live events.
    let (mut s, id) = watch(&mut c, "a", WatchOptions::new().with_start_revision(2)).await;
    assert_eq!(
        events(&mut s, id, 2).await,
        [put_ev("a", "1", 2), del_ev("a", 4)]
    );
    ok("put", c.put("a", "again", None).await); // 5
    assert_eq!(events(&mut s, id, 1).await, [put_ev("a", "again", 5)]);

    // Prefix watch.
    let (mut p, pid) = watch(&mut c, "b/", WatchOptions::new().with_prefix()).await;
    ok("put", c.put("b", "not in prefix", None).await); // 6
    ok("put", c.put("b/2", "x", None).await); // 7
    assert_eq!(events(&mut p, pid, 1).await, [put_ev("b/2", "x", 7)]);

    // Explicit range [c, e).
    let (mut r, rid) = watch(&mut c, "c", WatchOptions::new().with_range("e")).await;
    for k in ["bz", "c", "d9", "e", "f"] {
        ok("put", c.put(k, "v", None).await); // 8..=12
    }
    assert_eq!(
        events(&mut r, rid, 2).await,
        [put_ev("c", "v", 9), put_ev("d9", "v", 10)]
    );

    // A from-key watch on "\0" covers every key; replay it from revision 11.
    let (mut all, aid) = watch(
        &mut c,
        "\0",
        WatchOptions::new().with_from_key().with_start_revision(11),
    )
    .await;
    assert_eq!(
        events(&mut all, aid, 2).await,
        [put_ev("e", "v", 11), put_ev("f", "v", 12)]
    );
}

#[tokio::test]
async fn watch_prev_kv_and_filters() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    ok("put", c.put("k", "old", None).await); // 2

    let (mut s, id) = watch(&mut c, "k", WatchOptions::new().with_prev_key()).await;
    let (mut noput, np) = watch(
        &mut c,
        "k",
        WatchOptions::new().with_filters([WatchFilterType::NoPut]),
    )
    .await;
    let (mut nodel, nd) = watch(
        &mut c,
        "k",
        WatchOptions::new().with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    ok("put", c.put("k", "new", None).await); // 3
    ok("delete", c.delete("k", None).await); // 4

    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), id);
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Put);
    let prev = e.prev_kv().expect("prev_kv on put");
    assert_eq!(prev.value(), b"old");
    assert_eq!(prev.mod_revision(), 2);
    let mut evs: Vec<_> = r.events().to_vec();
    if evs.len() < 2 {
        let r = next(&mut s).await;
        evs.extend(r.events().iter().cloned());
    }
    let del = &evs[1];
    assert_eq!(del.event_type(), EventType::Delete);
    // The delete event's kv is the tombstone: the key and the delete's revision, no value.
    let kv = del.kv().expect("kv");
    assert_eq!(kv.key(), b"k");
    assert_eq!(kv.mod_revision(), 4);
    assert!(kv.value().is_empty());
    assert_eq!(del.prev_kv().expect("prev_kv on delete").value(), b"new");

    // Without prev_kv asked, none is sent.
    assert_eq!(events(&mut noput, np, 1).await, [del_ev("k", 4)]);
    assert_eq!(events(&mut nodel, nd, 1).await, [put_ev("k", "new", 3)]);
}

#[tokio::test]
async fn watch_cancel_progress_and_client_ids() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (mut s, id) = watch(&mut c, "k", WatchOptions::new()).await;
    // etcd numbers the watches of a stream from 0.
    assert_eq!(id, 0);

    ok("put", c.put("other", "x", None).await); // 2
                                                // A progress request is answered with the current revision and no events.
    ok("progress", s.request_progress().await);
    let r = next(&mut s).await;
    assert!(r.events().is_empty());
    assert!(!r.created() && !r.canceled());
    assert_header("progress", r.header(), Some(2));
    // etcd 3.4 sends the progress response with watch_id -1 (it belongs to no single watch).
    assert_eq!(r.watch_id(), -1);

    // A second watch on the same stream with a client-chosen id.
    ok(
        "watch with id",
        s.watch("j", Some(WatchOptions::new().with_watch_id(7)))
            .await,
    );
    let r = next(&mut s).await;
    assert!(r.created());
    assert_eq!(r.watch_id(), 7);

    // Cancel watch 0: a `canceled` response for it, then only watch 7 gets events.
    ok("cancel", s.cancel(id).await);
    let r = next(&mut s).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), id);
    ok("put", c.put("k", "ignored", None).await); // 3
    ok("put", c.put("j", "seen", None).await); // 4
    assert_eq!(events(&mut s, 7, 1).await, [put_ev("j", "seen", 4)]);

    // progress_notify is accepted on create (etcd sends the periodic notifications every 10 minutes, too
    // slow to wait for here).
    let (_p, _pid) = watch(&mut c, "p", WatchOptions::new().with_progress_notify()).await;
}

#[tokio::test]
async fn watch_on_compacted_revision_is_canceled() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    for i in 0..5 {
        ok("put", c.put("k", format!("v{i}"), None).await); // 2..=6
    }
    ok("compact", c.compact(5, None).await);

    let mut s = ok(
        "watch",
        c.watch("k", Some(WatchOptions::new().with_start_revision(3)))
            .await,
    );
    // etcd 3.4: first the `created` response, then one saying canceled with compact_revision = 5.
    let r = next(&mut s).await;
    assert!(r.created(), "{r:?}");
    let id = r.watch_id();
    let r = next(&mut s).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), id);
    assert_eq!(r.compact_revision(), 5);
    assert!(r.events().is_empty());

    // Watching from the compaction revision itself works.
    let (mut s, id) = watch(&mut c, "k", WatchOptions::new().with_start_revision(5)).await;
    assert_eq!(
        events(&mut s, id, 2).await,
        [put_ev("k", "v3", 5), put_ev("k", "v4", 6)]
    );
}

#[tokio::test]
async fn many_watches_on_one_stream_lose_nothing() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    const WATCHES: i64 = 20;
    const WRITES: usize = 200;

    let (mut s, first) = watch(&mut c, "w/0/", WatchOptions::new().with_prefix()).await;
    let mut ids = vec![first];
    for i in 1..WATCHES {
        ok(
            "watch",
            s.watch(format!("w/{i}/"), Some(WatchOptions::new().with_prefix()))
                .await,
        );
        let r = next(&mut s).await;
        assert!(r.created(), "{r:?}");
        ids.push(r.watch_id());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "watch ids are distinct: {ids:?}");
    // etcd hands out 0, 1, 2, ... on a stream.
    assert_eq!(ids, (0..WATCHES).collect::<Vec<_>>());

    // Writes spread over the watched prefixes, in a known order.
    let writer = {
        let mut c = c.clone();
        tokio::spawn(async move {
            for n in 0..WRITES {
                let w = n as i64 % WATCHES;
                c.put(format!("w/{w}/{n}"), n.to_string(), None)
                    .await
                    .expect("put");
            }
        })
    };
    let mut got: Vec<Vec<Ev>> = vec![Vec::new(); WATCHES as usize];
    let mut total = 0;
    while total < WRITES {
        let r = next(&mut s).await;
        assert!(!r.canceled(), "{r:?}");
        let idx = ids
            .iter()
            .position(|&i| i == r.watch_id())
            .expect("known id");
        let evs = flat(&r);
        total += evs.len();
        got[idx].extend(evs);
    }
    bounded("writer", writer).await.expect("writer task");
    for (w, evs) in got.iter().enumerate() {
        let want: Vec<Ev> = (0..WRITES)
            .filter(|n| n % WATCHES as usize == w)
            .map(|n| put_ev(&format!("w/{w}/{n}"), &n.to_string(), n as i64 + 2))
            .collect();
        assert_eq!(evs, &want, "watch {w}: every event, in order");
    }
    let r = ok(
        "get",
        c.get("w/", Some(GetOptions::new().with_prefix())).await,
    );
    assert_eq!(r.count() as usize, WRITES);
}

#[tokio::test]
async fn watch_sees_a_txn_as_one_revision() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (mut s, id) = watch(&mut c, "t/", WatchOptions::new().with_prefix()).await;
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("t/a", "1", None),
        etcd_client::TxnOp::put("t/b", "2", None),
    ]);
    ok("txn", c.txn(txn).await);
    // etcd delivers a revision's events together in one response.
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), id);
    assert_eq!(flat(&r), [put_ev("t/a", "1", 2), put_ev("t/b", "2", 2)]);
}
