//! etcd compatibility, Lease service, through the `etcd-client` crate.
//!
//! Expectations observed on etcd 3.4.23 (`COMPAT_REFERENCE_ETCD=/usr/bin/etcd` re-checks them).

mod common;
mod compat;

use std::time::Duration;

use compat::{assert_header, assert_status, bounded, connect, eventually, ok, rev_of, start};
use etcd_client::{
    EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use tonic::Code;

const NOT_FOUND: &str = "etcdserver: requested lease not found";

/// One keep-alive request on an open stream, and its answer.
async fn keep_alive_once(
    keeper: &mut etcd_client::LeaseKeeper,
    stream: &mut etcd_client::LeaseKeepAliveStream,
) -> etcd_client::LeaseKeepAliveResponse {
    ok("keep_alive send", keeper.keep_alive().await);
    bounded("keep_alive recv", stream.message())
        .await
        .expect("keep_alive stream")
        .expect("keep_alive response")
}

#[tokio::test]
async fn grant_ids_ttls_and_errors() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;

    let r = ok("grant", c.lease_grant(60, None).await);
    assert_ne!(r.id(), 0, "the server picks a non-zero id");
    assert_eq!(r.ttl(), 60);
    assert!(r.error().is_empty());
    // Granting makes no revision.
    assert_header("grant", r.header(), Some(1));

    let r = ok(
        "grant with id",
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await,
    );
    assert_eq!(r.id(), 0x1234);
    assert_eq!(r.ttl(), 30);
    assert_status(
        "grant an existing id",
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );

    // etcd raises a TTL below its minimum (ceil(1.5 * election timeout) = 2 s with default flags).
    let r = ok("grant ttl 1", c.lease_grant(1, None).await);
    assert_eq!(r.ttl(), 2, "TTL raised to the minimum");
    let ttl = ok("ttl", c.lease_time_to_live(r.id(), None).await);
    assert_eq!(ttl.granted_ttl(), 2);

    assert_status(
        "TTL above the maximum",
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );

    assert_status(
        "revoke unknown",
        c.lease_revoke(0x777).await,
        Code::NotFound,
        NOT_FOUND,
    );
    assert_status(
        "put with unknown lease",
        c.put("k", "v", Some(PutOptions::new().with_lease(0x777)))
            .await,
        Code::NotFound,
        NOT_FOUND,
    );
    // etcd 3.4 answers time-to-live of an unknown lease with TTL -1, not an error.
    let r = ok("ttl unknown", c.lease_time_to_live(0x777, None).await);
    assert_eq!(r.ttl(), -1);
    assert_eq!(r.id(), 0x777);

    // Leases lists every lease.
    let r = ok("leases", c.leases().await);
    let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&0x1234));
    assert_header("leases", r.header(), None);
}

#[tokio::test]
async fn time_to_live_keepalive_and_revoke() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let id = ok("grant", c.lease_grant(60, None).await).id();
    for k in ["l/a", "l/b", "l/c"] {
        ok(
            "put",
            c.put(k, "v", Some(PutOptions::new().with_lease(id))).await,
        ); // 2, 3, 4
    }
    ok("put unleased", c.put("l/free", "v", None).await); // 5
    let kv = ok("get", c.get("l/a", None).await).kvs()[0].clone();
    assert_eq!(kv.lease(), id);

    let r = ok(
        "ttl with keys",
        c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
    );
    assert_eq!(r.id(), id);
    assert_eq!(r.granted_ttl(), 60);
    assert!(r.ttl() > 0 && r.ttl() <= 60, "ttl {}", r.ttl());
    let mut keys: Vec<Vec<u8>> = r.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"l/a".to_vec(), b"l/b".to_vec(), b"l/c".to_vec()]);
    let r = ok("ttl without keys", c.lease_time_to_live(id, None).await);
    assert!(r.keys().is_empty());

    // Keep-alive stream: each request is answered with the lease's full TTL.
    let (mut keeper, mut stream) = ok("keep_alive", c.lease_keep_alive(id).await);
    for _ in 0..3 {
        let r = keep_alive_once(&mut keeper, &mut stream).await;
        assert_eq!(r.id(), id);
        assert_eq!(r.ttl(), 60);
        assert_header("keep_alive", r.header(), None);
    }

    // Revoking deletes every attached key in one revision; a watcher sees the deletes.
    let mut w = ok(
        "watch",
        c.watch("l/", Some(WatchOptions::new().with_prefix())).await,
    );
    let created = bounded("created", w.message())
        .await
        .expect("watch")
        .expect("created");
    assert!(created.created());
    let r = ok("revoke", c.lease_revoke(id).await);
    assert_header("revoke", r.header(), Some(6));
    let mut deletes = Vec::new();
    while deletes.len() < 3 {
        let r = bounded("events", w.message())
            .await
            .expect("watch")
            .expect("events");
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Delete);
            let kv = e.kv().expect("kv");
            deletes.push((kv.key().to_vec(), kv.mod_revision()));
        }
    }
    deletes.sort();
    assert_eq!(
        deletes,
        [
            (b"l/a".to_vec(), 6),
            (b"l/b".to_vec(), 6),
            (b"l/c".to_vec(), 6)
        ]
    );
    let r = ok(
        "get",
        c.get("l/", Some(GetOptions::new().with_prefix())).await,
    );
    assert_eq!(r.count(), 1, "only the unleased key is left");
    assert_eq!(rev_of(r.header()), 6);

    // The revoked lease is gone.
    let r = ok("ttl revoked", c.lease_time_to_live(id, None).await);
    assert_eq!(r.ttl(), -1);
    assert_status(
        "revoke twice",
        c.lease_revoke(id).await,
        Code::NotFound,
        NOT_FOUND,
    );
    // etcd answers a keep-alive for an unknown lease with TTL 0 on the stream (no error).
    ok("keep_alive revoked", keeper.keep_alive().await);
    let r = bounded("keep_alive recv", stream.message())
        .await
        .expect("keep_alive stream")
        .expect("keep_alive response");
    assert_eq!(r.ttl(), 0);
}

#[tokio::test]
async fn lease_expires_without_keepalive() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let id = ok("grant", c.lease_grant(2, None).await).id();
    ok(
        "put",
        c.put("short", "lived", Some(PutOptions::new().with_lease(id)))
            .await,
    );
    let mut w = ok("watch", c.watch("short", None).await);
    let created = bounded("created", w.message())
        .await
        .expect("watch")
        .expect("created");
    assert!(created.created());

    // The deadline is a safety bound: expiry takes about 2 s; allow far more.
    let mut c2 = c.clone();
    eventually("leased key deleted", Duration::from_secs(30), || {
        let mut c = c2.clone();
        async move {
            let r = c.get("short", None).await.expect("get");
            r.kvs().is_empty().then_some(())
        }
    })
    .await;
    let r = bounded("delete event", w.message())
        .await
        .expect("watch")
        .expect("event");
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    let r = ok("ttl expired", c2.lease_time_to_live(id, None).await);
    assert_eq!(r.ttl(), -1);
    assert_status(
        "revoke expired",
        c2.lease_revoke(id).await,
        Code::NotFound,
        NOT_FOUND,
    );
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let (mut server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let id = ok(
        "grant",
        c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(42)))
            .await,
    )
    .id();
    ok(
        "put",
        c.put("kept", "v", Some(PutOptions::new().with_lease(id)))
            .await,
    );
    drop(c);
    // A clean stop (SIGTERM); etcd itself dies by the signal, so the exit code is not asserted here.
    server.sigterm_and_wait().await;
    server.restart().await;

    let mut c = connect(&server).await;
    let r = ok(
        "ttl after restart",
        c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
    );
    assert_eq!(r.granted_ttl(), 600);
    assert!(r.ttl() > 0, "lease still alive: {}", r.ttl());
    assert_eq!(r.keys(), [b"kept".to_vec()]);
    let kv = ok("get", c.get("kept", None).await).kvs()[0].clone();
    assert_eq!(kv.lease(), id);
    let r = ok("leases", c.leases().await);
    assert_eq!(r.leases().iter().map(|l| l.id()).collect::<Vec<_>>(), [42]);
    // And it still works: revoke deletes the key.
    ok("revoke", c.lease_revoke(id).await);
    assert!(ok("get", c.get("kept", None).await).kvs().is_empty());
}

/// SIGTERM with a keep-alive stream open (as every clientv3 session holds one): the server waits
/// for calls in flight at most its drain timeout, as etcd does, then closes the stream and exits 0.
/// Before the timeout existed the stream kept the process alive until the client left.
#[tokio::test]
async fn sigterm_with_a_keepalive_stream_open_still_exits() {
    let (mut server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let id = ok("grant", c.lease_grant(60, None).await).id();
    let (mut keeper, mut stream) = ok("keep_alive", c.lease_keep_alive(id).await);
    assert_eq!(keep_alive_once(&mut keeper, &mut stream).await.id(), id);
    // The stream stays open (keeper and stream alive) while the server stops.
    server.stop().await;
    drop((keeper, stream));
}
