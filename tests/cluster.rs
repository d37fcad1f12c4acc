//! Several members, one cluster: bootstrap, replication, failures, membership changes, catch-up by
//! snapshot, restarts. Real processes on loopback (`common/cluster.rs`); every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ELECTION_BOUND};
use serde_json::json;

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Retries `f` until it returns `Some`, for at most `bound`.
async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member in `among` holds exactly `want` under `prefix` (read serializably, so
/// each member's own copy).
async fn converge(c: &Cluster, among: &[usize], prefix: &str, want: &[(String, String)]) {
    for &i in among {
        let got = eventually(ELECTION_BOUND, &format!("member {i} converges"), || async {
            let d = c.dump(i, prefix).await.ok()?;
            (d == want).then_some(d)
        })
        .await;
        assert_eq!(got.len(), want.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_are_one_cluster() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    // Written on each member, read linearizably on every other.
    for i in 0..3 {
        c.put(i, &format!("k{i}"), &format!("v{i}"))
            .await
            .expect("put");
        for j in 0..3 {
            assert_eq!(
                c.get(j, &format!("k{i}")).await.expect("get"),
                Some(format!("v{i}")),
                "written on {i}, read on {j}"
            );
        }
    }
    // One cluster id, one leader, every member listed with its name and client URL once published.
    let mut cluster_ids = Vec::new();
    for i in 0..3 {
        let v = c
            .gateway(i, "/v3/cluster/member/list", json!({}))
            .await
            .expect("member list");
        cluster_ids.push(v["header"]["cluster_id"].clone());
    }
    assert!(
        cluster_ids.windows(2).all(|w| w[0] == w[1]),
        "{cluster_ids:?}"
    );
    let members = eventually(ELECTION_BOUND, "every member published", || async {
        let v = c
            .gateway(leader, "/v3/cluster/member/list", json!({}))
            .await
            .ok()?;
        let ms = v["members"].as_array()?.clone();
        let all = ms.len() == 3
            && ms
                .iter()
                .all(|m| m["clientURLs"].as_array().is_some_and(|u| u.len() == 1));
        all.then_some(ms)
    })
    .await;
    // etcd's cluster metrics, on every member.
    for (i, m) in c.members.iter().enumerate() {
        let text = reqwest::get(format!("{}/metrics", m.rest_url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        assert!(text.contains("etcd_server_has_leader 1"), "member {i}");
        let changes = metric(&text, "etcd_server_leader_changes_seen_total");
        assert!(changes >= 1.0, "member {i}: leader changes {changes}");
        let sent: f64 = text
            .lines()
            .filter(|l| l.starts_with("etcd_network_peer_sent_bytes_total{To="))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(sent > 0.0, "member {i} sent nothing to its peers");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("etcd_network_active_peers{"))
                .count(),
            2,
            "member {i}: one line per peer"
        );
    }
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["m0", "m1", "m2"]);
    for (i, m) in c.members.iter().enumerate() {
        assert!(
            members
                .iter()
                .any(|x| x["clientURLs"][0] == m.client_url() && x["peerURLs"][0] == m.peer_url()),
            "member {i} listed with its URLs: {members:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_bootstrap_and_replicate() {
    let mut c = Cluster::start(5, &[]).await;
    c.wait_leader().await;
    for i in 0..5 {
        c.put(i, "five", &format!("from {i}")).await.expect("put");
        assert_eq!(
            c.get((i + 1) % 5, "five").await.expect("get"),
            Some(format!("from {i}"))
        );
    }
}

/// Writers on every member record each acknowledged write; the leader is killed with SIGKILL in
/// the middle. Every acknowledged write must be on every member afterwards, and the members must
/// hold the same data. Each member runs its Raft loop on its one server thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let c = Cluster::start(3, &[]).await;
    for i in 0..3 {
        assert_eq!(raft_threads(&c, i), 0, "member {i} has a Raft thread");
    }
    kill_the_leader_during_writes(c).await;
}

/// The same with two workers per member, where each member's Raft loop has a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_with_raft_threads_loses_no_acknowledged_write() {
    let c = Cluster::start_with_workers(3, &[], 2).await;
    for i in 0..3 {
        assert_eq!(raft_threads(&c, i), 1, "member {i}'s Raft threads");
    }
    kill_the_leader_during_writes(c).await;
}

/// A panic in the Raft loop of a member that runs it on its server thread (the first leader,
/// restarted with the panic switch) stops that member: it exits non-zero, and its log names the
/// loop. The others have or elect a leader and serve on; restarted, the member has every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_raft_loop_on_the_server_thread_stops_that_member() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    c.put(leader, "p/before", "1").await.expect("put");
    let switch = c.dir.path().join("panic-switch");
    c.kill(leader);
    c.env = vec![(
        "MINI_ETCD_TEST_PANIC_FILE".into(),
        switch.display().to_string(),
    )];
    c.spawn(leader);
    c.wait_healthy(leader).await;
    c.env.clear();
    assert_eq!(
        raft_threads(&c, leader),
        0,
        "the loop has a thread of its own"
    );
    std::fs::write(&switch, "raft").expect("set the switch");
    let child = c.members[leader].child.as_mut().expect("running");
    let status = common::wait_exit(child, Duration::from_secs(20))
        .await
        .expect("the member did not exit after its Raft loop panicked");
    assert!(!status.success(), "exited with {status}");
    let log = c.members[leader].log_text();
    assert!(
        log.contains("\"thread\":\"raft\"") && log.contains("panicked"),
        "the log does not say the Raft loop panicked:\n{log}"
    );
    c.members[leader].child = None;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let next = c.wait_leader_among(&others).await;
    c.put(next, "p/after", "2")
        .await
        .expect("put after the panic");
    std::fs::remove_file(&switch).expect("clear the switch");
    c.spawn(leader);
    c.wait_healthy(leader).await;
    converge(
        &c,
        &[leader],
        "p/",
        &[
            ("p/after".into(), "2".into()),
            ("p/before".into(), "1".into()),
        ],
    )
    .await;
}

/// How many threads named `raft` member `i`'s process has (from /proc).
fn raft_threads(c: &Cluster, i: usize) -> usize {
    let pid = c.members[i].child.as_ref().expect("running").id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the member's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "raft")
        .count()
}

async fn kill_the_leader_during_writes(mut c: Cluster) {
    let leader = c.wait_leader().await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let c = Arc::new(tokio::sync::Mutex::new(c));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3usize {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 400 attempts per writer.
            for n in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{w}-{n:04}");
                let target = (w + n) % 3;
                let res = {
                    let g = c.lock().await;
                    if g.members[target].child.is_none() {
                        continue;
                    }
                    let fut = g.put(target, &key, "v");
                    tokio::time::timeout(Duration::from_secs(10), fut).await
                };
                if let Ok(Ok(_)) = res {
                    acked.lock().unwrap().insert(key, "v".into());
                }
            }
        }));
    }
    // Let some writes land, then kill the leader.
    eventually(
        Duration::from_secs(30),
        "writes before the kill",
        || async { (acked.lock().unwrap().len() >= 60).then_some(()) },
    )
    .await;
    c.lock().await.kill(leader);
    let before_kill = acked.lock().unwrap().len();
    eventually(Duration::from_secs(30), "writes after the kill", || async {
        (acked.lock().unwrap().len() >= before_kill + 60).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let mut c = Arc::try_unwrap(c).ok().expect("sole owner").into_inner();
    c.restart(leader).await;
    c.wait_leader().await;
    let want: Vec<(String, String)> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Everything acknowledged is there; unacknowledged writes may be there too (they may have
    // committed before their answer was lost), so compare each member against the first.
    for i in 0..3 {
        let got = eventually(ELECTION_BOUND, "acknowledged writes present", || async {
            let d: BTreeMap<String, String> = c.dump(i, "w").await.ok()?.into_iter().collect();
            want.iter().all(|(k, _)| d.contains_key(k)).then_some(d)
        })
        .await;
        assert!(got.len() >= want.len());
    }
    let reference = c.dump(0, "w").await.expect("dump");
    converge(&c, &[1, 2], "w", &reference).await;
}

/// A follower cut off from the others accepts no write and serves no linearizable read; the other
/// two go on; after healing it holds what they wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_refuses_and_catches_up() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.put(leader, "p", "before").await.expect("put");
    assert_eq!(
        c.get(follower, "p").await.expect("get"),
        Some("before".into())
    );
    let id = c.member_id(follower).await;
    c.cut_ids(&[id]).await;
    c.put(leader, "p", "during")
        .await
        .expect("the majority writes");
    assert_eq!(c.get(other, "p").await.expect("get"), Some("during".into()));
    // The cut member never answers with the old value to a linearizable read, and takes no write.
    let read = tokio::time::timeout(Duration::from_secs(20), c.get(follower, "p"))
        .await
        .expect("bounded");
    assert!(
        read.is_err(),
        "a cut-off member served a linearizable read: {read:?}"
    );
    let write = tokio::time::timeout(Duration::from_secs(20), c.put(follower, "p", "minority"))
        .await
        .expect("bounded");
    assert!(
        write.is_err(),
        "a cut-off member acknowledged a write: {write:?}"
    );
    // Its own copy is stale, as a serializable read shows.
    let stale = c.dump(follower, "p").await.expect("serializable dump");
    assert_eq!(stale, vec![("p".to_string(), "before".to_string())]);
    // And it says it is unhealthy: without a leader, as etcd 3.5 words it.
    let health_url = format!("{}/health", c.members[follower].rest_url());
    let body = eventually(
        ELECTION_BOUND,
        "the cut-off member turns unhealthy",
        || async {
            let r = reqwest::get(&health_url).await.ok()?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.ok()?;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(body["health"], json!("false"), "{body}");
    assert_eq!(body["reason"], json!("RAFT NO LEADER"), "{body}");
    c.heal().await;
    converge(&c, &[follower], "p", &[("p".into(), "during".into())]).await;
    assert_eq!(
        c.get(follower, "p").await.expect("get"),
        Some("during".into())
    );
}

/// A leader cut off from its followers loses leadership (check quorum); the others elect a new one
/// and go on; after healing the old leader follows and holds the new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_steps_down() {
    let mut c = Cluster::start(3, &[]).await;
    let old = c.wait_leader().await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let id = c.member_id(old).await;
    c.cut_ids(&[id]).await;
    let new = c.wait_leader_among(&rest).await;
    assert_ne!(new, old);
    c.put(new, "q", "new leader")
        .await
        .expect("put on the majority");
    eventually(ELECTION_BOUND, "the old leader steps down", || async {
        let (_, leader, _, _) = c.status(old).await.ok()?;
        (leader != id).then_some(())
    })
    .await;
    let write = tokio::time::timeout(Duration::from_secs(20), c.put(old, "q", "stale leader"))
        .await
        .expect("bounded");
    assert!(
        write.is_err(),
        "the cut-off old leader acknowledged: {write:?}"
    );
    c.heal().await;
    converge(&c, &[old], "q", &[("q".into(), "new leader".into())]).await;
    let l = c.wait_leader().await;
    assert_ne!(c.member_id(l).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_catches_up_when_resumed() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let f = (leader + 1) % 3;
    c.pause(f);
    for n in 0..20 {
        c.put(leader, &format!("s{n:02}"), "x")
            .await
            .expect("put while paused");
    }
    c.resume(f);
    let want: Vec<(String, String)> = (0..20).map(|n| (format!("s{n:02}"), "x".into())).collect();
    converge(&c, &[f], "s", &want).await;
}

/// A member that missed more than the leader keeps in its log gets a snapshot of the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_by_snapshot() {
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    )
    .await;
    let leader = c.wait_leader().await;
    let f = (leader + 1) % 3;
    c.put(leader, "lease-free", "1").await.expect("put");
    c.kill(f);
    for n in 0..150 {
        c.put(leader, &format!("far{n:03}"), &format!("v{n}"))
            .await
            .expect("put while a member is down");
    }
    c.restart(f).await;
    let want: Vec<(String, String)> = (0..150)
        .map(|n| (format!("far{n:03}"), format!("v{n}")))
        .collect();
    converge(&c, &[f], "far", &want).await;
    assert!(
        c.members[f]
            .log_text()
            .contains("installed a snapshot from the leader"),
        "the member caught up without a snapshot:\n{}",
        c.members[f].log_tail()
    );
    // And it goes on from there: a write after the snapshot reaches it, and it survives a restart.
    c.put(leader, "after-snapshot", "yes").await.expect("put");
    assert_eq!(
        c.get(f, "after-snapshot").await.expect("get"),
        Some("yes".into())
    );
    c.restart(f).await;
    converge(&c, &[f], "far", &want).await;
}

/// A learner is added, catches up, is promoted; then a voter is removed and stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_are_added_promoted_and_members_removed() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    for n in 0..10 {
        c.put(leader, &format!("l{n}"), "x").await.expect("put");
    }
    let new = c.add_member(leader, true).await;
    let want: Vec<(String, String)> = (0..10).map(|n| (format!("l{n}"), "x".into())).collect();
    converge(&c, &[new], "l", &want).await;
    let new_id = c.member_id(new).await;
    let list = c
        .gateway(leader, "/v3/cluster/member/list", json!({}))
        .await
        .expect("list");
    let entry = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["ID"] == json!(new_id.to_string()))
        .cloned()
        .expect("the learner is listed");
    assert_eq!(entry["isLearner"], json!(true), "{entry}");
    eventually(ELECTION_BOUND, "the learner is promoted", || async {
        c.gateway(
            leader,
            "/v3/cluster/member/promote",
            json!({"ID": new_id.to_string()}),
        )
        .await
        .ok()
    })
    .await;
    // Promoting it again is refused with etcd's text.
    let again = c
        .gateway(
            leader,
            "/v3/cluster/member/promote",
            json!({"ID": new_id.to_string()}),
        )
        .await
        .expect_err("a voter is not promoted");
    assert!(
        again.contains("can only promote a learner member"),
        "{again}"
    );
    // Remove a follower that is not the new member.
    let gone = (0..3).find(|&i| i != leader).expect("a follower");
    let gone_id = c.member_id(gone).await;
    c.gateway(
        leader,
        "/v3/cluster/member/remove",
        json!({"ID": gone_id.to_string()}),
    )
    .await
    .expect("remove");
    let deadline = Instant::now() + ELECTION_BOUND;
    while c.members[gone].running() {
        assert!(Instant::now() < deadline, "the removed member did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.members[gone]
            .log_text()
            .contains("the member has been permanently removed from the cluster"),
        "{}",
        c.members[gone].log_tail()
    );
    c.members[gone].child = None;
    let live: Vec<usize> = (0..c.members.len()).filter(|&i| i != gone).collect();
    let l = c.wait_leader_among(&live).await;
    c.put(l, "after-remove", "ok").await.expect("put");
    for &i in &live {
        assert_eq!(
            c.get(i, "after-remove").await.expect("get"),
            Some("ok".into())
        );
    }
    // The removed member is replaced by a new voter, which catches up and serves.
    let replacement = c.add_member(l, false).await;
    converge(&c, &[replacement], "l", &want).await;
    assert_eq!(
        c.get(replacement, "after-remove").await.expect("get"),
        Some("ok".into())
    );
    let list = c
        .gateway(l, "/v3/cluster/member/list", json!({}))
        .await
        .expect("list");
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{list}");
    assert!(
        members.iter().all(|m| m["isLearner"] != json!(true)),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_restart_keeps_everything() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    for n in 0..30 {
        c.put((leader + n) % 3, &format!("r{n:02}"), &format!("{n}"))
            .await
            .expect("put");
    }
    for i in 0..3 {
        c.stop(i).await;
    }
    for i in 0..3 {
        c.spawn(i);
    }
    for i in 0..3 {
        c.wait_healthy(i).await;
    }
    c.wait_leader().await;
    let want: Vec<(String, String)> = (0..30)
        .map(|n| (format!("r{n:02}"), format!("{n}")))
        .collect();
    converge(&c, &[0, 1, 2], "r", &want).await;
    for i in 0..3 {
        assert_eq!(c.get(i, "r29").await.expect("get"), Some("29".into()));
    }
}

/// Keep-alives sent to a follower reach the leader; a new leader gives a lease what was left of it
/// at the last checkpoint, not its full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_their_remaining_ttl_across_a_leader_change() {
    let mut c = Cluster::start(3, &["--experimental-lease-checkpoint-interval", "300ms"]).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let grant = c
        .gateway(leader, "/v3/lease/grant", json!({"TTL": "30"}))
        .await
        .expect("grant");
    let id = grant["ID"].as_str().expect("lease id").to_string();
    // A keep-alive through a follower is answered with the full TTL: the leader renewed it.
    let ka = c
        .gateway(follower, "/v3/lease/keepalive", json!({"ID": id}))
        .await
        .expect("keep-alive via a follower");
    assert_eq!(ka["result"]["TTL"], json!("30"), "{ka}");
    // Let it run down a few seconds, with checkpoints going through Raft meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.kill(leader);
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = c.wait_leader_among(&rest).await;
    let ttl = c
        .gateway(new, "/v3/lease/timetolive", json!({"ID": id}))
        .await
        .expect("time to live");
    let left: i64 = ttl["TTL"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no TTL in {ttl}"));
    assert!(
        (1..=27).contains(&left),
        "the new leader gave the lease {left} s of 30 after 4 s had run down"
    );
    // A follower answers with the leader's count, not its own.
    let other = rest
        .iter()
        .copied()
        .find(|&i| i != new)
        .expect("a follower");
    let ttl = c
        .gateway(other, "/v3/lease/timetolive", json!({"ID": id}))
        .await
        .expect("time to live on a follower");
    let via_follower: i64 = ttl["TTL"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no TTL in {ttl}"));
    assert!(
        (left - 2..=left).contains(&via_follower),
        "follower says {via_follower}, leader said {left}"
    );
}

/// MemberUpdate gives a member new peer URLs; restarted on them, with `--initial-cluster` written as
/// the cluster now is, it rejoins and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moves_to_new_peer_urls() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let moved = (leader + 1) % 3;
    let id = c.member_id(moved).await;
    c.stop(moved).await;
    let port = common::free_ports(1)[0];
    let url = format!("http://127.0.0.1:{port}");
    let resp = c
        .gateway(
            leader,
            "/v3/cluster/member/update",
            json!({"ID": id.to_string(), "peerURLs": [url]}),
        )
        .await
        .expect("member update");
    let listed = resp["members"]
        .as_array()
        .expect("members")
        .iter()
        .any(|m| m["ID"] == json!(id.to_string()) && m["peerURLs"] == json!([url]));
    assert!(listed, "{resp}");
    c.put(leader, "moved", "while away").await.expect("put");
    c.move_peer_port(moved, port);
    c.spawn(moved);
    c.wait_healthy(moved).await;
    converge(
        &c,
        &[moved],
        "moved",
        &[("moved".into(), "while away".into())],
    )
    .await;
    c.put(leader, "moved", "after").await.expect("put");
    assert_eq!(
        c.get(moved, "moved").await.expect("get"),
        Some("after".into())
    );
}
