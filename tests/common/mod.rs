//! End-to-end harness: real `mini-etcd` processes on real sockets.
//!
//! A [`Server`] is one child process of the `mini-etcd` binary that cargo built for this test run. It owns
//! three free ports on 127.0.0.1 (REST, gRPC client, peer), a data directory that the test owns (so that the
//! test can restart a server on it, damage it, or start a second server on it), and a log file that receives
//! the child's stdout and stderr. Every failure message that concerns the server quotes the tail of that log.
//!
//! [`Rest`] is a thin client for the REST API. It never retries: a test that needs to know whether a write was
//! acknowledged must see every failure.
//!
//! Invariants and rules the tests rely on:
//! - Every wait is bounded by a deadline; deadlines are safety bounds, never assertions about speed.
//! - Ports come from [`free_ports`], below the kernel's ephemeral range so that no client socket can take
//!   one between its choice and the server's bind; all three are held at once while picking so that one
//!   start cannot be given the same port twice. A restart picks fresh ports, so a socket lingering
//!   from a killed process can never make the restart fail.
//! - Dropping a `Server` kills its child with SIGKILL and reaps it, including when the test panics; when the
//!   test is panicking the log tail is printed so the failure explains itself.
//!
//! Left out on purpose: cluster setups (one member per test), TLS, and gRPC clients (tests build their own from
//! [`Server::client_url`]).

#![allow(dead_code)]

pub mod cluster;

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Path of the binary under test, built by cargo for integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_mini-etcd");

/// The binary to run: [`BIN`], unless `MINI_ETCD_BIN` names another build to hold to the same contract.
pub fn bin() -> String {
    std::env::var("MINI_ETCD_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// `COMPAT_REFERENCE_ETCD=/usr/bin/etcd` runs the etcd-compatibility suites (grpc_*, etcdctl, gateway)
/// against real etcd instead of mini-etcd, to check that each assertion describes what etcd does. The server
/// is then started with etcd's flags only, and its "REST" port is its client port (where etcd serves
/// `/health`). The seed's REST suites do not support this mode.
pub fn reference_etcd() -> Option<String> {
    std::env::var("COMPAT_REFERENCE_ETCD")
        .ok()
        .filter(|s| !s.is_empty())
}

/// How long a server may take to answer `/health` after spawn. A safety bound, not a performance claim.
pub const START_BOUND: Duration = Duration::from_secs(20);

/// How long a process may take to exit after SIGTERM, or to exit on its own when it is expected to fail.
pub const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Safety bound on any single ordinary (non-watch) HTTP request.
pub const REQUEST_BOUND: Duration = Duration::from_secs(30);

static RAISE_NOFILE: Once = Once::new();

/// Raises this process's open-file soft limit to its hard limit. Watch tests hold hundreds of sockets at once
/// and the children inherit the raised limit, so neither side runs out of descriptors.
fn raise_nofile_limit() {
    RAISE_NOFILE.call_once(|| {
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

/// How often a start that lost one of its chosen ports to another process is tried again.
pub const PORT_RETRIES: u32 = 3;

/// What a failed bind says in the log (the OS's text for `EADDRINUSE`).
pub const ADDR_IN_USE: &str = "Address already in use";

/// Returns `n` distinct free ports on 127.0.0.1. All listeners are held until every port is chosen.
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`), never from it: a port
/// the kernel hands out for `bind(0)` is also what it hands to the next outgoing connection, and with
/// many tests connecting in parallel such a port was often taken by a client socket in the moment between
/// this choice and the server's bind. Outside the ephemeral range only another listener can take it, and
/// within this process the counter never gives a port twice. The start is spread by process id so that
/// test binaries run one after another do not walk the same ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some((lo, hi)) = listening_span() else {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        return listeners
            .iter()
            .map(|l| l.local_addr().expect("local_addr").port())
            .collect();
    };
    let span = u64::from(hi - lo);
    let seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761) % span;
    let mut held = Vec::with_capacity(n);
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + u16::try_from((seed + k) % span).expect("offset below span");
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {lo}..{hi}");
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// The ports test servers listen on: from 10000 up to the kernel's ephemeral range, or above it when the
/// range starts too low; `None` when neither side leaves room (then `bind(0)` is all there is).
fn listening_span() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = text
        .as_deref()
        .unwrap_or("32768 60999")
        .split_whitespace()
        .map(|s| s.parse::<u16>());
    let (Some(Ok(first)), Some(Ok(last))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    if first >= 12_000 {
        Some((10_000, first))
    } else if last <= 63_000 {
        Some((last + 1, 65_535))
    } else {
        None
    }
}

/// Reads a whole log file, lossily, for failure messages.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read log {}: {e}>", path.display()),
    }
}

/// The last `max` bytes of a log, so a failure message stays readable.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// Waits for a child to exit, bounded. On timeout the child is killed and `None` is returned.
pub async fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("try_wait on child failed: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the binary with `args` to completion (bounded), returning its exit status and combined output.
/// Panics if it does not exit within `bound`.
pub async fn run_cli(args: &[&str], bound: Duration) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir for cli log");
    let log = dir.path().join("cli.log");
    let mut child = spawn_logged(args, &log);
    match wait_exit(&mut child, bound).await {
        Some(status) => (status, read_log(&log)),
        None => panic!(
            "`mini-etcd {}` did not exit within {bound:?}; output:\n{}",
            args.join(" "),
            tail(&read_log(&log), 8000)
        ),
    }
}

fn spawn_logged(args: &[&str], log: &Path) -> Child {
    spawn_logged_with_env(args, log, &[], None)
}

fn spawn_logged_with_env(
    args: &[&str],
    log: &Path,
    env: &[(String, String)],
    soft_nofile: Option<u64>,
) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log file");
    let err: File = out.try_clone().expect("clone log file handle");
    let bin = reference_etcd().unwrap_or_else(bin);
    let mut cmd = Command::new(&bin);
    if let Some(soft) = soft_nofile {
        use std::os::unix::process::CommandExt;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim.rlim_cur = (soft as libc::rlim_t).min(lim.rlim_max);
        // SAFETY: runs in the child between fork and exec; setrlimit is async-signal-safe and
        // only reads the struct, which was filled in before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

/// One `mini-etcd` process plus everything needed to restart it on the same data directory.
pub struct Server {
    /// The running child; `None` after it was stopped and reaped.
    child: Option<Child>,
    /// The data directory; owned by the test so it outlives restarts and can be inspected or damaged.
    data_dir: PathBuf,
    /// Extra flags (e.g. `--snapshot-count`) repeated on every restart.
    extra: Vec<String>,
    /// Member name passed with `--name`.
    name: String,
    /// REST port of the current incarnation.
    rest_port: u16,
    /// Client (etcd v3 gRPC) port of the current incarnation.
    client_port: u16,
    /// Holds the log files; kept outside the data directory so logs never look like server state.
    log_dir: tempfile::TempDir,
    /// Log of the current incarnation (stdout and stderr together).
    log: PathBuf,
    /// How many times this server has been started; names the log files.
    starts: u32,
    /// Environment variables set for the process (test switches), on every restart.
    env: Vec<(String, String)>,
    /// The open-file soft limit the process starts with, if not this test process's.
    soft_nofile: Option<u64>,
}

impl Server {
    /// Starts a server on `data_dir` with `extra` flags and waits until `/health` answers 200.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[]).await
    }

    /// [`Server::start`] with `env` set for the process on every start.
    pub async fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(data_dir, extra, env, None).await
    }

    /// [`Server::start`] with the process's open-file soft limit set to `soft` (as `ulimit -Sn`).
    pub async fn start_with_soft_nofile(data_dir: &Path, extra: &[&str], soft: u64) -> Server {
        Server::start_with(data_dir, extra, &[], Some(soft)).await
    }

    async fn start_with(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        soft_nofile: Option<u64>,
    ) -> Server {
        raise_nofile_limit();
        let mut server = Server {
            child: None,
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            name: "default".to_string(),
            rest_port: 0,
            client_port: 0,
            log_dir: tempfile::tempdir().expect("tempdir for logs"),
            log: PathBuf::new(),
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            soft_nofile,
        };
        server.spawn();
        server.wait_healthy().await;
        server
    }

    /// The full argument list for a start on fresh ports; also used to start a competing process.
    fn args_with_ports(&self, rest: u16, client: u16, peer: u16) -> Vec<String> {
        if reference_etcd().is_some() {
            return self.reference_args(client, peer);
        }
        let mut args = vec![
            "--name".to_string(),
            self.name.clone(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--listen-rest-url".to_string(),
            format!("http://127.0.0.1:{rest}"),
            "--listen-client-urls".to_string(),
            format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls".to_string(),
            format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls".to_string(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".to_string(),
            format!("http://127.0.0.1:{peer}"),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    /// etcd's own flags for the same layout (see [`reference_etcd`]).
    fn reference_args(&self, client: u16, peer: u16) -> Vec<String> {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut args = vec![
            "--name".to_string(),
            self.name.clone(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            client_url.clone(),
            "--advertise-client-urls".to_string(),
            client_url,
            "--listen-peer-urls".to_string(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer_url.clone(),
            "--initial-cluster".to_string(),
            format!("{}={peer_url}", self.name),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a child is still running");
        let ports = free_ports(3);
        self.rest_port = ports[0];
        self.client_port = ports[1];
        if reference_etcd().is_some() {
            self.rest_port = ports[1];
        }
        self.starts += 1;
        self.log = self
            .log_dir
            .path()
            .join(format!("server-{}.log", self.starts));
        let args = self.args_with_ports(ports[0], ports[1], ports[2]);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.child = Some(spawn_logged_with_env(
            &args,
            &self.log,
            &self.env,
            self.soft_nofile,
        ));
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let deadline = Instant::now() + START_BOUND;
        let mut port_retries = 0;
        loop {
            let url = format!("{}/health", self.base_url());
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    // A port chosen free was taken before the server bound it (by a process of a
                    // test running beside this one): start again on fresh ports, a bounded number
                    // of times. Any other exit is the failure it looks like.
                    if port_retries < PORT_RETRIES && self.log_tail().contains(ADDR_IN_USE) {
                        port_retries += 1;
                        self.spawn();
                        continue;
                    }
                    panic!(
                        "mini-etcd exited during startup with {status}; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().as_u16() == 200 {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "mini-etcd did not answer GET /health with 200 within {START_BOUND:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of the REST API of the current incarnation.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// `http://127.0.0.1:PORT` of the etcd v3 client API (gRPC and JSON gateway) of the current incarnation.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT` of the client API, as etcdctl's `--endpoints` and etcd-client take it.
    pub fn client_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A REST client for the current incarnation (get a new one after a restart: the port changes).
    pub fn rest(&self) -> Rest {
        Rest::new(&self.base_url())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the running child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    /// The tail of the current incarnation's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&read_log(&self.log), 8000)
    }

    /// SIGKILL: the process gets no chance to flush anything. Reaps the child.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            child.wait().expect("reap killed child");
        }
    }

    /// SIGTERM, then wait (bounded) for exit. Panics with the log if the process does not exit in time.
    pub async fn sigterm_and_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        match wait_exit(&mut child, EXIT_BOUND).await {
            Some(status) => status,
            None => panic!(
                "mini-etcd did not exit within {EXIT_BOUND:?} after SIGTERM (killed it); log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// SIGTERM and require a clean exit (code 0).
    pub async fn stop(&mut self) {
        let status = self.sigterm_and_wait().await;
        assert_eq!(
            status.code(),
            Some(0),
            "mini-etcd should exit 0 on SIGTERM, got {status}; log:\n{}",
            self.log_tail()
        );
    }

    /// Starts the server again on the same data directory and flags (fresh ports) and waits for health.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart while the server is running; stop or kill it first"
        );
        self.spawn();
        self.wait_healthy().await;
    }

    /// Waits (bounded by [`EXIT_BOUND`]) for the running process to exit on its own; returns its
    /// status and the log of this incarnation. Panics if it is still running after the bound.
    pub async fn wait_for_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server is not running");
        match wait_exit(&mut child, EXIT_BOUND).await {
            Some(status) => (status, read_log(&self.log)),
            None => panic!(
                "mini-etcd was still running {EXIT_BOUND:?} after it should have stopped; log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// Starts the server on the same data directory expecting it to fail. Returns its exit status and output.
    /// Panics if it becomes healthy or does not exit within the bound.
    pub async fn start_expecting_failure(&mut self) -> (ExitStatus, String) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
        let mut child = self.child.take().expect("just spawned");
        let status = wait_exit(&mut child, EXIT_BOUND).await;
        let log = read_log(&self.log);
        match status {
            Some(status) => (status, log),
            None => panic!(
                "mini-etcd was expected to refuse to start but was still running after {EXIT_BOUND:?}; log:\n{}",
                tail(&log, 8000)
            ),
        }
    }

    /// Spawns a second, independent process with the same data directory and flags on other ports, and waits
    /// (bounded) for it to exit. Returns its exit status and output. Panics if it keeps running.
    pub async fn start_competitor(&self) -> (ExitStatus, String) {
        let ports = free_ports(3);
        let log = self.log_dir.path().join("competitor.log");
        let args = self.args_with_ports(ports[0], ports[1], ports[2]);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut child = spawn_logged(&args, &log);
        match wait_exit(&mut child, EXIT_BOUND).await {
            Some(status) => (status, read_log(&log)),
            None => panic!(
                "a second mini-etcd on a locked data dir was still running after {EXIT_BOUND:?}; log:\n{}",
                tail(&read_log(&log), 8000)
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "---- mini-etcd log (current incarnation) ----\n{}",
                self.log_tail()
            );
        }
        self.kill9();
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A response reduced to what the tests look at.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    /// The body as JSON; panics with the raw body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status, self.body
            )
        })
    }

    /// Asserts the error contract: the given status and a JSON body `{"error": "<non-empty>"}`.
    pub fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(
            self.status, status,
            "{what}: expected {status}, got {} body {:?}",
            self.status, self.body
        );
        self.assert_error_body(what);
    }

    /// Asserts a 4xx status (never 5xx) with a JSON error body.
    pub fn assert_client_error(&self, what: &str) {
        assert!(
            (400..500).contains(&self.status),
            "{what}: expected a 4xx status, got {} body {:?}",
            self.status,
            self.body
        );
        self.assert_error_body(what);
    }

    fn assert_error_body(&self, what: &str) {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {:?}", self.body));
        let msg = v.get("error").and_then(Value::as_str);
        assert!(
            msg.is_some_and(|m| !m.is_empty()),
            "{what}: error body should be {{\"error\": \"...\"}}, got {v}"
        );
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A key as read back with `GET /get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

pub fn as_i64(v: &Value, field: &str) -> i64 {
    v.get(field)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("field {field:?} missing or not an integer in {v}"))
}

pub fn as_str(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("field {field:?} missing or not a string in {v}"))
        .to_string()
}

impl Kv {
    pub fn from_json(v: &Value) -> Kv {
        Kv {
            key: as_str(v, "key"),
            value: as_str(v, "value"),
            create_revision: as_i64(v, "create_revision"),
            mod_revision: as_i64(v, "mod_revision"),
            version: as_i64(v, "version"),
        }
    }
}

/// REST client for one server incarnation. Cheap to clone (reqwest clients share their pool).
#[derive(Clone)]
pub struct Rest {
    pub client: reqwest::Client,
    pub base: String,
}

impl Rest {
    pub fn new(base: &str) -> Rest {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("reqwest client");
        Rest {
            client,
            base: base.to_string(),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// Sends a request with an optional raw body and content type; bounded by `bound`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<(&str, &[u8])>,
        bound: Duration,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = self
            .client
            .request(method, self.url(path_and_query))
            .timeout(bound);
        if let Some((content_type, bytes)) = body {
            req = req
                .header("content-type", content_type)
                .body(bytes.to_vec());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Like [`send`](Self::send) with the ordinary bound, panicking on transport errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<(&str, &[u8])>,
    ) -> Resp {
        let what = format!("{method} {path_and_query}");
        self.send(method, path_and_query, body, REQUEST_BOUND)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
    }

    /// `POST /put` with a JSON body; the raw response.
    pub async fn try_put(&self, key: &str, value: &str) -> Result<Resp, reqwest::Error> {
        let body = json!({"key": key, "value": value}).to_string();
        self.send(
            reqwest::Method::POST,
            "/put",
            Some(("application/json", body.as_bytes())),
            REQUEST_BOUND,
        )
        .await
    }

    /// `POST /put`, requiring 200 and the documented body; returns the revision it created.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self
            .try_put(key, value)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} failed: {e:?}"));
        assert_eq!(resp.status, 200, "PUT {key}: body {:?}", resp.body);
        let v = resp.json();
        assert_eq!(as_str(&v, "key"), key, "put response key: {v}");
        assert_eq!(as_str(&v, "value"), value, "put response value: {v}");
        as_i64(&v, "revision")
    }

    pub async fn get_resp(&self, key: &str) -> Resp {
        self.call(
            reqwest::Method::GET,
            &format!("/get?key={}", enc(key)),
            None,
        )
        .await
    }

    pub async fn get_at_resp(&self, key: &str, rev: i64) -> Resp {
        self.call(
            reqwest::Method::GET,
            &format!("/get?key={}&rev={rev}", enc(key)),
            None,
        )
        .await
    }

    /// `GET /get`: `Some(kv)` on 200, `None` on 404 (with an error body); anything else panics.
    pub async fn get(&self, key: &str) -> Option<Kv> {
        let resp = self.get_resp(key).await;
        Self::kv_or_none(key, resp)
    }

    /// `GET /get?rev=`: like [`get`](Self::get) as of revision `rev`.
    pub async fn get_at(&self, key: &str, rev: i64) -> Option<Kv> {
        let resp = self.get_at_resp(key, rev).await;
        Self::kv_or_none(key, resp)
    }

    fn kv_or_none(key: &str, resp: Resp) -> Option<Kv> {
        match resp.status {
            200 => {
                let kv = Kv::from_json(&resp.json());
                assert_eq!(kv.key, key, "get returned another key");
                Some(kv)
            }
            404 => {
                resp.assert_error(404, &format!("GET missing key {key}"));
                None
            }
            s => panic!("GET {key}: unexpected status {s} body {:?}", resp.body),
        }
    }

    /// `DELETE /delete?key=`.
    pub async fn delete(&self, key: &str) -> Resp {
        self.call(
            reqwest::Method::DELETE,
            &format!("/delete?key={}", enc(key)),
            None,
        )
        .await
    }

    /// `POST /delete?key=` (the seed's compatibility mode).
    pub async fn delete_post(&self, key: &str) -> Resp {
        self.call(
            reqwest::Method::POST,
            &format!("/delete?key={}", enc(key)),
            None,
        )
        .await
    }

    /// `POST /compact`.
    pub async fn compact(&self, rev: i64) -> Resp {
        let body = json!({ "revision": rev }).to_string();
        self.call(
            reqwest::Method::POST,
            "/compact",
            Some(("application/json", body.as_bytes())),
        )
        .await
    }

    /// `GET /watch?{query}` with a client-side bound (which must exceed the server-side timeout).
    pub async fn watch(&self, query: &str, bound: Duration) -> Resp {
        let path = format!("/watch?{query}");
        self.send(reqwest::Method::GET, &path, None, bound)
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e:?}"))
    }

    /// The value of the `mini_etcd_watchers` gauge from `/metrics`.
    pub async fn watchers(&self) -> i64 {
        self.gauge("mini_etcd_watchers").await
    }

    /// The value of the gauge `name` from `/metrics`.
    pub async fn gauge(&self, name: &str) -> i64 {
        let resp = self.call(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(resp.status, 200, "GET /metrics: {:?}", resp.body);
        parse_gauge(&resp.body, name).unwrap_or_else(|| {
            panic!(
                "/metrics has no `{name} N` line:\n{}",
                tail(&resp.body, 4000)
            )
        })
    }

    /// Waits (bounded) until the watchers gauge satisfies `pred`; panics with the last value otherwise.
    pub async fn wait_watchers(&self, what: &str, bound: Duration, pred: impl Fn(i64) -> bool) {
        let deadline = Instant::now() + bound;
        loop {
            let n = self.watchers().await;
            if pred(n) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("watchers gauge never reached {what} within {bound:?}; last value {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Parses a Prometheus gauge line `name N` or `name{labels} N`, ignoring comments.
pub fn parse_gauge(text: &str, name: &str) -> Option<i64> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue; // another metric whose name starts with ours
        }
        let value = rest.split_whitespace().last()?;
        if let Ok(n) = value.parse::<f64>() {
            return Some(n as i64);
        }
    }
    None
}

/// The `*.wal` files of a data directory (`DATA/member/wal`), sorted by name (etcd names sort by sequence).
pub fn wal_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("member").join("wal");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// A server started with a test-only fault switch: the environment variable `env` names `switch`,
/// a file in `dir` not yet written (writing it arms the fault). 20 puts were acknowledged before
/// anything was armed; `acked` holds their keys and revisions.
pub struct Switched {
    pub dir: tempfile::TempDir,
    pub switch: PathBuf,
    pub server: Server,
    pub acked: Vec<(String, i64)>,
}

/// Starts a [`Switched`] server on a data dir in a fresh temporary directory.
pub async fn start_switched(env: &str) -> Switched {
    let dir = tempfile::tempdir().expect("tempdir");
    let switch = dir.path().join("fault-switch");
    let switch_text = switch.display().to_string();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[(env, switch_text.as_str())],
    )
    .await;
    let rest = server.rest();
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("before/{i}");
        acked.push((key.clone(), rest.put(&key, "v").await));
    }
    Switched {
        dir,
        switch,
        server,
        acked,
    }
}

/// Asserts that every acknowledged `(key, revision)` is there at that revision (`what` names the
/// case in failures).
pub async fn assert_acked_present(rest: &Rest, acked: &[(String, i64)], what: &str) {
    for (key, revision) in acked {
        let kv = rest
            .get(key)
            .await
            .unwrap_or_else(|| panic!("{what}: acknowledged {key} lost"));
        assert_eq!(kv.mod_revision, *revision, "{what}: {key}");
    }
}
