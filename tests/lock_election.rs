//! etcd compatibility, Lock and Election services, through the `etcd-client` crate, etcdctl and
//! the JSON gateway.
//!
//! Expectations observed on etcd 3.4.23 (`COMPAT_REFERENCE_ETCD=/usr/bin/etcd` re-checks them;
//! the one test of a behaviour that is ours says so and does not run there). Both services answer
//! every error with code Unknown and etcd's text (etcd serves them through its own client, whose
//! errors have lost their gRPC codes).
//!
//! Waiting is observed through server state, never through time: a second contender is known to
//! be queued once its key exists, and a call known to be blocked is checked not to have finished.

mod common;
mod compat;

use std::time::Duration;

use compat::{assert_header, assert_status, bounded, connect, eventually, ok, start, Running};
use etcd_client::{
    Client, GetOptions, LeaderKey, LeaseTimeToLiveOptions, LockOptions, ProclaimOptions,
    ResignOptions,
};
use tokio::task::JoinHandle;
use tonic::Code;

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = r#""leader" field must be provided"#;

/// How long a test waits for server state it expects (a safety bound, not a speed claim).
const STATE_BOUND: Duration = Duration::from_secs(30);

/// A lease of 100 s (long enough never to expire during a test).
async fn lease(c: &mut Client) -> i64 {
    ok("lease grant", c.lease_grant(100, None).await).id()
}

/// The keys under `prefix`, in key order.
async fn keys(c: &mut Client, prefix: &str) -> Vec<String> {
    let r = ok(
        "get prefix",
        c.get(prefix, Some(GetOptions::new().with_prefix())).await,
    );
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Waits until `prefix` holds exactly `n` keys.
async fn await_keys(c: &Client, prefix: &str, n: usize) {
    eventually(&format!("{n} keys under {prefix}"), STATE_BOUND, || {
        let mut c = c.clone();
        async move { (keys(&mut c, prefix).await.len() == n).then_some(()) }
    })
    .await;
}

/// A Lock call on its own task.
fn lock_in_background(
    c: &Client,
    name: &str,
    lease: i64,
) -> JoinHandle<Result<etcd_client::LockResponse, etcd_client::Error>> {
    let (mut c, name) = (c.clone(), name.to_string());
    tokio::spawn(async move {
        c.lock(name, Some(LockOptions::new().with_lease(lease)))
            .await
    })
}

/// The result of a background call that must end now that what blocked it is gone.
async fn finished<T>(what: &str, task: JoinHandle<T>) -> T {
    bounded(what, task).await.expect("task panicked")
}

#[tokio::test]
async fn second_locker_waits_for_the_first() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);

    let first = ok(
        "lock 1",
        c.lock("mtx", Some(LockOptions::new().with_lease(l1))).await,
    );
    // The key is the name, a slash and the lease id in lower-case hex.
    assert_eq!(first.key(), format!("mtx/{l1:x}").as_bytes());
    assert_header("lock 1", first.header(), Some(2));

    // Locking again with the same lease is the same hold, answered at once.
    let again = ok(
        "lock 1 again",
        c.lock("mtx", Some(LockOptions::new().with_lease(l1))).await,
    );
    assert_eq!(again.key(), first.key());

    let second = lock_in_background(&c, "mtx", l2);
    await_keys(&c, "mtx/", 2).await;
    assert!(
        !second.is_finished(),
        "the second locker must wait while the first holds the lock"
    );

    let unlocked = ok("unlock 1", c.unlock(first.key()).await);
    let unlock_rev = unlocked.header().expect("header").revision();
    let second = ok("lock 2", finished("lock 2", second).await);
    assert_eq!(second.key(), format!("mtx/{l2:x}").as_bytes());
    // The hold is answered after the release it waited for.
    assert_header("lock 2", second.header(), None);
    assert!(second.header().expect("header").revision() >= unlock_rev);
    assert_eq!(keys(&mut c, "mtx/").await, [format!("mtx/{l2:x}")]);

    ok("unlock 2", c.unlock(second.key()).await);
    assert!(keys(&mut c, "mtx/").await.is_empty());
}

#[tokio::test]
async fn lockers_get_the_lock_in_queue_order() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let leases = [
        lease(&mut c).await,
        lease(&mut c).await,
        lease(&mut c).await,
    ];
    let holder = ok(
        "lock 0",
        c.lock("q", Some(LockOptions::new().with_lease(leases[0])))
            .await,
    );
    let second = lock_in_background(&c, "q", leases[1]);
    await_keys(&c, "q/", 2).await;
    let third = lock_in_background(&c, "q", leases[2]);
    await_keys(&c, "q/", 3).await;

    ok("unlock 0", c.unlock(holder.key()).await);
    let second = ok("lock 1", finished("lock 1", second).await);
    assert_eq!(second.key(), format!("q/{:x}", leases[1]).as_bytes());
    assert!(
        !third.is_finished(),
        "the third waits for the second, not for the first"
    );
    ok("unlock 1", c.unlock(second.key()).await);
    let third = ok("lock 2", finished("lock 2", third).await);
    assert_eq!(third.key(), format!("q/{:x}", leases[2]).as_bytes());
}

#[tokio::test]
async fn lock_errors() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    assert_status(
        "lock with a lease that does not exist",
        c.lock("m", Some(LockOptions::new().with_lease(0x1234)))
            .await,
        Code::Unknown,
        LEASE_NOT_FOUND,
    );
    assert!(keys(&mut c, "m/").await.is_empty(), "nothing was queued");
    assert_status(
        "unlock without a key",
        c.unlock("").await,
        Code::Unknown,
        "etcdserver: key is not provided",
    );
    // Unlocking a key that does not exist is no error.
    let r = ok("unlock a missing key", c.unlock("m/nope").await);
    assert_header("unlock a missing key", r.header(), Some(1));
}

#[tokio::test]
async fn lock_without_a_lease_gets_a_session_lease() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let held = ok("lock", c.lock("s", None).await);
    let got = ok("get", c.get(held.key(), None).await);
    let kv = &got.kvs()[0];
    assert_ne!(kv.lease(), 0, "the key is attached to a lease");
    assert_eq!(held.key(), format!("s/{:x}", kv.lease()).as_bytes());
    let ttl = ok(
        "ttl",
        c.lease_time_to_live(kv.lease(), Some(LeaseTimeToLiveOptions::new()))
            .await,
    );
    // etcd's session default.
    assert_eq!(ttl.granted_ttl(), 60);
}

#[tokio::test]
async fn revoking_the_holders_lease_passes_the_lock() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);
    ok(
        "lock 1",
        c.lock("r", Some(LockOptions::new().with_lease(l1))).await,
    );
    let second = lock_in_background(&c, "r", l2);
    await_keys(&c, "r/", 2).await;
    assert!(!second.is_finished());

    ok("revoke the holder's lease", c.lease_revoke(l1).await);
    let second = ok("lock 2", finished("lock 2", second).await);
    assert_eq!(second.key(), format!("r/{l2:x}").as_bytes());
    assert_eq!(keys(&mut c, "r/").await, [format!("r/{l2:x}")]);
}

#[tokio::test]
async fn abandoned_waiter_leaves_the_queue() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);
    let holder = ok(
        "lock 1",
        c.lock("ab", Some(LockOptions::new().with_lease(l1))).await,
    );
    let second = lock_in_background(&c, "ab", l2);
    await_keys(&c, "ab/", 2).await;
    // The client gives up: its call is cancelled, and the server removes its key (etcd's Mutex
    // unlocks when its context ends), so it can never come to hold the lock unawares.
    second.abort();
    let _ = second.await;
    await_keys(&c, "ab/", 1).await;
    assert_eq!(keys(&mut c, "ab/").await, [format!("ab/{l1:x}")]);
    ok("unlock 1", c.unlock(holder.key()).await);
}

/// Ours: etcd 3.4 keeps a waiter whose lease is gone waiting, then answers a key that no longer
/// exists; etcd 3.5 answers `mutex: session is expired` only once the keys ahead are gone (and a
/// campaign still succeeds then). Here the waiter fails as soon as its key is deleted.
#[tokio::test]
async fn waiter_whose_lease_goes_fails() {
    if common::reference_etcd().is_some() {
        return;
    }
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);
    ok(
        "lock 1",
        c.lock("w", Some(LockOptions::new().with_lease(l1))).await,
    );
    let second = lock_in_background(&c, "w", l2);
    await_keys(&c, "w/", 2).await;
    ok("revoke the waiter's lease", c.lease_revoke(l2).await);
    assert_status(
        "lock 2",
        finished("lock 2", second).await,
        Code::Unknown,
        "mutex: session is expired",
    );
    assert_eq!(keys(&mut c, "w/").await, [format!("w/{l1:x}")]);

    // A candidate likewise: its campaign fails as not leader.
    ok("campaign 1", c.campaign("we", "a", l1).await);
    let l3 = lease(&mut c).await;
    let second = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("we", "b", l3).await })
    };
    await_keys(&c, "we/", 2).await;
    ok("revoke the candidate's lease", c.lease_revoke(l3).await);
    assert_status(
        "campaign 2",
        finished("campaign 2", second).await,
        Code::Unknown,
        NOT_LEADER,
    );
}

#[tokio::test]
async fn election_campaign_proclaim_resign() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);

    assert_status(
        "no candidate yet",
        c.leader("el").await,
        Code::Unknown,
        NO_LEADER,
    );

    let won = ok("campaign 1", c.campaign("el", "v1", l1).await);
    let leader1 = won.leader().expect("leader key").clone();
    assert_eq!(leader1.name(), b"el");
    assert_eq!(leader1.key(), format!("el/{l1:x}").as_bytes());
    assert_eq!(leader1.rev(), 2, "the key's create revision");
    assert_eq!(leader1.lease(), l1);
    assert_header("campaign 1", won.header(), Some(2));

    let now = ok("leader", c.leader("el").await);
    let kv = now.kv().expect("leader kv");
    assert_eq!((kv.key(), kv.value()), (leader1.key(), &b"v1"[..]));
    assert_eq!(kv.lease(), l1);
    assert_header("leader", now.header(), Some(2));

    let r = ok(
        "proclaim",
        c.proclaim(
            "v2",
            Some(ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await,
    );
    assert_header("proclaim", r.header(), Some(3));
    let now = ok("leader after proclaim", c.leader("el").await);
    assert_eq!(now.kv().expect("kv").value(), b"v2");

    // Campaigning again with the same lease keeps the place and takes the new value; the
    // answer's header is that of the campaign's first step, before the value changed.
    let again = ok("campaign 1 again", c.campaign("el", "v3", l1).await);
    assert_eq!(again.leader().expect("leader").rev(), leader1.rev());
    assert_header("campaign 1 again", again.header(), Some(3));
    let now = ok("leader after campaign again", c.leader("el").await);
    assert_eq!(now.kv().expect("kv").value(), b"v3");

    // A second candidate waits behind the leader.
    let second = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("el", "w1", l2).await })
    };
    await_keys(&c, "el/", 2).await;
    assert!(!second.is_finished(), "the second candidate must wait");

    let r = ok(
        "resign 1",
        c.resign(Some(ResignOptions::new().with_leader(leader1.clone())))
            .await,
    );
    let resign_rev = r.header().expect("header").revision();
    let won2 = ok("campaign 2", finished("campaign 2", second).await);
    let leader2 = won2.leader().expect("leader key").clone();
    assert_eq!(leader2.key(), format!("el/{l2:x}").as_bytes());
    assert!(leader2.rev() < resign_rev, "it queued before the resign");
    let now = ok("leader 2", c.leader("el").await);
    assert_eq!(now.kv().expect("kv").value(), b"w1");

    // The old leader key no longer leads.
    assert_status(
        "proclaim by the resigned leader",
        c.proclaim(
            "x",
            Some(ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await,
        Code::Unknown,
        NOT_LEADER,
    );
    // A leader key with another create revision is not the leader either.
    let forged = LeaderKey::new()
        .with_name("el")
        .with_key(leader2.key())
        .with_rev(leader2.rev() + 100)
        .with_lease(l2);
    assert_status(
        "proclaim with a wrong revision",
        c.proclaim(
            "x",
            Some(ProclaimOptions::new().with_leader(forged.clone())),
        )
        .await,
        Code::Unknown,
        NOT_LEADER,
    );
    // Resigning with a key that does not lead changes nothing and is no error.
    ok(
        "resign with a wrong revision",
        c.resign(Some(ResignOptions::new().with_leader(forged)))
            .await,
    );
    ok(
        "resign 1 twice",
        c.resign(Some(ResignOptions::new().with_leader(leader1)))
            .await,
    );
    assert_eq!(keys(&mut c, "el/").await, [format!("el/{l2:x}")]);

    ok(
        "resign 2",
        c.resign(Some(ResignOptions::new().with_leader(leader2)))
            .await,
    );
    assert_status(
        "all resigned",
        c.leader("el").await,
        Code::Unknown,
        NO_LEADER,
    );
}

#[tokio::test]
async fn election_errors() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    assert_status(
        "campaign with a lease that does not exist",
        c.campaign("e", "v", 0x777).await,
        Code::Unknown,
        LEASE_NOT_FOUND,
    );
    assert_status(
        "proclaim without a leader",
        c.proclaim("v", None).await,
        Code::Unknown,
        MISSING_LEADER,
    );
    assert_status(
        "resign without a leader",
        c.resign(None).await,
        Code::Unknown,
        MISSING_LEADER,
    );
}

/// The next Observe answer as (key, value), bounded.
async fn next_leader(stream: &mut etcd_client::ObserveStream) -> (String, String) {
    let resp = bounded("observe", stream.message())
        .await
        .expect("observe stream")
        .expect("observe answer");
    let kv = resp.kv().expect("observed kv");
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
    )
}

#[tokio::test]
async fn observe_sees_each_leader_and_value() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let (l1, l2) = (lease(&mut c).await, lease(&mut c).await);
    let (k1, k2) = (format!("ob/{l1:x}"), format!("ob/{l2:x}"));

    // Observing an election without a leader waits for the first candidate. (etcd sends the
    // stream's response headers only with its first message, so the call itself returns only
    // then: it runs on its own task.)
    let observing = {
        let mut c = c.clone();
        tokio::spawn(async move { c.observe("ob").await })
    };
    let won = ok("campaign 1", c.campaign("ob", "a", l1).await);
    let mut observed = ok("observe", finished("observe", observing).await);
    let leader1 = won.leader().expect("leader").clone();
    assert_eq!(next_leader(&mut observed).await, (k1.clone(), "a".into()));

    ok(
        "proclaim b",
        c.proclaim(
            "b",
            Some(ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await,
    );
    assert_eq!(next_leader(&mut observed).await, (k1.clone(), "b".into()));

    // A waiting candidate is not the leader: nothing is observed until the leader goes.
    let second = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("ob", "c", l2).await })
    };
    await_keys(&c, "ob/", 2).await;
    // A second observer, started now, sees the current leader first.
    let mut late = ok("observe late", c.observe("ob").await);
    assert_eq!(next_leader(&mut late).await, (k1.clone(), "b".into()));

    ok(
        "resign 1",
        c.resign(Some(ResignOptions::new().with_leader(leader1)))
            .await,
    );
    ok("campaign 2", finished("campaign 2", second).await);
    assert_eq!(next_leader(&mut observed).await, (k2.clone(), "c".into()));
    assert_eq!(next_leader(&mut late).await, (k2.clone(), "c".into()));

    // A leader whose lease is revoked is replaced like one that resigned.
    let l3 = lease(&mut c).await;
    let third = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("ob", "d", l3).await })
    };
    await_keys(&c, "ob/", 2).await;
    ok("revoke leader 2's lease", c.lease_revoke(l2).await);
    ok("campaign 3", finished("campaign 3", third).await);
    assert_eq!(
        next_leader(&mut observed).await,
        (format!("ob/{l3:x}"), "d".into())
    );
}

#[tokio::test]
async fn etcdctl_lock_holder_blocks_a_grpc_locker() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    // etcdctl's lock is the same queue (its own client-side Mutex): one name, one queue.
    let mut holder = Running::spawn(&server, &["lock", "shared"]);
    let held = holder.lines(1).await;
    assert!(held[0].starts_with("shared/"), "{held:?}");

    let l = lease(&mut c).await;
    let ours = lock_in_background(&c, "shared", l);
    await_keys(&c, "shared/", 2).await;
    assert!(!ours.is_finished(), "etcdctl holds the lock");
    // SIGTERM: etcdctl revokes its session's lease, which releases the lock.
    holder.terminate().await;
    let ours = ok("lock", finished("lock", ours).await);
    assert_eq!(ours.key(), format!("shared/{l:x}").as_bytes());

    // And the other way round: etcdctl waits for the gRPC holder.
    let mut waiter = Running::spawn(&server, &["lock", "shared", "echo", "etcdctl-holds-it"]);
    await_keys(&c, "shared/", 2).await;
    assert!(!waiter.exited(), "etcdctl must wait for the gRPC holder");
    ok("unlock", c.unlock(ours.key()).await);
    assert_eq!(waiter.finish().await, ["etcdctl-holds-it"]);
}

#[tokio::test]
async fn etcdctl_elect_and_the_election_service_agree() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    // An etcdctl candidate leads; the Leader call sees its proposal.
    let mut candidate = Running::spawn(&server, &["elect", "poll", "from-etcdctl"]);
    let won = candidate.lines(2).await;
    let now = ok("leader", c.leader("poll").await);
    let kv = now.kv().expect("kv");
    assert_eq!(kv.key(), won[0].as_bytes());
    assert_eq!(kv.value(), b"from-etcdctl");

    // etcdctl's observer sees a gRPC candidate take over once etcdctl's leader leaves.
    let mut listener = Running::spawn(&server, &["elect", "-l", "poll"]);
    assert_eq!(listener.lines(2).await, won);
    let l = lease(&mut c).await;
    let ours = {
        let mut c = c.clone();
        tokio::spawn(async move { c.campaign("poll", "from-grpc", l).await })
    };
    await_keys(&c, "poll/", 2).await;
    candidate.terminate().await;
    let ours = ok("campaign", finished("campaign", ours).await);
    let key = format!("poll/{l:x}");
    assert_eq!(ours.leader().expect("leader").key(), key.as_bytes());
    assert_eq!(listener.lines(2).await, [key, "from-grpc".to_string()]);
    listener.terminate().await;
}

/// POSTs a JSON body to the gateway; answers the HTTP status and the parsed body.
async fn gateway(
    server: &common::Server,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = bounded(
        path,
        reqwest::Client::new()
            .post(format!("{}{path}", server.client_url()))
            .json(&body)
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = bounded(path, resp.text()).await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text:?}"));
    (status, json)
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn gateway_routes() {
    let (server, _dir) = start(&[]).await;
    let mut c = connect(&server).await;
    let l = lease(&mut c).await;

    let (status, body) = gateway(
        &server,
        "/v3/lock/lock",
        serde_json::json!({"name": b64("gw"), "lease": l.to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], b64(&format!("gw/{l:x}")));
    assert_eq!(body["header"]["revision"], "2");

    // etcd's gateway answers the Unknown code as 500, with the text.
    let (status, body) = gateway(
        &server,
        "/v3/lock/lock",
        serde_json::json!({"name": b64("gw"), "lease": "4660"}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        serde_json::json!({"error": LEASE_NOT_FOUND, "message": LEASE_NOT_FOUND, "code": 2})
    );

    let (status, _) = gateway(
        &server,
        "/v3/lock/unlock",
        serde_json::json!({"key": b64(&format!("gw/{l:x}"))}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(keys(&mut c, "gw/").await.is_empty());

    let (status, body) = gateway(
        &server,
        "/v3/election/campaign",
        serde_json::json!({"name": b64("ge"), "lease": l.to_string(), "value": b64("v")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let leader = body["leader"].clone();
    assert_eq!(leader["key"], b64(&format!("ge/{l:x}")));
    assert_eq!(leader["lease"], l.to_string());

    let (status, body) = gateway(
        &server,
        "/v3/election/proclaim",
        serde_json::json!({"leader": leader.clone(), "value": b64("w")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway(
        &server,
        "/v3/election/leader",
        serde_json::json!({"name": b64("ge")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kv"]["value"], b64("w"));

    // Observe streams `{"result": ...}` lines; the first is the current leader.
    let resp = bounded(
        "observe",
        reqwest::Client::new()
            .post(format!("{}/v3/election/observe", server.client_url()))
            .json(&serde_json::json!({"name": b64("ge")}))
            .send(),
    )
    .await
    .expect("observe");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        use futures::StreamExt;
        let chunk = bounded("observe line", stream.next())
            .await
            .expect("observe stream ended")
            .expect("observe chunk");
        line.extend_from_slice(&chunk);
    }
    let first: serde_json::Value =
        serde_json::from_slice(&line[..line.iter().position(|&b| b == b'\n').unwrap_or(0)])
            .expect("observe line is JSON");
    assert_eq!(first["result"]["kv"]["value"], b64("w"));
    drop(stream);

    let (status, _) = gateway(
        &server,
        "/v3/election/resign",
        serde_json::json!({"leader": leader}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = gateway(
        &server,
        "/v3/election/leader",
        serde_json::json!({"name": b64("ge")}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["error"], NO_LEADER);
}
