//! A cluster of real `mini-etcd` processes on loopback, for the multi-member suites.
//!
//! Each [`Member`] owns three ports chosen once (REST, client, peer) and keeps them across restarts:
//! a member's peer URL is part of the membership, so it cannot move. A [`Cluster`] boots its members
//! with etcd's static-bootstrap flags (`--initial-cluster`, `--initial-cluster-token`,
//! `--initial-cluster-state new`) and short timing (`--heartbeat-interval 50`, `--election-timeout
//! 500`) so that elections in tests take about half a second.
//!
//! Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`] / [`Cluster::resume`] (SIGSTOP /
//! SIGCONT), and [`Cluster::cut`] / [`Cluster::heal`], which partition a member through the peer
//! transport's test switch (`MINI_ETCD_PEER_FAULTS`, a file of cut-off member ids shared by every
//! member of the cluster). Every wait is bounded; bounds are safety nets, not speed claims.
//!
//! Every member runs with `TOKIO_WORKER_THREADS` set ([`Cluster::workers`], 1 unless a test asks
//! for more), so that where its Raft loop runs (on its one server thread, or on a thread of its
//! own: `raft_loop`) is the test's choice, not the machine's CPU count's.
//!
//! Members are queried through the JSON gateway (`/v3/...`) and the REST API with plain HTTP, so
//! the harness needs no gRPC client; tests bring their own (etcd-client) where they need one.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{bin, free_ports, read_log, tail};

/// How long a cluster may take to elect a leader after a start or a fault.
pub const ELECTION_BOUND: Duration = Duration::from_secs(20);

/// Most clusters one test binary runs at once: each is three to five processes electing with 500 ms
/// timeouts, and on two cores a dozen of them at once starve each other's heartbeats.
const MAX_CLUSTERS: usize = 3;
/// Clusters alive in this process.
static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Waits for a free cluster slot (bounded by the tests' own timeouts, not here).
async fn take_slot() {
    loop {
        {
            let mut n = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
            if *n < MAX_CLUSTERS {
                *n += 1;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One member: its ports, data directory and process.
pub struct Member {
    pub name: String,
    pub rest_port: u16,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    starts: u32,
    /// `new`, or `existing` for a member added at runtime.
    state: String,
    /// The `--initial-cluster` it starts with.
    pub initial_cluster: String,
    paused: bool,
}

impl Member {
    pub fn client_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&read_log(&self.log), 6000)
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

/// A cluster of members started together.
pub struct Cluster {
    pub members: Vec<Member>,
    pub token: String,
    /// Holds data directories, logs and the fault file.
    pub dir: tempfile::TempDir,
    /// The peer transport's fault switch (see the module docs).
    pub faults: PathBuf,
    /// Flags added to every member's command line.
    pub extra: Vec<String>,
    /// Every member's `TOKIO_WORKER_THREADS`: 1 runs its Raft loop on its one server thread, more
    /// on a Raft thread of its own.
    pub workers: usize,
    /// More environment for every member (test switches such as `MINI_ETCD_TEST_PANIC_FILE`).
    pub env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        {
            let mut n = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
            *n = n.saturating_sub(1);
        }
        let panicking = std::thread::panicking();
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                if m.paused {
                    unsafe {
                        libc::kill(c.id() as i32, libc::SIGCONT);
                    }
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            if panicking {
                eprintln!("---- log of member {} ----\n{}", m.name, m.log_tail());
            }
        }
    }
}

impl Cluster {
    /// Boots `n` members with `extra` flags and waits until they agree on a leader.
    ///
    /// Ports are picked free and released before the members bind them, so another process (an
    /// outgoing connection's ephemeral port, often) can take one in between; a start that fails
    /// that way is retried on fresh ports, up to three times.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_workers(n, extra, 1).await
    }

    /// [`Cluster::start`] with `workers` runtime worker threads in every member.
    pub async fn start_with_workers(n: usize, extra: &[&str], workers: usize) -> Cluster {
        take_slot().await;
        let mut attempt = 1;
        loop {
            let mut c = Cluster::new_in_slot(n, extra);
            c.workers = workers;
            for i in 0..n {
                c.spawn(i);
            }
            let mut failed = None;
            for i in 0..n {
                if let Err(e) = c.try_wait_healthy(i).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => {
                    c.wait_leader().await;
                    return c;
                }
                Some(e) if attempt < 3 && e.contains("Address already in use") => {
                    eprintln!("cluster start: a port was taken meanwhile; again on fresh ports");
                    // Dropping `c` releases its slot: take one for the next attempt first.
                    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    drop(c);
                    attempt += 1;
                }
                Some(e) => panic!("{e}"),
            }
        }
    }

    /// [`Cluster::start`], after `prepare(&cluster, i)` has run for every member `i` (to restore a
    /// snapshot into its data directory, say). A port taken meanwhile is not retried here.
    pub async fn start_prepared(
        n: usize,
        extra: &[&str],
        prepare: impl Fn(&Cluster, usize),
    ) -> Cluster {
        take_slot().await;
        let mut c = Cluster::new_in_slot(n, extra);
        for i in 0..n {
            prepare(&c, i);
        }
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i).await;
        }
        c.wait_leader().await;
        c
    }

    /// The cluster's members laid out (ports, directories), none started; holds a slot (see
    /// [`MAX_CLUSTERS`]) taken by the caller.
    fn new_in_slot(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir for the cluster");
        let faults = dir.path().join("peer-faults");
        std::fs::write(&faults, "").expect("fault file");
        let mut members = Vec::new();
        // All at once: ports picked in separate calls can repeat, as each call releases its own.
        let all = free_ports(3 * n);
        for i in 0..n {
            let ports = &all[3 * i..3 * i + 3];
            let name = format!("m{i}");
            members.push(Member {
                data_dir: dir.path().join(format!("{name}.data")),
                log: dir.path().join(format!("{name}-1.log")),
                name,
                rest_port: ports[0],
                client_port: ports[1],
                peer_port: ports[2],
                child: None,
                starts: 0,
                state: "new".into(),
                initial_cluster: String::new(),
                paused: false,
            });
        }
        let ic = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = ic.clone();
        }
        Cluster {
            members,
            token: format!("test-{}", std::process::id()),
            dir,
            faults,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            workers: 1,
            env: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("http client"),
        }
    }

    /// The command line of member `i`.
    pub fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let mut a = vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen-rest-url".into(),
            m.rest_url(),
            "--listen-client-urls".into(),
            m.client_url(),
            "--advertise-client-urls".into(),
            m.client_url(),
            "--listen-peer-urls".into(),
            m.peer_url(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
            "--initial-cluster".into(),
            m.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--initial-cluster-state".into(),
            m.state.clone(),
            "--heartbeat-interval".into(),
            "50".into(),
            "--election-timeout".into(),
            "500".into(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts member `i`'s process (it must not be running).
    pub fn spawn(&mut self, i: usize) {
        let args = self.args(i);
        let faults = self.faults.clone();
        let dir = self.dir.path().to_path_buf();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} is already running", m.name);
        m.starts += 1;
        m.log = dir.join(format!("{}-{}.log", m.name, m.starts));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open log");
        let err: File = out.try_clone().expect("clone log handle");
        let child = Command::new(bin())
            .args(&args)
            .env("MINI_ETCD_PEER_FAULTS", &faults)
            .env("TOKIO_WORKER_THREADS", self.workers.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn mini-etcd");
        m.child = Some(child);
        m.paused = false;
    }

    /// Waits until member `i` answers `/health` with 200.
    pub async fn wait_healthy(&mut self, i: usize) {
        if let Err(e) = self.try_wait_healthy(i).await {
            panic!("{e}");
        }
    }

    /// [`Cluster::wait_healthy`], with the failure as an error: the member exited, or was not
    /// healthy within [`ELECTION_BOUND`].
    async fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            {
                let m = &mut self.members[i];
                if let Some(c) = m.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        m.child = None;
                        return Err(format!(
                            "member {} exited with {status}:\n{}",
                            m.name,
                            m.log_tail()
                        ));
                    }
                }
            }
            let url = format!("{}/health", self.members[i].rest_url());
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "member {} not healthy within {ELECTION_BOUND:?}:\n{}",
                    self.members[i].name,
                    self.members[i].log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves member `i` (stopped) to a new peer port, and rewrites every member's
    /// `--initial-cluster` to the cluster as it is now, as an operator would after `member update`.
    pub fn move_peer_port(&mut self, i: usize, port: u16) {
        assert!(self.members[i].child.is_none(), "stop the member first");
        self.members[i].peer_port = port;
        let ic = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut self.members {
            m.initial_cluster = ic.clone();
        }
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    /// Stops member `i` with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            if super::wait_exit(&mut c, Duration::from_secs(20))
                .await
                .is_none()
            {
                panic!("member {} did not stop on SIGTERM", m.name);
            }
        }
    }

    /// Restarts member `i` on its data directory and ports, and waits for it to answer.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// SIGSTOP: the process is frozen, its sockets stay open.
    pub fn pause(&mut self, i: usize) {
        let m = &mut self.members[i];
        let pid = m.child.as_ref().expect("running").id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        m.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        let m = &mut self.members[i];
        let pid = m.child.as_ref().expect("running").id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGCONT);
        }
        m.paused = false;
    }

    /// Cuts the members `ids` (member ids) off from the rest: no peer message to or from them.
    /// Returns once every member has read the switch (it is read every 50 ms).
    pub async fn cut_ids(&self, ids: &[u64]) {
        let text: String = ids.iter().map(|id| format!("{id:x}\n")).collect();
        std::fs::write(&self.faults, text).expect("write fault file");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Ends every cut.
    pub async fn heal(&self) {
        std::fs::write(&self.faults, "").expect("write fault file");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// POSTs `body` to the JSON gateway path `path` of member `i`.
    pub async fn gateway(&self, i: usize, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{}", self.members[i].client_url(), path);
        let r = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {v}"));
        }
        Ok(v)
    }

    /// Member `i`'s status: (its member id, the leader it knows, raft term, raft index).
    pub async fn status(&self, i: usize) -> Result<(u64, u64, u64, u64), String> {
        let v = self.gateway(i, "/v3/maintenance/status", json!({})).await?;
        let num = |v: &Value| -> u64 {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64())
                .unwrap_or(0)
        };
        Ok((
            num(&v["header"]["member_id"]),
            num(&v["leader"]),
            num(&v["raftTerm"]).max(num(&v["raft_term"])),
            num(&v["raftIndex"]).max(num(&v["raft_index"])),
        ))
    }

    /// Member `i`'s id.
    pub async fn member_id(&self, i: usize) -> u64 {
        self.status(i).await.expect("status").0
    }

    /// The index of the member that every running, unpaused member (of `among`) names as leader,
    /// once they agree and it is one of them.
    pub async fn agreed_leader(&mut self, among: &[usize]) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for &i in among {
            let (id, leader, _, _) = self.status(i).await.ok()?;
            ids.push(id);
            leaders.push(leader);
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().position(|id| *id == first).map(|p| among[p])
    }

    /// Waits until every running member agrees on a leader among them; returns its index.
    pub async fn wait_leader(&mut self) -> usize {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some() && !self.members[i].paused)
            .collect();
        self.wait_leader_among(&live).await
    }

    /// Waits until the members `among` agree on a leader among them.
    pub async fn wait_leader_among(&mut self, among: &[usize]) -> usize {
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            if let Some(l) = self.agreed_leader(among).await {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "members {among:?} agreed on no leader within {ELECTION_BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A REST put on member `i`; Ok(revision) once acknowledged.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<i64, String> {
        let url = format!("{}/put", self.members[i].rest_url());
        let r = self
            .http
            .post(&url)
            .json(&json!({"key": key, "value": value}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {v}"));
        }
        v["revision"]
            .as_i64()
            .ok_or_else(|| format!("no revision in {v}"))
    }

    /// A linearizable REST get on member `i`: Ok(None) when the key does not exist.
    pub async fn get(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        let url = format!("{}/get?key={key}", self.members[i].rest_url());
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        match status {
            200 => Ok(v["value"].as_str().map(str::to_string)),
            404 => Ok(None),
            _ => Err(format!("{status}: {v}")),
        }
    }

    /// Every key and value of member `i` under `prefix`, read serializably (its own copy).
    pub async fn dump(&self, i: usize, prefix: &str) -> Result<Vec<(String, String)>, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self
            .gateway(
                i,
                "/v3/kv/range",
                json!({"key": b64.encode(prefix), "range_end": b64.encode(&end), "serializable": true}),
            )
            .await?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let k = b64
                .decode(kv["key"].as_str().unwrap_or(""))
                .unwrap_or_default();
            let val = b64
                .decode(kv["value"].as_str().unwrap_or(""))
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&val).into_owned(),
            ));
        }
        Ok(out)
    }

    /// Adds a member through member `via` (`MemberAdd`), lays it out (ports, directory) and starts it
    /// with `--initial-cluster-state existing`; returns its index.
    pub async fn add_member(&mut self, via: usize, learner: bool) -> usize {
        let ports = free_ports(3);
        let name = format!("m{}", self.members.len());
        let peer_url = format!("http://127.0.0.1:{}", ports[2]);
        let resp = self
            .gateway(
                via,
                "/v3/cluster/member/add",
                json!({"peerURLs": [peer_url.clone()], "isLearner": learner}),
            )
            .await
            .expect("member add");
        assert!(
            resp["member"]["ID"].is_string() || resp["member"]["ID"].is_u64(),
            "{resp}"
        );
        let mut ic: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        ic.push(format!("{name}={peer_url}"));
        self.members.push(Member {
            data_dir: self.dir.path().join(format!("{name}.data")),
            log: self.dir.path().join(format!("{name}-1.log")),
            name,
            rest_port: ports[0],
            client_port: ports[1],
            peer_port: ports[2],
            child: None,
            starts: 0,
            state: "existing".into(),
            initial_cluster: ic.join(","),
            paused: false,
        });
        let i = self.members.len() - 1;
        self.spawn(i);
        self.wait_healthy(i).await;
        // Started, as etcd counts it, once its name is in the membership (it publishes it).
        let name = self.members[i].name.clone();
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            if let Ok(v) = self
                .gateway(via, "/v3/cluster/member/list", json!({}))
                .await
            {
                let listed = v["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["name"] == json!(name)));
                if listed {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "member {name} never published its name"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    }

    /// Client endpoints of every member, as etcdctl's `--endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::client_endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The directory of member `i`'s data.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }
}
