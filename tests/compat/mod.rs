//! Shared pieces of the etcd-compatibility suites (`grpc_*`, `etcdctl`, `gateway`).
//!
//! These suites hold mini-etcd to what etcd 3.4 does on its client port: the gRPC API as a real client
//! (the `etcd-client` crate, written by others) uses it, the `etcdctl` 3.4 command line, and the JSON gateway.
//! Every expectation was first observed against real etcd; setting `COMPAT_REFERENCE_ETCD=/usr/bin/etcd` runs
//! the same tests against etcd itself (see `common::reference_etcd`), which is how they are kept honest.
//!
//! Rules: every wait is bounded by a deadline that is a safety net, never an assertion about speed; all
//! sockets are on 127.0.0.1; a tool the suite needs (etcdctl) that is missing fails the test loudly.

#![allow(dead_code)]

pub mod etcd;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, ResponseHeader};

use crate::common::Server;

/// Safety bound on one gRPC call or one awaited stream message.
pub const CALL_BOUND: Duration = Duration::from_secs(20);

/// Safety bound on one etcdctl invocation.
pub const CTL_BOUND: Duration = Duration::from_secs(30);

/// A fresh single-member server on a temporary data directory with `extra` flags.
pub async fn start(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir for data");
    let server = Server::start(dir.path(), extra).await;
    (server, dir)
}

/// An `etcd-client` connected to the server's client port.
pub async fn connect(server: &Server) -> Client {
    connect_url(&server.client_url(), || server.log_tail()).await
}

/// An `etcd-client` connected to `endpoint`; `log` gives the server's log for a failure message.
pub async fn connect_url(endpoint: &str, log: impl FnOnce() -> String) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(CALL_BOUND);
    match bounded("connect", Client::connect([endpoint], Some(opts))).await {
        Ok(client) => client,
        Err(e) => panic!(
            "cannot connect etcd-client to {endpoint}: {e}; server log:\n{}",
            log()
        ),
    }
}

/// Awaits `fut` at most [`CALL_BOUND`]; panics naming `what` otherwise.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {CALL_BOUND:?}"),
    }
}

/// Unwraps a client result, panicking with the error and `what`.
pub fn ok<T>(what: &str, r: Result<T, etcd_client::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error {e:?}"))
}

/// The gRPC status of a failed call; panics if the call succeeded or failed some other way.
pub fn status<T: std::fmt::Debug>(what: &str, r: Result<T, etcd_client::Error>) -> tonic::Status {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        Err(e) => panic!("{what}: expected a gRPC status, got {e:?}"),
    }
}

/// Asserts that a call failed with exactly etcd's code and message (clients match on the text).
pub fn assert_status<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    let s = status(what, r);
    assert_eq!(s.message(), message, "{what}: message ({s:?})");
    assert_eq!(s.code(), code, "{what}: code ({s:?})");
}

/// Asserts the header every etcd response carries: non-zero cluster and member ids, a raft term of at
/// least 1, and (when given) the store revision.
pub fn assert_header(what: &str, h: Option<&ResponseHeader>, revision: Option<i64>) {
    let h = h.unwrap_or_else(|| panic!("{what}: response has no header"));
    assert_ne!(h.cluster_id(), 0, "{what}: header cluster_id");
    assert_ne!(h.member_id(), 0, "{what}: header member_id");
    assert!(
        h.raft_term() >= 1,
        "{what}: header raft_term {}",
        h.raft_term()
    );
    if let Some(rev) = revision {
        assert_eq!(h.revision(), rev, "{what}: header revision");
    }
}

/// The revision in a response header (which must be present).
pub fn rev_of(h: Option<&ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// Polls `check` until it returns `Some`, at most `bound`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Path of etcdctl: `$ETCDCTL_BIN`, else the first `etcdctl` on `PATH`. A missing etcdctl fails the test:
/// CI installs it (`apt-get install etcd-client`), and a silent skip would hide a whole suite.
pub fn etcdctl_path() -> PathBuf {
    if let Ok(p) = std::env::var("ETCDCTL_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("etcdctl");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "etcdctl not found on PATH (and ETCDCTL_BIN unset): install etcd 3.4's client \
         (`apt-get install -y etcd-client`); this suite must not be skipped"
    );
}

/// What an etcdctl run produced.
#[derive(Debug)]
pub struct CtlOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOut {
    /// Requires exit code 0 and returns stdout.
    pub fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: etcdctl failed: stdout {:?} stderr {:?}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Requires a non-zero exit and returns stderr.
    pub fn err(self, what: &str) -> String {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "{what}: etcdctl should fail: code {:?} stdout {:?} stderr {:?}",
            self.code,
            self.stdout,
            self.stderr
        );
        self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("etcdctl output is not JSON ({e}): {:?}", self.stdout))
    }
}

/// A prepared `ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:PORT` command.
pub fn etcdctl_cmd(server: &Server, args: &[&str]) -> Command {
    etcdctl_cmd_at(&server.client_url(), args)
}

/// The same with `--endpoints=127.0.0.1:PORT` (no scheme).
pub fn etcdctl_cmd_bare(server: &Server, args: &[&str]) -> Command {
    etcdctl_cmd_at(&server.client_endpoint(), args)
}

/// The same at any `endpoint` (for a server that is not a [`Server`]: real etcd, say).
pub fn etcdctl_cmd_at(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=10s")
        .arg("--command-timeout=20s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs etcdctl to completion (bounded by [`CTL_BOUND`]), feeding `stdin` if given.
///
/// Endpoints carry their scheme (`http://...`), as users write them: for its per-endpoint commands
/// (`endpoint status`, `endpoint hashkv`, `defrag`) etcdctl 3.4 then sends the scheme in the HTTP/2
/// `:authority`, which mini-etcd accepts as etcd does (`vendor/h2/PATCH.md`).
pub async fn etcdctl(server: &Server, args: &[&str], stdin: Option<&str>) -> CtlOut {
    let mut cmd = etcdctl_cmd(server, args);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn etcdctl {args:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out: Output = match tokio::time::timeout(CTL_BOUND, waiter).await {
        Ok(r) => r.expect("join").expect("wait etcdctl"),
        Err(_) => {
            // SAFETY: kill(2) on our own child, which the blocking waiter has not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!(
                "etcdctl {args:?} did not exit within {CTL_BOUND:?}; server log:\n{}",
                server.log_tail()
            );
        }
    };
    CtlOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A long-running etcdctl whose stdout lines arrive on a channel.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line seen so far, for failure messages.
    seen: Vec<String>,
    what: String,
}

impl Running {
    /// etcdctl with `args` against `server`.
    pub fn spawn(server: &Server, args: &[&str]) -> Running {
        let mut cmd = etcdctl_cmd(server, args);
        cmd.stderr(Stdio::null());
        Running::spawn_cmd(cmd, &format!("etcdctl {}", args.join(" ")))
    }

    /// A prepared etcdctl command (see [`etcdctl_cmd_at`]) whose stdout is piped, named `what` in
    /// failure messages. Its stderr goes where `cmd` says; a pipe nobody reads would block it.
    pub fn spawn_cmd(mut cmd: Command, what: &str) -> Running {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
            what: what.to_string(),
        }
    }

    /// The next `n` stdout lines, bounded.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while out.len() < n {
            match self.lines.try_recv() {
                Ok(line) => {
                    self.seen.push(line.clone());
                    out.push(line);
                }
                Err(mpsc::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "{}: waited for {n} lines, got {out:?} (all so far {:?})",
                            self.what, self.seen
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("{}: output ended after {out:?}", self.what)
                }
            }
        }
        out
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM (etcdctl then releases its session) and reap, bounded.
    pub async fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        if crate::common::wait_exit(&mut self.child, Duration::from_secs(20))
            .await
            .is_none()
        {
            panic!("{} did not exit after SIGTERM", self.what);
        }
    }

    /// Waits (bounded) for the process to exit on its own; returns the rest of its output.
    pub async fn finish(&mut self) -> Vec<String> {
        let status = crate::common::wait_exit(&mut self.child, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{} did not finish", self.what));
        assert!(status.success(), "{} exited with {status}", self.what);
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
