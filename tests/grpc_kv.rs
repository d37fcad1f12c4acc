//! etcd compatibility, KV service: what the `etcd-client` crate sees from mini-etcd's gRPC API.
//!
//! Each expectation (values, revisions, error codes and texts) was observed on etcd 3.4.23; run with
//! `COMPAT_REFERENCE_ETCD=/usr/bin/etcd` to check them against etcd again.

mod common;
mod compat;

use compat::{assert_header, assert_status, bounded, connect, ok, rev_of, start};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

/// Puts `key=value` and returns the revision of the write.
async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let r = ok(
        &format!("put {key}"),
        bounded("put", c.put(key, value, None)).await,
    );
    rev_of(r.header())
}

/// The keys of a range answer, as strings.
fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn get(c: &mut Client, key: &str, opts: GetOptions) -> etcd_client::GetResponse {
    ok(
        &format!("get {key}"),
        bounded("get", c.get(key, Some(opts))).await,
    )
}

#[tokio::test]
async fn put_get_and_headers() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;

    // A fresh etcd is at revision 1.
    let r = get(&mut c, "k", GetOptions::new()).await;
    assert_header("get on empty store", r.header(), Some(1));
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    let r = ok("put", c.put("k", "v1", None).await);
    assert_header("put", r.header(), Some(2));
    assert!(r.prev_key().is_none(), "no prev_kv unless asked");

    // prev_kv on a new key: no previous pair.
    let r = ok(
        "put new with prev_kv",
        c.put("n", "x", Some(PutOptions::new().with_prev_key()))
            .await,
    );
    assert!(r.prev_key().is_none());
    assert_header("put", r.header(), Some(3));

    let r = ok(
        "put prev_kv",
        c.put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await,
    );
    assert_header("put prev_kv", r.header(), Some(4));
    let prev = r.prev_key().expect("prev_kv");
    assert_eq!(prev.value(), b"v1");
    assert_eq!(prev.create_revision(), 2);
    assert_eq!(prev.mod_revision(), 2);
    assert_eq!(prev.version(), 1);

    let r = get(&mut c, "k", GetOptions::new()).await;
    assert_header("get", r.header(), Some(4));
    assert_eq!(r.count(), 1);
    assert!(!r.more());
    let kv = &r.kvs()[0];
    assert_eq!(kv.key(), b"k");
    assert_eq!(kv.value(), b"v2");
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (2, 4, 2, 0)
    );

    // Binary keys and values round-trip.
    let key = vec![0u8, 0xff, b'b', 0x80];
    let val = vec![0xfeu8, 0, 1];
    ok("binary put", c.put(key.clone(), val.clone(), None).await);
    let r = ok("binary get", c.get(key.clone(), None).await);
    assert_eq!(r.kvs()[0].key(), key.as_slice());
    assert_eq!(r.kvs()[0].value(), val.as_slice());
}

#[tokio::test]
async fn put_ignore_value_and_ignore_lease() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;

    // etcd: "etcdserver: key not found" (InvalidArgument) when the key does not exist.
    assert_status(
        "ignore_value on a missing key",
        c.put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        "ignore_lease on a missing key",
        c.put("k", "v", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );

    let lease = ok("grant", c.lease_grant(60, None).await).id();
    put(&mut c, "k", "v1").await;
    ok(
        "attach lease",
        c.put("k", "v1", Some(PutOptions::new().with_lease(lease)))
            .await,
    );

    // ignore_value keeps the value, bumps version and mod revision.
    let r = ok(
        "ignore_value",
        c.put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await,
    );
    let rev = rev_of(r.header());
    let kv = get(&mut c, "k", GetOptions::new()).await.kvs()[0].clone();
    assert_eq!(kv.value(), b"v1");
    assert_eq!(kv.mod_revision(), rev);
    assert_eq!(kv.version(), 3);
    // etcd: ignore_value says nothing about the lease, so a put without one detaches it.
    assert_eq!(kv.lease(), 0, "ignore_value without a lease detaches it");

    // ignore_lease keeps the lease while replacing the value.
    ok(
        "attach lease again",
        c.put("k", "v1", Some(PutOptions::new().with_lease(lease)))
            .await,
    );
    ok(
        "ignore_lease",
        c.put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
            .await,
    );
    let kv = get(&mut c, "k", GetOptions::new()).await.kvs()[0].clone();
    assert_eq!(kv.value(), b"v2");
    assert_eq!(kv.lease(), lease);

    // etcd: a value together with ignore_value is "etcdserver: value is provided".
    assert_status(
        "ignore_value with a value",
        c.put("k", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    // etcd: a lease together with ignore_lease is "etcdserver: lease is provided".
    assert_status(
        "ignore_lease with a lease",
        c.put(
            "k",
            "x",
            Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
}

#[tokio::test]
async fn range_forms_limit_count_keys_only() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    for k in ["a", "b", "ba", "bb", "c", "d"] {
        put(&mut c, k, &format!("v-{k}")).await;
    }

    let r = get(&mut c, "b", GetOptions::new().with_range("c")).await;
    assert_eq!(keys(r.kvs()), ["b", "ba", "bb"]);
    assert_eq!(r.count(), 3);

    let r = get(&mut c, "b", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(r.kvs()), ["b", "ba", "bb"]);

    let r = get(&mut c, "bb", GetOptions::new().with_from_key()).await;
    assert_eq!(keys(r.kvs()), ["bb", "c", "d"]);

    // key "\0" with range_end "\0" is every key.
    let r = get(&mut c, "\0", GetOptions::new().with_from_key()).await;
    assert_eq!(keys(r.kvs()), ["a", "b", "ba", "bb", "c", "d"]);
    let r = get(&mut c, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(r.count(), 6);

    // limit: `more` says something was left out; `count` is the full match count.
    let r = get(&mut c, "", GetOptions::new().with_all_keys().with_limit(2)).await;
    assert_eq!(keys(r.kvs()), ["a", "b"]);
    assert!(r.more());
    assert_eq!(r.count(), 6);
    let r = get(&mut c, "", GetOptions::new().with_all_keys().with_limit(6)).await;
    assert!(!r.more());
    assert_eq!(r.kvs().len(), 6);

    // count_only: no kvs, the count.
    let r = get(
        &mut c,
        "b",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);

    // keys_only: keys and metadata without values.
    let r = get(
        &mut c,
        "b",
        GetOptions::new().with_prefix().with_keys_only(),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["b", "ba", "bb"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert!(r.kvs().iter().all(|kv| kv.mod_revision() > 0));

    // A range with nothing in it.
    let r = get(&mut c, "x", GetOptions::new().with_prefix()).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    assert!(!r.more());

    // serializable reads answer the same on one member.
    let r = get(&mut c, "a", GetOptions::new().with_serializable()).await;
    assert_eq!(r.kvs()[0].value(), b"v-a");
    assert_header("serializable get", r.header(), Some(7));
}

#[tokio::test]
async fn range_history_and_revision_filters() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let r1 = put(&mut c, "k", "one").await; // 2
    let r2 = put(&mut c, "k", "two").await; // 3
    let r3 = put(&mut c, "other", "x").await; // 4
    ok("delete", c.delete("k", None).await); // 5
    assert_eq!((r1, r2, r3), (2, 3, 4));

    let r = get(&mut c, "k", GetOptions::new().with_revision(r1)).await;
    assert_eq!(r.kvs()[0].value(), b"one");
    // etcd: the header of a historical read carries the current revision, not the one asked for.
    assert_header("history read", r.header(), Some(5));
    let r = get(&mut c, "k", GetOptions::new().with_revision(r2)).await;
    assert_eq!(r.kvs()[0].value(), b"two");
    assert_eq!(r.kvs()[0].version(), 2);
    let r = get(&mut c, "k", GetOptions::new().with_revision(5)).await;
    assert!(r.kvs().is_empty(), "deleted at 5");
    // Revision 1 predates every key.
    let r = get(&mut c, "k", GetOptions::new().with_revision(1)).await;
    assert!(r.kvs().is_empty());

    assert_status(
        "future revision",
        c.get("k", Some(GetOptions::new().with_revision(6))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    // min/max mod and create revision filters.
    for (k, v) in [("m1", "a"), ("m2", "b"), ("m3", "c")] {
        put(&mut c, k, v).await; // 6, 7, 8
    }
    put(&mut c, "m1", "a2").await; // 9: m1 created 6, modified 9
    let all = || GetOptions::new().with_prefix();
    let r = get(&mut c, "m", all().with_min_mod_revision(8)).await;
    assert_eq!(keys(r.kvs()), ["m1", "m3"]);
    let r = get(&mut c, "m", all().with_max_mod_revision(7)).await;
    assert_eq!(keys(r.kvs()), ["m2"]);
    let r = get(&mut c, "m", all().with_min_create_revision(7)).await;
    assert_eq!(keys(r.kvs()), ["m2", "m3"]);
    let r = get(&mut c, "m", all().with_max_create_revision(6)).await;
    assert_eq!(keys(r.kvs()), ["m1"]);
}

#[tokio::test]
async fn range_sorting() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    // Keys in order a<b<c; values, create revisions and versions in other orders.
    put(&mut c, "s/b", "1").await; // create 2
    put(&mut c, "s/c", "3").await; // create 3
    put(&mut c, "s/a", "2").await; // create 4
    put(&mut c, "s/c", "0").await; // c: version 2, mod 5
    put(&mut c, "s/c", "9").await; // c: version 3, mod 6
    put(&mut c, "s/b", "5").await; // b: version 2, mod 7

    let sorted = |t, o| GetOptions::new().with_prefix().with_sort(t, o);
    let cases: &[(SortTarget, SortOrder, &[&str])] = &[
        (SortTarget::Key, SortOrder::Ascend, &["s/a", "s/b", "s/c"]),
        (SortTarget::Key, SortOrder::Descend, &["s/c", "s/b", "s/a"]),
        (SortTarget::Value, SortOrder::Ascend, &["s/a", "s/b", "s/c"]),
        (
            SortTarget::Value,
            SortOrder::Descend,
            &["s/c", "s/b", "s/a"],
        ),
        (
            SortTarget::Create,
            SortOrder::Ascend,
            &["s/b", "s/c", "s/a"],
        ),
        (
            SortTarget::Create,
            SortOrder::Descend,
            &["s/a", "s/c", "s/b"],
        ),
        (SortTarget::Mod, SortOrder::Ascend, &["s/a", "s/c", "s/b"]),
        (SortTarget::Mod, SortOrder::Descend, &["s/b", "s/c", "s/a"]),
        (
            SortTarget::Version,
            SortOrder::Descend,
            &["s/c", "s/b", "s/a"],
        ),
    ];
    for (target, order, want) in cases {
        let r = get(&mut c, "s/", sorted(*target, *order)).await;
        assert_eq!(keys(r.kvs()), *want, "sort {target:?} {order:?}");
    }
    // Sorting applies before the limit: the top of the sorted list, with more=true.
    let r = get(
        &mut c,
        "s/",
        sorted(SortTarget::Value, SortOrder::Descend).with_limit(1),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["s/c"]);
    assert!(r.more());
    assert_eq!(r.count(), 3);
    // keys-only still sorts on the values (etcdctl get --prefix --keys-only --sort-by=VALUE),
    // in both directions, and leaves the values out.
    for (order, want) in [
        (SortOrder::Ascend, ["s/a", "s/b", "s/c"]),
        (SortOrder::Descend, ["s/c", "s/b", "s/a"]),
    ] {
        let r = get(
            &mut c,
            "s/",
            sorted(SortTarget::Value, order).with_keys_only(),
        )
        .await;
        assert_eq!(keys(r.kvs()), want, "keys-only by value {order:?}");
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()), "{order:?}");
    }
}

#[tokio::test]
async fn delete_ranges_with_prev_kv() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    for k in ["p/1", "p/2", "p/3", "q"] {
        put(&mut c, k, k).await;
    }
    let r = ok("delete missing", c.delete("nope", None).await);
    assert_eq!(r.deleted(), 0);
    // etcd: deleting nothing does not create a revision.
    assert_header("delete nothing", r.header(), Some(5));

    let r = ok(
        "delete one",
        c.delete("q", Some(DeleteOptions::new().with_prev_key()))
            .await,
    );
    assert_eq!(r.deleted(), 1);
    assert_header("delete", r.header(), Some(6));
    assert_eq!(keys(r.prev_kvs()), ["q"]);
    assert_eq!(r.prev_kvs()[0].value(), b"q");

    let r = ok(
        "delete prefix",
        c.delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await,
    );
    assert_eq!(r.deleted(), 3);
    assert_eq!(keys(r.prev_kvs()), ["p/1", "p/2", "p/3"]);
    // One revision for the whole range delete.
    assert_header("delete prefix", r.header(), Some(7));
    let r = get(&mut c, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(r.count(), 0);

    // Without prev_kv no pairs come back.
    put(&mut c, "z", "1").await;
    let r = ok("delete plain", c.delete("z", None).await);
    assert!(r.prev_kvs().is_empty());
    assert_eq!(r.deleted(), 1);
}

#[tokio::test]
async fn empty_key_is_rejected() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let msg = "etcdserver: key is not provided";
    assert_status(
        "put empty key",
        c.put("", "v", None).await,
        Code::InvalidArgument,
        msg,
    );
    assert_status(
        "get empty key",
        c.get("", None).await,
        Code::InvalidArgument,
        msg,
    );
    assert_status(
        "delete empty key",
        c.delete("", None).await,
        Code::InvalidArgument,
        msg,
    );
}

#[tokio::test]
async fn txn_compares_and_branches() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let lease = ok("grant", c.lease_grant(60, None).await).id();
    put(&mut c, "k", "b").await; // rev 2 (grant makes no revision)
    ok(
        "put leased",
        c.put("l", "x", Some(PutOptions::new().with_lease(lease)))
            .await,
    ); // rev 3
       // k: version 1, create 2, mod 2, value "b", lease 0.

    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("k", Equal, 1), true),
        (Compare::version("k", NotEqual, 1), false),
        (Compare::version("k", Greater, 0), true),
        (Compare::version("k", Less, 1), false),
        (Compare::create_revision("k", Equal, 2), true),
        (Compare::create_revision("k", Greater, 2), false),
        (Compare::create_revision("k", Less, 3), true),
        (Compare::mod_revision("k", Equal, 2), true),
        (Compare::mod_revision("k", NotEqual, 2), false),
        (Compare::mod_revision("k", Less, 2), false),
        (Compare::value("k", Equal, "b"), true),
        (Compare::value("k", Greater, "a"), true),
        (Compare::value("k", Less, "a"), false),
        (Compare::value("k", NotEqual, "b"), false),
        (Compare::lease("l", Equal, lease), true),
        (Compare::lease("k", Equal, 0), true),
        (Compare::lease("l", NotEqual, lease), false),
        // A missing key has version 0 and create revision 0.
        (Compare::version("missing", Equal, 0), true),
        (Compare::create_revision("missing", Equal, 0), true),
        // etcd: a value compare on a missing key is false whatever the operator.
        (Compare::value("missing", NotEqual, "x"), false),
        // A compare over a range holds only if it holds for every key in it.
        (Compare::version("k", Greater, 0).with_range("m"), true),
        (Compare::version("k", Equal, 1).with_prefix(), true),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let what = format!("compare #{i} {cmp:?}");
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::get("k", None)])
            .or_else([TxnOp::get("l", None)]);
        let r = ok(&what, c.txn(txn).await);
        assert_eq!(r.succeeded(), want, "{what}");
        assert_header(&what, r.header(), Some(3));
        let got = match &r.op_responses()[..] {
            [TxnOpResponse::Get(g)] => g.kvs()[0].key().to_vec(),
            other => panic!("{what}: responses {other:?}"),
        };
        assert_eq!(
            got,
            if want { b"k".to_vec() } else { b"l".to_vec() },
            "{what}"
        );
    }

    // Failure branch writes; several compares are ANDed.
    let txn = Txn::new()
        .when([
            Compare::value("k", Equal, "b"),
            Compare::version("k", Equal, 9),
        ])
        .and_then([TxnOp::put("r", "success", None)])
        .or_else([TxnOp::put("r", "failure", None)]);
    let r = ok("and-ed compares", c.txn(txn).await);
    assert!(!r.succeeded());
    assert_header("failure branch put", r.header(), Some(4));
    let v = ok("get r", c.get("r", None).await);
    assert_eq!(v.kvs()[0].value(), b"failure");

    // An empty txn succeeds and writes nothing.
    let r = ok("empty txn", c.txn(Txn::new()).await);
    assert!(r.succeeded());
    assert_header("empty txn", r.header(), Some(4));
}

#[tokio::test]
async fn txn_one_revision_nested_and_limits() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    put(&mut c, "d", "1").await; // 2

    // Several writes in one txn share one revision; reads inside see earlier writes of the same txn.
    let txn = Txn::new().and_then([
        TxnOp::put("a", "1", None),
        TxnOp::put("b", "2", Some(PutOptions::new().with_prev_key())),
        TxnOp::delete("d", Some(DeleteOptions::new().with_prev_key())),
        TxnOp::get("a", None),
    ]);
    let r = ok("multi-op txn", c.txn(txn).await);
    assert!(r.succeeded());
    assert_header("multi-op txn", r.header(), Some(3));
    let resps = r.op_responses();
    assert_eq!(resps.len(), 4);
    match &resps[2] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"1");
        }
        other => panic!("third response {other:?}"),
    }
    match &resps[3] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"1"),
        other => panic!("fourth response {other:?}"),
    }
    for k in ["a", "b"] {
        let kv = ok("get", c.get(k, None).await).kvs()[0].clone();
        assert_eq!(kv.mod_revision(), 3, "{k} written at the txn's revision");
    }

    // Nested txn: the inner compare runs inside the outer branch.
    let inner = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("inner", "yes", None)])
        .or_else([TxnOp::put("inner", "no", None)]);
    let outer = Txn::new()
        .when([Compare::version("a", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("outer", "x", None), TxnOp::txn(inner)]);
    let r = ok("nested txn", c.txn(outer).await);
    assert!(r.succeeded());
    assert_header("nested txn", r.header(), Some(4));
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("nested response {other:?}"),
    }
    let kv = ok("get inner", c.get("inner", None).await).kvs()[0].clone();
    assert_eq!(kv.value(), b"yes");
    assert_eq!(kv.mod_revision(), 4);

    // A read-only txn creates no revision.
    let r = ok(
        "read-only txn",
        c.txn(Txn::new().and_then([TxnOp::get("a", None)])).await,
    );
    assert_header("read-only txn", r.header(), Some(4));

    // etcd's default --max-txn-ops is 128.
    let ops: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("many/{i}"), "v", None))
        .collect();
    let r = ok("128 ops", c.txn(Txn::new().and_then(ops)).await);
    assert_header("128 ops", r.header(), Some(5));
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("many/{i}"), "v", None))
        .collect();
    assert_status(
        "129 ops",
        c.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );

    // Two writes to one key in one branch.
    assert_status(
        "duplicate put",
        c.txn(Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // A put inside a deleted range is a duplicate too.
    assert_status(
        "put under a deleted prefix",
        c.txn(Txn::new().and_then([
            TxnOp::delete("many/", Some(DeleteOptions::new().with_prefix())),
            TxnOp::put("many/1", "2", None),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // The same key in the success and the failure branch is fine.
    let r = ok(
        "same key in both branches",
        c.txn(
            Txn::new()
                .and_then([TxnOp::put("x", "1", None)])
                .or_else([TxnOp::put("x", "2", None)]),
        )
        .await,
    );
    assert!(r.succeeded());
    // Nothing of the rejected txns was applied.
    let r = ok("get x", c.get("x", None).await);
    assert_header("after rejected txns", r.header(), Some(6));
}

#[tokio::test]
async fn compaction_errors() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    for i in 0..5 {
        put(&mut c, "k", &format!("v{i}")).await; // revs 2..=6
    }
    assert_status(
        "compact a future revision",
        c.compact(7, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let r = ok("compact 4", c.compact(4, None).await);
    assert_header("compact", r.header(), Some(6));

    // History before the compaction point is gone, the compaction point itself is readable.
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    assert_status(
        "read at 3",
        c.get("k", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        compacted,
    );
    let r = ok(
        "read at 4",
        c.get("k", Some(GetOptions::new().with_revision(4))).await,
    );
    assert_eq!(r.kvs()[0].value(), b"v2");
    assert_status(
        "compact again at 4",
        c.compact(4, None).await,
        Code::OutOfRange,
        compacted,
    );
    assert_status(
        "compact below",
        c.compact(2, None).await,
        Code::OutOfRange,
        compacted,
    );

    // physical: the call returns once the compaction is done.
    let r = ok(
        "physical compact",
        c.compact(6, Some(CompactionOptions::new().with_physical()))
            .await,
    );
    assert_header("physical compact", r.header(), Some(6));
    assert_status(
        "read at 5 after physical",
        c.get("k", Some(GetOptions::new().with_revision(5))).await,
        Code::OutOfRange,
        compacted,
    );
    let r = ok("current read", c.get("k", None).await);
    assert_eq!(r.kvs()[0].value(), b"v4");
    assert_eq!(
        r.kvs()[0].version(),
        5,
        "compaction keeps the version count"
    );
}

#[tokio::test]
async fn request_too_large() {
    let (server, _dir) = start(&["--max-request-bytes", "1024"]).await;
    let mut c = connect(&server).await;
    put(&mut c, "small", "fits").await;
    let big = "x".repeat(2000);
    assert_status(
        "put over --max-request-bytes",
        c.put("big", big.as_str(), None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let r = ok("get big", c.get("big", None).await);
    assert!(r.kvs().is_empty());
    assert_header("after rejected put", r.header(), Some(2));
}
