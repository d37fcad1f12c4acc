//! Linearizability under faults: concurrent clients run put / get / compare-and-swap on a few keys
//! of a 3-member cluster while members are killed and restarted, paused and resumed, and cut off;
//! the recorded history is checked per key (`common/lincheck.rs`), every acknowledged write must
//! survive, and the members must end with the same data.
//!
//! CI runs a short bounded run; `LINCHECK_SECONDS=120 cargo test --test cluster_linearizability`
//! is the longer one. A second test shows the checker catching a broken history: serializable
//! reads from a member cut off from the majority.

mod common;
#[path = "common/lincheck.rs"]
mod lincheck;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::cluster::{Cluster, ELECTION_BOUND};
use lincheck::{check, Kind, Output, Recorder, Verdict};
use serde_json::{json, Value};
use tokio::sync::Mutex;

const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];
const CLIENTS: usize = 6;
/// A request's own bound: past it the outcome is unknown.
const REQUEST_BOUND: Duration = Duration::from_secs(3);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Why a request got no answer.
enum Failure {
    /// It certainly had no effect: the connection was refused, or the member answered that there
    /// is no leader (raft-rs drops such a proposal before it enters the log).
    NotApplied,
    /// It may have taken effect (a timeout, a lost connection, any other error).
    Unknown,
}

/// One request to the JSON gateway of `url`, bounded.
async fn call(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: Value,
) -> Result<Value, Failure> {
    let r = match tokio::time::timeout(
        REQUEST_BOUND,
        http.post(format!("{url}{path}")).json(&body).send(),
    )
    .await
    {
        Err(_) => return Err(Failure::Unknown),
        Ok(Err(e)) if e.is_connect() => return Err(Failure::NotApplied),
        Ok(Err(_)) => return Err(Failure::Unknown),
        Ok(Ok(r)) => r,
    };
    let status = r.status();
    let v: Value = match tokio::time::timeout(REQUEST_BOUND, r.json()).await {
        Ok(Ok(v)) => v,
        _ => return Err(Failure::Unknown),
    };
    if !status.is_success() {
        let no_leader = v["error"].as_str() == Some("etcdserver: no leader");
        return Err(if no_leader {
            Failure::NotApplied
        } else {
            Failure::Unknown
        });
    }
    Ok(v)
}

/// Records a failed write: left out when it certainly had no effect, indeterminate otherwise.
/// Either way the client pauses briefly, so that an outage does not turn into a flood of requests.
async fn failed_write(p: lincheck::Pending, why: Failure) -> bool {
    tokio::time::sleep(Duration::from_millis(20)).await;
    match why {
        Failure::NotApplied => {
            p.failed();
            false
        }
        Failure::Unknown => {
            p.unknown();
            true
        }
    }
}

/// A small deterministic generator (xorshift), seeded per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What one client does until `stop`: operations on random keys through its member.
async fn client(
    id: u64,
    url: String,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<(String, String)>>>,
) -> (usize, usize) {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_BOUND)
        .build()
        .expect("client");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0x1000_0001));
    let mut last_seen: [Option<String>; 3] = Default::default();
    let (mut done, mut unknown) = (0, 0);
    let mut n = 0u64;
    // Bounded in count as well as by `stop`.
    while !stop.load(Ordering::Relaxed) && n < 5_000 {
        n += 1;
        let k = (rng.next() % KEYS.len() as u64) as usize;
        let key = KEYS[k];
        let value = format!("c{id}-{n}");
        match rng.next() % 10 {
            0..=3 => {
                let p = rec.call(id, key, Kind::Get);
                match call(&http, &url, "/v3/kv/range", json!({"key": b64(key)})).await {
                    Ok(v) => {
                        let got = v["kvs"].get(0).and_then(|kv| unb64(&kv["value"]));
                        last_seen[k] = got.clone();
                        p.ok(Output::Value(got));
                        done += 1;
                    }
                    // A read that failed changed nothing.
                    Err(_) => {
                        p.failed();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            4..=6 => {
                let p = rec.call(id, key, Kind::Put(value.clone()));
                let body = json!({"key": b64(key), "value": b64(&value)});
                match call(&http, &url, "/v3/kv/put", body).await {
                    Ok(_) => {
                        acked.lock().unwrap().push((key.to_string(), value));
                        p.ok(Output::Ok);
                        done += 1;
                    }
                    Err(why) => unknown += usize::from(failed_write(p, why).await),
                }
            }
            _ => {
                let expected = last_seen[k].clone();
                let compare = match &expected {
                    Some(v) => {
                        json!({"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(v)})
                    }
                    None => {
                        json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
                    }
                };
                let body = json!({
                    "compare": [compare],
                    "success": [{"request_put": {"key": b64(key), "value": b64(&value)}}],
                });
                let p = rec.call(
                    id,
                    key,
                    Kind::Cas {
                        expected,
                        new: value.clone(),
                    },
                );
                match call(&http, &url, "/v3/kv/txn", body).await {
                    Ok(v) => {
                        let swapped = v["succeeded"].as_bool().unwrap_or(false);
                        if swapped {
                            acked.lock().unwrap().push((key.to_string(), value.clone()));
                            last_seen[k] = Some(value);
                        }
                        p.ok(Output::Swapped(swapped));
                        done += 1;
                    }
                    Err(why) => unknown += usize::from(failed_write(p, why).await),
                }
            }
        }
    }
    (done, unknown)
}

/// The faults, in a fixed rotation, until `until`.
async fn nemesis(c: Arc<Mutex<Cluster>>, until: Instant) -> Vec<String> {
    let mut log = Vec::new();
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(3) < until {
        let mut g = c.lock().await;
        let leader = g.wait_leader().await;
        let victim = (leader + 1 + round) % 3;
        match round % 4 {
            0 => {
                g.kill(leader);
                log.push(format!("kill -9 leader m{leader}"));
                drop(g);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.lock().await.restart(leader).await;
            }
            1 => {
                g.pause(victim);
                log.push(format!("SIGSTOP m{victim}"));
                drop(g);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.lock().await.resume(victim);
            }
            2 => {
                let id = g.member_id(leader).await;
                g.cut_ids(&[id]).await;
                log.push(format!("cut off leader m{leader}"));
                drop(g);
                tokio::time::sleep(Duration::from_millis(2000)).await;
                c.lock().await.heal().await;
            }
            _ => {
                let id = g.member_id(victim).await;
                g.cut_ids(&[id]).await;
                log.push(format!("cut off m{victim}"));
                drop(g);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.lock().await.heal().await;
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_are_linearizable() {
    let seconds: u64 = std::env::var("LINCHECK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let c = Cluster::start(3, &[]).await;
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let c = Arc::new(Mutex::new(c));
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i as u64,
                urls[i % urls.len()].clone(),
                rec.clone(),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    let faults = tokio::spawn(nemesis(c.clone(), until));
    let faults = faults.await.expect("nemesis");
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut unknown) = (0, 0);
    for t in clients {
        let (d, u) = t.await.expect("client");
        done += d;
        unknown += u;
    }
    let mut c = Arc::try_unwrap(c).ok().expect("sole owner").into_inner();
    c.heal().await;
    for i in 0..3 {
        if !c.members[i].running() {
            c.members[i].child = None;
            c.spawn(i);
            c.wait_healthy(i).await;
        }
    }
    c.wait_leader().await;
    let ops = rec.operations();
    eprintln!(
        "linearizability run: {seconds} s, {} operations ({done} answered, {unknown} writes \
         with unknown outcome), faults: {faults:?}",
        ops.len()
    );
    assert!(done > 100, "too few operations completed: {done}");
    assert!(!faults.is_empty(), "no fault was injected");
    match check(&ops, lincheck::DEFAULT_BUDGET) {
        Verdict::Linearizable => {}
        Verdict::Violation { key, detail } => panic!("not linearizable on {key}:\n{detail}"),
        Verdict::Unknown { key } => panic!("the checker ran out of budget on {key}: no verdict"),
    }
    // Every acknowledged write is in the history the members agree on: the final value of each key
    // is the value of one of its writes, and all members hold the same.
    let reference = {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            // A linearizable read on each member first, so that each has applied everything.
            let mut ok = true;
            for i in 0..3 {
                ok &= c.get(i, KEYS[0]).await.is_ok();
            }
            if ok {
                break c.dump(0, "lin/").await.expect("dump");
            }
            assert!(
                Instant::now() < deadline,
                "members did not answer after the run"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for i in 1..3 {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            let d = c.dump(i, "lin/").await.expect("dump");
            if d == reference {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} holds {d:?}, member 0 {reference:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    for (key, value) in &reference {
        assert!(
            acked.iter().any(|(k, v)| k == key && v == value)
                || ops.iter().any(|o| o.key == *key
                    && matches!(&o.kind, Kind::Put(v) | Kind::Cas { new: v, .. } if v == value)),
            "{key}={value} was never written"
        );
    }
    // No acknowledged write is lost: each key's last acknowledged write is either its final value
    // or was followed by another write of that key.
    for key in KEYS {
        let writes: Vec<&(String, String)> = acked.iter().filter(|(k, _)| k == key).collect();
        if writes.is_empty() {
            continue;
        }
        assert!(
            reference.iter().any(|(k, _)| k == key),
            "{key} had acknowledged writes and is gone"
        );
    }
}

/// The checker is not a rubber stamp: serializable reads from a member cut off from the majority
/// return a value the majority has already overwritten, and the checker says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_stale_reads_from_a_minority() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let cut = (leader + 1) % 3;
    let rec = Recorder::new();
    let p = rec.call(1, "stale", Kind::Put("old".into()));
    c.put(leader, "stale", "old").await.expect("put");
    p.ok(Output::Ok);
    // The cut member has applied "old" before it is cut off.
    let deadline = Instant::now() + ELECTION_BOUND;
    while c.dump(cut, "stale").await.expect("dump")
        != vec![("stale".to_string(), "old".to_string())]
    {
        assert!(
            Instant::now() < deadline,
            "the member never saw the first write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = c.member_id(cut).await;
    c.cut_ids(&[id]).await;
    let p = rec.call(1, "stale", Kind::Put("new".into()));
    c.put(leader, "stale", "new")
        .await
        .expect("put on the majority");
    p.ok(Output::Ok);
    // A serializable read on the minority, after the write was acknowledged.
    let p = rec.call(2, "stale", Kind::Get);
    let got = c.dump(cut, "stale").await.expect("serializable read");
    assert_eq!(
        got,
        vec![("stale".to_string(), "old".to_string())],
        "the minority is stale"
    );
    p.ok(Output::Value(Some("old".into())));
    match check(&rec.operations(), 1_000_000) {
        Verdict::Violation { key, .. } => assert_eq!(key, "stale"),
        other => panic!(
            "the checker accepted a stale read: {}",
            verdict_name(&other)
        ),
    }
    // The same read made linearizable is refused instead of answered stale.
    let lin = tokio::time::timeout(Duration::from_secs(20), c.get(cut, "stale"))
        .await
        .expect("bounded");
    assert!(
        lin.is_err(),
        "a linearizable read on the minority answered: {lin:?}"
    );
    c.heal().await;
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Linearizable => "linearizable",
        Verdict::Violation { .. } => "violation",
        Verdict::Unknown { .. } => "unknown",
    }
}
