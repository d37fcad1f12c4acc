//! etcd compatibility of clustering: etcd 3.4's `etcdctl` against a cluster of mini-etcd members.
//!
//! Every expected output below is what `ETCDCTL_API=3 etcdctl` 3.4.23 prints against etcd 3.4.23 (member
//! list columns, `Member %16x added to cluster %16x`, the `ETCD_*` lines of `member add`, `Leadership
//! transferred from X to Y`, the `endpoint status/health --cluster` behaviour, etcd's error texts).
//!
//! Members are real processes on loopback (`common/cluster.rs`). Every etcdctl run is bounded
//! ([`CTL_BOUND`]) and every wait for the cluster to settle is a bounded retry that reports the last
//! output it saw; nothing here waits by sleeping alone.

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ELECTION_BOUND};
use serde_json::Value;

/// Safety bound on one etcdctl invocation.
const CTL_BOUND: Duration = Duration::from_secs(30);

/// Safety bound on waiting for the cluster to show a state (published attributes, a new leader...).
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// etcdctl: `$ETCDCTL_BIN`, else etcd 3.4's client where the suite expects it.
fn etcdctl_path() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// What one etcdctl run produced.
#[derive(Debug)]
struct CtlOut {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CtlOut {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Requires exit code 0 and returns stdout.
    fn ok(self) -> String {
        assert!(
            self.success(),
            "{}: etcdctl failed: code {:?} stdout {:?} stderr {:?}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Requires a non-zero exit and returns stderr.
    fn err(self) -> String {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "{}: etcdctl should fail: code {:?} stdout {:?} stderr {:?}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        self.stderr
    }

    /// Stdout parsed as JSON, or why not.
    fn json(&self) -> Result<Value, String> {
        if !self.success() {
            return Err(format!(
                "{}: code {:?} stdout {:?} stderr {:?}",
                self.what, self.code, self.stdout, self.stderr
            ));
        }
        serde_json::from_str(&self.stdout)
            .map_err(|e| format!("{}: not JSON ({e}): {:?}", self.what, self.stdout))
    }
}

/// Runs `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args>` to completion, bounded by [`CTL_BOUND`]
/// (the child is killed when the bound passes).
async fn etcdctl(endpoints: &str, args: &[&str]) -> CtlOut {
    let what = format!("etcdctl --endpoints={endpoints} {}", args.join(" "));
    let child = tokio::process::Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=10s")
        .arg("--command-timeout=20s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e} (is etcdctl 3.4 installed?)"));
    match tokio::time::timeout(CTL_BOUND, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.unwrap_or_else(|e| panic!("wait for {what}: {e}"));
            CtlOut {
                what,
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => panic!("{what}: did not exit within {CTL_BOUND:?}"),
    }
}

/// Retries `f` until it returns `Ok`, for at most `bound`; panics with the last error otherwise.
async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + bound;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {bound:?}; last attempt: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JSON number that etcdctl prints as a u64.
fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer, got {v}"))
}

/// The member ids of members `0..n`, in order.
async fn ids(c: &Cluster, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(c.member_id(i).await);
    }
    out
}

/// `a,b,c` of the client endpoints of the members `among`.
fn endpoints_of(c: &Cluster, among: &[usize]) -> String {
    among
        .iter()
        .map(|&i| c.members[i].client_endpoint())
        .collect::<Vec<_>>()
        .join(",")
}

/// The data rows of an etcdctl table (`| a | b |`), cells trimmed; the first row is the header.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_start_matches('|')
                .trim_end_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// `member list -w json` until every one of `want` members has published its name and client URLs.
async fn published_member_list(endpoints: &str, want: usize) -> Value {
    eventually(SETTLE_BOUND, "every member listed as started", || async {
        let v = etcdctl(endpoints, &["member", "list", "-w", "json"])
            .await
            .json()?;
        let ms = v["members"]
            .as_array()
            .ok_or_else(|| format!("no members: {v}"))?;
        let started = ms.iter().all(|m| {
            m["name"].as_str().is_some_and(|n| !n.is_empty())
                && m["clientURLs"].as_array().is_some_and(|u| !u.is_empty())
        });
        if ms.len() == want && started {
            Ok(v)
        } else {
            Err(format!("want {want} started members: {v}"))
        }
    })
    .await
}

/// Parses `Member <hex> <verb> cluster <hex>` (etcdctl prints both ids with `%16x`, space-padded);
/// returns (member id, cluster id).
fn member_line(out: &str, verb: &str) -> (u64, u64) {
    let line = out.lines().next().unwrap_or("");
    let rest = line
        .strip_prefix("Member ")
        .unwrap_or_else(|| panic!("expected `Member %16x {verb} cluster %16x`, got {out:?}"));
    let (id, cluster) = rest
        .split_once(&format!(" {verb} cluster "))
        .unwrap_or_else(|| panic!("expected `Member %16x {verb} cluster %16x`, got {out:?}"));
    let hex = |s: &str| {
        u64::from_str_radix(s.trim(), 16).unwrap_or_else(|e| panic!("{s:?} in {out:?}: {e}"))
    };
    // `%16x` pads with spaces to 16 characters.
    assert!(
        id.len() >= 16 && cluster.len() >= 16,
        "ids are printed with %16x: {line:?}"
    );
    (hex(id), hex(cluster))
}

/// The cluster id as `member list -w json` reports it.
async fn cluster_id(endpoints: &str) -> u64 {
    let v = etcdctl(endpoints, &["member", "list", "-w", "json"])
        .await
        .json()
        .unwrap_or_else(|e| panic!("{e}"));
    u64_of(&v["header"]["cluster_id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_shows_every_member() {
    let c = Cluster::start(3, &[]).await;
    let ids = ids(&c, 3).await;
    let all = c.endpoints();

    // JSON: decimal ids, name, peer and client URLs; `isLearner` only when true.
    let v = published_member_list(&all, 3).await;
    let ms = v["members"].as_array().expect("members");
    for (i, m) in c.members.iter().enumerate() {
        let row = ms
            .iter()
            .find(|x| x["ID"].as_u64() == Some(ids[i]))
            .unwrap_or_else(|| panic!("member {i} (id {:x}) not listed: {v}", ids[i]));
        assert_eq!(row["name"], m.name.as_str(), "{v}");
        assert_eq!(row["peerURLs"], serde_json::json!([m.peer_url()]), "{v}");
        assert_eq!(
            row["clientURLs"],
            serde_json::json!([m.client_url()]),
            "{v}"
        );
        assert!(
            row.get("isLearner").is_none() || row["isLearner"] == false,
            "a voter is no learner: {v}"
        );
    }
    assert_ne!(u64_of(&v["header"]["cluster_id"]), 0, "{v}");
    assert!(
        ids.contains(&u64_of(&v["header"]["member_id"])),
        "header.member_id is the answering member: {v}"
    );

    // Table: `| ID | STATUS | NAME | PEER ADDRS | CLIENT ADDRS | IS LEARNER |`, ids in lowercase hex.
    let out = etcdctl(&all, &["member", "list", "-w", "table"]).await.ok();
    let rows = table_rows(&out);
    assert_eq!(
        rows.first().map(|r| r.join("|")),
        Some("ID|STATUS|NAME|PEER ADDRS|CLIENT ADDRS|IS LEARNER".to_string()),
        "{out}"
    );
    assert_eq!(rows.len(), 4, "a header and three members: {out}");
    for (i, m) in c.members.iter().enumerate() {
        let want = vec![
            format!("{:x}", ids[i]),
            "started".to_string(),
            m.name.clone(),
            m.peer_url(),
            m.client_url(),
            "false".to_string(),
        ];
        assert!(
            rows[1..].contains(&want),
            "member {i}: row {want:?} missing from\n{out}"
        );
    }

    // Simple form: `id, status, name, peer urls, client urls, is learner`.
    let out = etcdctl(&all, &["member", "list"]).await.ok();
    for (i, m) in c.members.iter().enumerate() {
        let want = format!(
            "{:x}, started, {}, {}, {}, false",
            ids[i],
            m.name,
            m.peer_url(),
            m.client_url()
        );
        assert!(out.lines().any(|l| l == want), "{want:?} missing:\n{out}");
    }
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_and_health_cluster() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let ids = ids(&c, 3).await;
    let one = c.members[0].client_endpoint();
    // `--cluster` takes its endpoints from the member list's client URLs, which members publish
    // right after they start.
    published_member_list(&one, 3).await;
    let urls: BTreeSet<String> = c.members.iter().map(|m| m.client_url()).collect();

    // health --cluster: a linearizable get on every member; the verdicts go to stderr.
    let res = etcdctl(&one, &["endpoint", "health", "--cluster"]).await;
    assert!(res.success(), "{res:?}");
    for url in &urls {
        assert!(
            res.stderr.contains(&format!(
                "{url} is healthy: successfully committed proposal"
            )),
            "{url} healthy: {res:?}"
        );
    }
    assert!(!res.stderr.contains("unhealthy"), "{res:?}");

    // The same facts as `endpoint status` over explicit endpoints (bare host:port).
    let check = |v: &Value, want_eps: &BTreeSet<String>| -> Result<(), String> {
        let arr = v.as_array().ok_or_else(|| format!("not an array: {v}"))?;
        let eps: BTreeSet<String> = arr
            .iter()
            .map(|e| e["Endpoint"].as_str().unwrap_or("").to_string())
            .collect();
        if &eps != want_eps {
            return Err(format!("endpoints {eps:?}, want {want_eps:?}: {v}"));
        }
        let leaders: Vec<&Value> = arr
            .iter()
            .filter(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
            .collect();
        if leaders.len() != 1 {
            return Err(format!("want exactly one IS LEADER: {v}"));
        }
        if u64_of(&leaders[0]["Status"]["header"]["member_id"]) != ids[leader] {
            return Err(format!(
                "the leader is member {leader} ({:x}): {v}",
                ids[leader]
            ));
        }
        let field = |f: &dyn Fn(&Value) -> &Value| -> BTreeSet<String> {
            arr.iter().map(|e| f(&e["Status"]).to_string()).collect()
        };
        if field(&|s| &s["header"]["cluster_id"]).len() != 1 {
            return Err(format!("one cluster_id: {v}"));
        }
        if field(&|s| &s["raftTerm"]).len() != 1 {
            return Err(format!("one raftTerm: {v}"));
        }
        if field(&|s| &s["leader"]).len() != 1 {
            return Err(format!("one leader: {v}"));
        }
        let members: BTreeSet<u64> = arr
            .iter()
            .map(|e| e["Status"]["header"]["member_id"].as_u64().unwrap_or(0))
            .collect();
        if members != ids.iter().copied().collect() {
            return Err(format!("every member answers once: {v}"));
        }
        Ok(())
    };
    let bare: BTreeSet<String> = c.members.iter().map(|m| m.client_endpoint()).collect();
    eventually(
        SETTLE_BOUND,
        "endpoint status over every endpoint",
        || async {
            let v = etcdctl(&c.endpoints(), &["endpoint", "status", "-w", "json"])
                .await
                .json()?;
            check(&v, &bare)
        },
    )
    .await;

    // status --cluster: every member by its advertised client URL (`http://127.0.0.1:PORT`), from one
    // endpoint.
    eventually(SETTLE_BOUND, "endpoint status --cluster", || async {
        let v = etcdctl(&one, &["endpoint", "status", "--cluster", "-w", "json"])
            .await
            .json()?;
        check(&v, &urls)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_get_on_another() {
    let c = Cluster::start(3, &[]).await;
    let e = |i: usize| c.members[i].client_endpoint();
    let out = etcdctl(&e(0), &["put", "greeting", "hello from m0"])
        .await
        .ok();
    assert_eq!(out, "OK\n");
    // Linearizable (the default): the value is there as soon as the put was acknowledged.
    for i in [1, 2] {
        let out = etcdctl(&e(i), &["get", "greeting"]).await.ok();
        assert_eq!(out, "greeting\nhello from m0\n", "linearizable get on m{i}");
    }
    // Serializable: each member's own copy, which the linearizable read above has brought up to date.
    for i in [1, 2] {
        let out = etcdctl(&e(i), &["get", "greeting", "--consistency=s"])
            .await
            .ok();
        assert_eq!(out, "greeting\nhello from m0\n", "serializable get on m{i}");
    }
    // And the other way round: written on m2, read on m0.
    etcdctl(&e(2), &["put", "greeting", "hello from m2"])
        .await
        .ok();
    let out = etcdctl(&e(0), &["get", "greeting", "--print-value-only"])
        .await
        .ok();
    assert_eq!(out, "hello from m2\n");
}

/// A member process this test starts itself (the harness's `add_member` adds through the gateway;
/// here etcdctl adds it and its printed `ETCD_INITIAL_CLUSTER` starts it). Killed on drop.
struct Joiner {
    child: Option<Child>,
    log: PathBuf,
    rest_url: String,
}

impl Joiner {
    /// Starts a member the way the harness does (`Cluster::args`), with `--initial-cluster-state
    /// existing` and the given `--initial-cluster`.
    fn spawn(c: &Cluster, name: &str, ports: &[u16], initial_cluster: &str) -> Joiner {
        let rest_url = format!("http://127.0.0.1:{}", ports[0]);
        let client_url = format!("http://127.0.0.1:{}", ports[1]);
        let peer_url = format!("http://127.0.0.1:{}", ports[2]);
        let data_dir = c.dir.path().join(format!("{name}.data"));
        let log = c.dir.path().join(format!("{name}-etcdctl.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let err: File = out.try_clone().expect("clone log handle");
        let data_dir = data_dir.display().to_string();
        let args: Vec<&str> = vec![
            "--name",
            name,
            "--data-dir",
            &data_dir,
            "--listen-rest-url",
            &rest_url,
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-token",
            &c.token,
            "--initial-cluster-state",
            "existing",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ];
        let child = Command::new(common::bin())
            .args(&args)
            .env("MINI_ETCD_PEER_FAULTS", &c.faults)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn mini-etcd");
        Joiner {
            child: Some(child),
            log,
            rest_url,
        }
    }

    fn log_tail(&self) -> String {
        common::tail(&common::read_log(&self.log), 6000)
    }

    /// Waits (bounded) until `/health` answers 200; panics with the log if the process exits.
    async fn wait_healthy(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    panic!("the new member exited with {status}:\n{}", self.log_tail());
                }
            }
            if let Ok(r) = http.get(format!("{}/health", self.rest_url)).send().await {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the new member not healthy within {ELECTION_BOUND:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of the member started from etcdctl's output ----");
            eprintln!("{}", self.log_tail());
        }
    }
}

/// The `KEY="value"` lines etcdctl prints after `member add`.
fn env_line(out: &str, key: &str) -> String {
    let prefix = format!("{key}=\"");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key}=\"...\" line in {out:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_learner_promote_remove_with_etcdctl() {
    let mut c = Cluster::start(3, &[]).await;
    let ids = ids(&c, 3).await;
    let all = c.endpoints();
    // Names in ETCD_INITIAL_CLUSTER come from the member list: wait until every member published.
    published_member_list(&all, 3).await;
    let cid = cluster_id(&all).await;

    // member add --learner: the header line and the environment for the new member.
    let ports = common::free_ports(3);
    let peer = format!("http://127.0.0.1:{}", ports[2]);
    let out = etcdctl(
        &all,
        &[
            "member",
            "add",
            "m3",
            &format!("--peer-urls={peer}"),
            "--learner",
        ],
    )
    .await
    .ok();
    let (new_id, printed_cid) = member_line(&out, "added to");
    assert_eq!(printed_cid, cid, "{out}");
    assert!(!ids.contains(&new_id), "a fresh id: {out}");
    assert_eq!(env_line(&out, "ETCD_NAME"), "m3");
    assert_eq!(env_line(&out, "ETCD_INITIAL_ADVERTISE_PEER_URLS"), peer);
    assert_eq!(env_line(&out, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let initial_cluster = env_line(&out, "ETCD_INITIAL_CLUSTER");
    let entries: BTreeSet<String> = initial_cluster.split(',').map(str::to_string).collect();
    let mut want: BTreeSet<String> = c
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    want.insert(format!("m3={peer}"));
    assert_eq!(entries, want, "ETCD_INITIAL_CLUSTER in {out}");

    // Listed as an unstarted learner: no name, no client URLs yet.
    let out = etcdctl(&all, &["member", "list"]).await.ok();
    let want_row = format!("{new_id:x}, unstarted, , {peer}, , true");
    assert!(
        out.lines().any(|l| l == want_row),
        "{want_row:?} in:\n{out}"
    );

    // Start it with what etcdctl printed.
    let mut joiner = Joiner::spawn(&c, "m3", &ports, &initial_cluster);
    joiner.wait_healthy().await;

    // Promote: refused until the learner caught up with the leader, then done.
    let hex = format!("{new_id:x}");
    let out = eventually(SETTLE_BOUND, "member promote", || async {
        let res = etcdctl(&all, &["member", "promote", &hex]).await;
        if res.success() {
            return Ok(res.stdout);
        }
        assert!(
            res.stderr.contains(
                "etcdserver: can only promote a learner member which is in sync with leader"
            ),
            "the only acceptable refusal is the learner not being in sync yet: {res:?}"
        );
        Err(format!("{res:?}"))
    })
    .await;
    assert_eq!(member_line(&out, "promoted in"), (new_id, cid), "{out}");

    // Now a started voter with its name and client URL.
    let client = format!("http://127.0.0.1:{}", ports[1]);
    let want_row = format!("{new_id:x}, started, m3, {peer}, {client}, false");
    eventually(SETTLE_BOUND, "the new member listed as a voter", || async {
        let out = etcdctl(&all, &["member", "list"]).await.ok();
        if out.lines().any(|l| l == want_row) && out.lines().count() == 4 {
            Ok(())
        } else {
            Err(format!("{want_row:?} among 4 rows in:\n{out}"))
        }
    })
    .await;

    // Remove a follower (not the new member).
    let leader = c.wait_leader().await;
    let gone = (0..3).find(|&i| i != leader).expect("a follower");
    let kept: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    let kept_eps = format!("{},127.0.0.1:{}", endpoints_of(&c, &kept), ports[1]);
    let out = etcdctl(
        &kept_eps,
        &["member", "remove", &format!("{:x}", ids[gone])],
    )
    .await
    .ok();
    assert_eq!(member_line(&out, "removed from"), (ids[gone], cid), "{out}");
    let want_ids: BTreeSet<u64> = kept.iter().map(|&i| ids[i]).chain([new_id]).collect();
    eventually(SETTLE_BOUND, "three members after the removal", || async {
        let v = etcdctl(&kept_eps, &["member", "list", "-w", "json"])
            .await
            .json()?;
        let got: BTreeSet<u64> = v["members"]
            .as_array()
            .map(|ms| ms.iter().filter_map(|m| m["ID"].as_u64()).collect())
            .unwrap_or_default();
        if got == want_ids {
            Ok(())
        } else {
            Err(format!("{v}"))
        }
    })
    .await;

    // etcd: a removed member stops on its own (it exits 0 after "the member has been permanently
    // removed from the cluster").
    let m = &mut c.members[gone];
    let deadline = Instant::now() + SETTLE_BOUND;
    let status = loop {
        let child = m.child.as_mut().expect("the removed member was running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            m.child = None;
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the removed member {} still runs after {SETTLE_BOUND:?}:\n{}",
            m.name,
            m.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "the removed member exits 0 as etcd does:\n{}",
        m.log_tail()
    );

    // The three left still serve writes through etcdctl.
    etcdctl(&kept_eps, &["put", "after-remove", "v"]).await.ok();
}

/// etcd refuses to promote a learner that has not caught up with the leader: one that never started
/// has replicated nothing. The answer is the same through the leader and through a follower (etcd's
/// follower forwards the promotion to the leader, which checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_unstarted_learner_is_refused() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let all = c.endpoints();
    let peer = format!("http://127.0.0.1:{}", common::free_ports(1)[0]);
    let out = etcdctl(
        &all,
        &[
            "member",
            "add",
            "late",
            &format!("--peer-urls={peer}"),
            "--learner",
        ],
    )
    .await
    .ok();
    let (id, _) = member_line(&out, "added to");
    let hex = format!("{id:x}");
    let want_row = format!("{id:x}, unstarted, , {peer}, , true");
    // Through the leader first, then through each follower: one endpoint at a time, so that which
    // member answers is known.
    let order: Vec<usize> = [leader]
        .into_iter()
        .chain((0..3).filter(|&i| i != leader))
        .collect();
    for i in order {
        let role = if i == leader { "leader" } else { "follower" };
        let ep = c.members[i].client_endpoint();
        let res = etcdctl(&ep, &["member", "promote", &hex]).await;
        assert!(
            !res.success()
                && res.stderr.contains(
                    "etcdserver: can only promote a learner member which is in sync with leader"
                ),
            "promote of an unstarted learner through the {role} m{i}: etcd refuses with \
             \"etcdserver: can only promote a learner member which is in sync with leader\"; got {res:?}"
        );
        let out = etcdctl(&all, &["member", "list"]).await.ok();
        assert!(
            out.lines().any(|l| l == want_row),
            "still a learner after the refused promote through the {role}: {want_row:?} in:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_with_etcdctl() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let ids = ids(&c, 3).await;
    let target = (leader + 1) % 3;
    let all = c.endpoints();

    let out = etcdctl(&all, &["move-leader", &format!("{:x}", ids[target])])
        .await
        .ok();
    assert_eq!(
        out,
        format!(
            "Leadership transferred from {:x} to {:x}\n",
            ids[leader], ids[target]
        )
    );

    // Every member now names the target as leader, and only the target says IS LEADER.
    eventually(
        SETTLE_BOUND,
        "endpoint status shows the new leader",
        || async {
            let v = etcdctl(&all, &["endpoint", "status", "-w", "json"])
                .await
                .json()?;
            let arr = v.as_array().ok_or_else(|| format!("{v}"))?;
            let ok = arr.len() == 3
                && arr
                    .iter()
                    .all(|e| e["Status"]["leader"].as_u64() == Some(ids[target]))
                && arr
                    .iter()
                    .filter(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
                    .count()
                    == 1;
            if ok {
                Ok(())
            } else {
                Err(format!("want leader {:x}: {v}", ids[target]))
            }
        },
    )
    .await;
    let out = etcdctl(&all, &["endpoint", "status"]).await.ok();
    let target_row = out
        .lines()
        .find(|l| l.starts_with(&format!("{}, ", c.members[target].client_endpoint())))
        .unwrap_or_else(|| panic!("no row for the target in:\n{out}"));
    let cols: Vec<&str> = target_row.split(", ").collect();
    assert_eq!(cols[1], format!("{:x}", ids[target]), "{out}");
    assert_eq!(cols[4], "true", "IS LEADER of the target: {out}");

    // Through a follower's endpoint only: etcdctl itself refuses, it needs the leader's endpoint.
    assert_eq!(c.wait_leader().await, target);
    let follower = (target + 1) % 3;
    let ep = c.members[follower].client_endpoint();
    let other = (target + 2) % 3;
    let res = etcdctl(&ep, &["move-leader", &format!("{:x}", ids[other])]).await;
    let err = res.err();
    assert!(
        err.contains(&format!("no leader endpoint given at [{ep}]")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_errors_have_etcds_texts() {
    let c = Cluster::start(3, &[]).await;
    let all = c.endpoints();
    let ids = ids(&c, 3).await;

    let err = etcdctl(&all, &["member", "remove", "1234abcd"]).await.err();
    assert!(err.contains("etcdserver: member not found"), "{err:?}");

    let existing = c.members[1].peer_url();
    let err = etcdctl(
        &all,
        &["member", "add", "x", &format!("--peer-urls={existing}")],
    )
    .await
    .err();
    assert!(
        err.contains("etcdserver: Peer URLs already exists"),
        "{err:?}"
    );

    let err = etcdctl(&all, &["member", "promote", &format!("{:x}", ids[2])])
        .await
        .err();
    assert!(
        err.contains("etcdserver: can only promote a learner member"),
        "{err:?}"
    );
    assert!(
        !err.contains("in sync with leader"),
        "a voter is not a learner at all: {err:?}"
    );

    // Nothing changed.
    let v = published_member_list(&all, 3).await;
    let listed: BTreeSet<u64> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["ID"].as_u64())
        .collect();
    assert_eq!(listed, ids.iter().copied().collect::<BTreeSet<u64>>());
}
