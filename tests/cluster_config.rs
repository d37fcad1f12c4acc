//! Start-up checks of a clustered member: configurations etcd refuses before serving anything.
//!
//! Each refused start must exit non-zero within [`BOUND`] and say why; the tests look for the key
//! words of the message (etcd's own texts are quoted next to each case), not for whole lines. Every
//! port comes from `free_ports` and every socket is on 127.0.0.1.

mod common;

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{bin, free_ports, read_log, run_cli, tail, wait_exit};

/// Bound on a refused start (and on the start-up of the member whose directory is reused).
const BOUND: Duration = Duration::from_secs(30);

/// The flags of member `name` listening on `ports` (REST, client, peer), with `--initial-cluster
/// <initial_cluster>`; the caller appends the rest.
fn member_args(name: &str, data_dir: &Path, ports: &[u16], initial_cluster: &str) -> Vec<String> {
    let peer = format!("http://127.0.0.1:{}", ports[2]);
    let client = format!("http://127.0.0.1:{}", ports[1]);
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-rest-url".into(),
        format!("http://127.0.0.1:{}", ports[0]),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial_cluster.into(),
    ]
}

/// Runs the binary with `args` and requires it to refuse: a non-zero exit within [`BOUND`].
/// Returns its output (stdout and stderr).
async fn refused(args: &[String], what: &str) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out) = run_cli(&args, BOUND).await;
    assert_refused(status, &out, what);
    out
}

fn assert_refused(status: ExitStatus, out: &str, what: &str) {
    assert!(
        !status.success(),
        "{what}: the start should be refused, but the process exited with {status}; output:\n{}",
        tail(out, 6000)
    );
    assert!(
        status.code().is_some(),
        "{what}: a refusal is an orderly exit, not a signal ({status}); output:\n{}",
        tail(out, 6000)
    );
}

/// Asserts that `out` contains every one of `words` (case-insensitive).
fn assert_mentions(out: &str, words: &[&str], what: &str) {
    let lower = out.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "{what}: the message should mention {w:?}; output:\n{}",
            tail(out, 6000)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_missing_from_initial_cluster_is_refused() {
    // etcd: couldn't find local name "t1" in the initial cluster configuration
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(4);
    let ic = format!(
        "a=http://127.0.0.1:{},b=http://127.0.0.1:{}",
        ports[2], ports[3]
    );
    let args = member_args("stray-member", &dir.path().join("d"), &ports, &ic);
    let out = refused(&args, "--name not in --initial-cluster").await;
    assert_mentions(&out, &["stray-member"], "--name not in --initial-cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_url_differing_from_initial_cluster_is_refused() {
    // etcd: --initial-cluster has t3=http://127.0.0.1:33381 but missing from
    // --initial-advertise-peer-urls=http://127.0.0.1:33380 (...)
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(4);
    // This member's entry names another port than the one it advertises (ports[2]).
    let ic = format!("a=http://127.0.0.1:{}", ports[3]);
    let args = member_args("a", &dir.path().join("d"), &ports, &ic);
    let out = refused(&args, "advertise URL differs").await;
    assert_mentions(
        &out,
        &["--initial-advertise-peer-urls"],
        "advertise URL differs",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_url_in_initial_cluster_is_refused() {
    // etcd: initial cluster b=http://127.0.0.1:33380,t2=http://127.0.0.1:33380 has duplicate url
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let peer = format!("http://127.0.0.1:{}", ports[2]);
    let ic = format!("a={peer},b={peer}");
    let args = member_args("a", &dir.path().join("d"), &ports, &ic);
    let out = refused(&args, "duplicate URL").await;
    assert_mentions(&out, &["duplicate"], "duplicate URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_timeout_below_five_heartbeats_is_refused() {
    // etcd: --election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let ic = format!("a=http://127.0.0.1:{}", ports[2]);
    let mut args = member_args("a", &dir.path().join("d"), &ports, &ic);
    args.extend(
        ["--heartbeat-interval", "100", "--election-timeout", "400"]
            .iter()
            .map(|s| s.to_string()),
    );
    let out = refused(&args, "election timeout < 5 heartbeats").await;
    assert_mentions(
        &out,
        &["--election-timeout"],
        "election timeout < 5 heartbeats",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_member_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");

    // Member "a" of its own one-member cluster initialises the directory, then stops cleanly.
    let ports = free_ports(3);
    let ic = format!("a=http://127.0.0.1:{}", ports[2]);
    let log = dir.path().join("a.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open log");
    let err: File = out.try_clone().expect("clone log handle");
    let mut child = Command::new(bin())
        .args(member_args("a", &data, &ports, &ic))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn mini-etcd");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
    let health = format!("http://127.0.0.1:{}/health", ports[0]);
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "member a exited with {status} during start-up:\n{}",
                tail(&read_log(&log), 6000)
            );
        }
        if let Ok(r) = http.get(&health).send().await {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "member a not healthy within {BOUND:?}:\n{}",
                tail(&read_log(&log), 6000)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, BOUND).await.unwrap_or_else(|| {
        panic!(
            "member a did not exit on SIGTERM within {BOUND:?}:\n{}",
            tail(&read_log(&log), 6000)
        )
    });
    assert!(status.success(), "member a stopped with {status}");

    // Member "b" (another member id) on the same directory: etcd's WAL and backend there belong to a.
    let ports = free_ports(3);
    let ic = format!("b=http://127.0.0.1:{}", ports[2]);
    let args = member_args("b", &data, &ports, &ic);
    let out = refused(&args, "another member's data directory").await;
    assert_mentions(
        &out,
        &["data dir", "member"],
        "another member's data directory",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_state_without_member_add_is_refused() {
    // etcd: error validating peerURLs {...}: member count is unequal
    let c = Cluster::start(3, &[]).await;
    let ports = free_ports(3);
    let mut ic: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    ic.push(format!("m3=http://127.0.0.1:{}", ports[2]));
    let mut args = member_args("m3", &c.dir.path().join("m3.data"), &ports, &ic.join(","));
    args.extend(
        [
            "--initial-cluster-token",
            c.token.as_str(),
            "--initial-cluster-state",
            "existing",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = refused(&args, "existing without member add").await;
    assert_mentions(&out, &["member add"], "existing without member add");

    // The cluster is unaffected.
    c.put(0, "still", "serving")
        .await
        .expect("put after the refused join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_state_with_no_reachable_member_is_refused() {
    // etcd: cannot fetch cluster info from peer urls: could not retrieve cluster information from the
    // given URLs
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the other members' peer ports.
    let ports = free_ports(5);
    let ic = format!(
        "x=http://127.0.0.1:{},y=http://127.0.0.1:{},m=http://127.0.0.1:{}",
        ports[3], ports[4], ports[2]
    );
    let mut args = member_args("m", &dir.path().join("d"), &ports, &ic);
    args.extend(
        ["--initial-cluster-state", "existing"]
            .iter()
            .map(|s| s.to_string()),
    );
    let out = refused(&args, "existing with no reachable member").await;
    assert!(
        !out.trim().is_empty(),
        "a refusal says why; the output was empty"
    );
}
