//! etcd compatibility: etcd 3.4's own command line, `etcdctl`, against mini-etcd.
//!
//! Every expected output below is what `ETCDCTL_API=3 etcdctl` 3.4.23 printed against etcd 3.4.23
//! (`COMPAT_REFERENCE_ETCD=/usr/bin/etcd` re-checks them). etcdctl must be installed: a missing etcdctl
//! fails these tests (see `compat::etcdctl_path`).
//!
//! Long-running commands (watch, lock, elect) run as children whose stdout a thread forwards line by line;
//! the tests wait for specific lines (bounded) and use server state, never sleeps, to know where the other
//! side is. They end with SIGTERM, on which etcdctl closes its session (revoking its lease).

mod common;
mod compat;

use std::time::Duration;

use common::Server;
use compat::{etcdctl, eventually, start, Running};

/// Runs etcdctl and requires success; returns stdout.
async fn ctl(server: &Server, args: &[&str]) -> String {
    etcdctl(server, args, None)
        .await
        .ok(&format!("etcdctl {}", args.join(" ")))
}

/// Runs etcdctl and requires failure; returns stderr.
async fn ctl_err(server: &Server, args: &[&str]) -> String {
    etcdctl(server, args, None)
        .await
        .err(&format!("etcdctl {}", args.join(" ")))
}

/// Runs etcdctl with `-w json` and parses stdout.
async fn ctl_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = ctl(server, &all).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("etcdctl {all:?}: not JSON ({e}): {out:?}"))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The number of keys under `prefix`, read with etcdctl.
async fn count(server: &Server, prefix: &str) -> i64 {
    let v = ctl_json(server, &["get", prefix, "--prefix", "--keys-only"]).await;
    v["count"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn ctl_put_get_flags() {
    let (server, _dir) = start(&[]).await;
    assert_eq!(ctl(&server, &["put", "a", "1"]).await, "OK\n");
    ctl(&server, &["put", "b", "2"]).await;
    ctl(&server, &["put", "c", "3"]).await;
    // --prev-kv prints OK and then the previous pair.
    assert_eq!(
        ctl(&server, &["put", "a", "11", "--prev-kv"]).await,
        "OK\na\n1\n"
    );

    assert_eq!(ctl(&server, &["get", "a"]).await, "a\n11\n");
    assert_eq!(ctl(&server, &["get", "missing"]).await, "");
    assert_eq!(ctl(&server, &["get", "a", "--prefix"]).await, "a\n11\n");
    assert_eq!(
        ctl(&server, &["get", "b", "--from-key"]).await,
        "b\n2\nc\n3\n"
    );
    assert_eq!(ctl(&server, &["get", "a", "c"]).await, "a\n11\nb\n2\n");
    assert_eq!(
        ctl(&server, &["get", "", "--prefix", "--limit", "2"]).await,
        "a\n11\nb\n2\n"
    );
    assert_eq!(ctl(&server, &["get", "a", "--rev", "2"]).await, "a\n1\n");
    // etcd: --keys-only prints each key followed by an empty line.
    assert_eq!(ctl(&server, &["get", "a", "--keys-only"]).await, "a\n\n");
    assert_eq!(
        ctl(&server, &["get", "a", "--print-value-only"]).await,
        "11\n"
    );
    assert_eq!(
        ctl(
            &server,
            &["get", "", "--prefix", "--sort-by=VALUE", "--order=DESCEND"]
        )
        .await,
        "c\n3\nb\n2\na\n11\n"
    );
    assert_eq!(
        ctl(
            &server,
            &[
                "get",
                "",
                "--prefix",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "--keys-only"
            ]
        )
        .await,
        "c\n\nb\n\na\n\n"
    );

    // JSON: etcd's field names, base64 keys and values, `more` and `count`.
    let v = ctl_json(&server, &["get", "", "--from-key", "--limit", "2"]).await;
    assert_eq!(v["header"]["revision"], 5);
    assert!(v["header"]["cluster_id"].as_u64().unwrap_or(0) != 0, "{v}");
    assert!(v["header"]["member_id"].as_u64().unwrap_or(0) != 0, "{v}");
    assert!(v["header"]["raft_term"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["more"], true);
    assert_eq!(v["count"], 3);
    let kvs = v["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[0]["key"], b64("a"));
    assert_eq!(kvs[0]["value"], b64("11"));
    assert_eq!(kvs[0]["create_revision"], 2);
    assert_eq!(kvs[0]["mod_revision"], 5);
    assert_eq!(kvs[0]["version"], 2);
    assert_eq!(kvs[1]["key"], b64("b"));

    // put -w json: just the header.
    let v = ctl_json(&server, &["put", "d", "4"]).await;
    assert_eq!(v["header"]["revision"], 6);
}

#[tokio::test]
async fn ctl_del() {
    let (server, _dir) = start(&[]).await;
    for (k, v) in [("a", "1"), ("p/1", "x"), ("p/2", "y"), ("q", "z")] {
        ctl(&server, &["put", k, v]).await;
    }
    // del prints the number of deleted keys; with --prev-kv also the deleted pairs.
    assert_eq!(ctl(&server, &["del", "a", "--prev-kv"]).await, "1\na\n1\n");
    assert_eq!(ctl(&server, &["del", "nothing"]).await, "0\n");
    assert_eq!(ctl(&server, &["del", "p/", "--prefix"]).await, "2\n");
    assert_eq!(ctl(&server, &["get", "", "--prefix"]).await, "q\nz\n");
    let v = ctl_json(&server, &["del", "q"]).await;
    assert_eq!(v["deleted"], 1);
    assert_eq!(v["header"]["revision"], 8);
}

#[tokio::test]
async fn ctl_txn_interactive() {
    let (server, _dir) = start(&[]).await;
    ctl(&server, &["put", "k", "v1"]).await;

    // The script: compares, blank line, success ops, blank line, failure ops, blank line.
    let script = "value(\"k\") = \"v1\"\n\nput k v2\nput r yes\n\nput r no\n\n";
    let out = etcdctl(&server, &["txn"], Some(script))
        .await
        .ok("txn success");
    assert_eq!(out, "SUCCESS\n\nOK\n\nOK\n");
    assert_eq!(
        ctl(&server, &["get", "r", "--print-value-only"]).await,
        "yes\n"
    );

    let script = "mod(\"k\") > \"0\"\nversion(\"k\") = \"9\"\n\nput r never\n\nget k\n\n";
    let out = etcdctl(&server, &["txn"], Some(script))
        .await
        .ok("txn failure");
    assert_eq!(out, "FAILURE\n\nk\nv2\n");

    // -i prints prompts, the result is the same.
    let script = "create(\"k\") > \"0\"\n\ndel r\n\n\n";
    let out = etcdctl(&server, &["txn", "-i"], Some(script))
        .await
        .ok("txn -i");
    assert!(out.ends_with("SUCCESS\n\n1\n"), "{out:?}");
    assert!(out.starts_with("compares:\n"), "{out:?}");

    let script = "version(\"k\") = \"9\"\n\nput r x\n\nput r failure\n\n";
    let v: serde_json::Value = etcdctl(&server, &["txn", "-w", "json"], Some(script))
        .await
        .json();
    // etcd omits `succeeded` when false; the put's response header carries only the revision.
    assert!(
        v.get("succeeded").is_none() || v["succeeded"] == false,
        "{v}"
    );
    assert_eq!(v["header"]["revision"], 5);
    assert_eq!(
        v["responses"][0]["Response"]["ResponsePut"]["header"]["revision"],
        5
    );

    // Duplicate keys in one branch.
    let err = etcdctl(&server, &["txn"], Some("\n\nput a 1\nput a 2\n\n\n"))
        .await
        .err("duplicate txn");
    assert!(
        err.contains("Error: etcdserver: duplicate key given in txn request"),
        "{err}"
    );
}

#[tokio::test]
async fn ctl_errors() {
    let (server, _dir) = start(&["--max-request-bytes", "1024"]).await;
    ctl(&server, &["put", "k", "v"]).await;
    let err = ctl_err(&server, &["get", "k", "--rev", "100"]).await;
    assert!(
        err.contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    let err = ctl_err(&server, &["put", "", "v"]).await;
    assert!(
        err.contains("Error: etcdserver: key is not provided"),
        "{err}"
    );
    let big = "x".repeat(2000);
    let err = ctl_err(&server, &["put", "big", &big]).await;
    assert!(
        err.contains("Error: etcdserver: request is too large"),
        "{err}"
    );
}

#[tokio::test]
async fn ctl_watch() {
    let (server, _dir) = start(&[]).await;
    ctl(&server, &["put", "w1", "a"]).await; // 2
    ctl(&server, &["put", "w1", "b"]).await; // 3
    ctl(&server, &["put", "other", "x"]).await; // 4
    ctl(&server, &["del", "w1"]).await; // 5
                                        // Starting at revision 2 replays history, so no race with the watch's creation.
    let mut w = Running::spawn(
        &server,
        &["watch", "w", "--prefix", "--prev-kv", "--rev", "2"],
    );
    // etcd's format: the event type, then (with --prev-kv, when there is one) the previous pair, then the pair.
    assert_eq!(w.lines(3).await, ["PUT", "w1", "a"]);
    assert_eq!(w.lines(5).await, ["PUT", "w1", "a", "w1", "b"]);
    assert_eq!(w.lines(5).await, ["DELETE", "w1", "b", "w1", ""]);
    // A live event after the replay.
    ctl(&server, &["put", "w2", "live"]).await;
    assert_eq!(w.lines(3).await, ["PUT", "w2", "live"]);
    w.terminate().await;
}

/// Parses `lease 694d7a1b2c3d4e5f granted with TTL(60s)` into the id's hex text.
fn granted_id(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() == 5 && words[0] == "lease" && words[2] == "granted",
        "lease grant output {out:?}"
    );
    assert_eq!(
        words[1].len(),
        16,
        "etcdctl prints lease ids as 16 hex digits: {out:?}"
    );
    words[1].to_string()
}

#[tokio::test]
async fn ctl_lease() {
    let (server, _dir) = start(&[]).await;
    let out = ctl(&server, &["lease", "grant", "60"]).await;
    let id = granted_id(&out);
    assert_eq!(out, format!("lease {id} granted with TTL(60s)\n"));

    assert_eq!(
        ctl(&server, &["put", "lk", "v", "--lease", &id]).await,
        "OK\n"
    );
    let out = ctl(&server, &["lease", "timetolive", &id, "--keys"]).await;
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(out.starts_with(&prefix), "{out:?}");
    assert!(out.ends_with("s), attached keys([lk])\n"), "{out:?}");

    assert_eq!(
        ctl(&server, &["lease", "list"]).await,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ctl(&server, &["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let v = ctl_json(&server, &["lease", "timetolive", &id, "--keys"]).await;
    assert_eq!(v["granted-ttl"], 60);
    assert_eq!(v["keys"][0], b64("lk"));

    assert_eq!(
        ctl(&server, &["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl(&server, &["get", "lk"]).await, "");
    // etcd 3.4: time-to-live of a gone lease is not an error.
    assert_eq!(
        ctl(&server, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    let err = ctl_err(&server, &["lease", "revoke", &id]).await;
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
    let err = ctl_err(&server, &["lease", "keep-alive", "--once", &id]).await;
    assert!(err.contains("requested lease not found"), "{err}");
    assert_eq!(ctl(&server, &["lease", "list"]).await, "found 0 leases\n");
}

#[tokio::test]
async fn ctl_compaction() {
    let (server, _dir) = start(&[]).await;
    for v in ["1", "2", "3", "4"] {
        ctl(&server, &["put", "k", v]).await; // 2..=5
    }
    assert_eq!(
        ctl(&server, &["compaction", "3"]).await,
        "compacted revision 3\n"
    );
    let err = ctl_err(&server, &["get", "k", "--rev", "2"]).await;
    assert!(
        err.contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(ctl(&server, &["get", "k", "--rev", "3"]).await, "k\n2\n");
    let err = ctl_err(&server, &["compaction", "3"]).await;
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    assert_eq!(
        ctl(&server, &["compaction", "5", "--physical"]).await,
        "compacted revision 5\n"
    );
    let err = ctl_err(&server, &["compaction", "99"]).await;
    assert!(
        err.contains("required revision is a future revision"),
        "{err}"
    );
}

#[tokio::test]
async fn ctl_endpoint_and_member() {
    let (server, _dir) = start(&[]).await;
    ctl(&server, &["put", "k", "v"]).await;
    // Endpoints carry their scheme, so per-endpoint commands send it in `:authority` too.
    let url = server.client_url();
    let full_url = server.client_url();

    let v = ctl_json(&server, &["endpoint", "status"]).await;
    let s = &v[0];
    assert_eq!(s["Endpoint"], url.as_str());
    let st = &s["Status"];
    let version = st["version"].as_str().expect("version");
    assert!(version.starts_with("3."), "{v}");
    assert!(st["dbSize"].as_i64().unwrap_or(0) > 0, "{v}");
    assert_eq!(st["leader"], st["header"]["member_id"], "{v}");
    assert!(st["raftIndex"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(st["raftTerm"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(st["header"]["revision"], 2);

    // Table form: endpoint, id (hex), version, db size, is leader, is learner, term, index, applied, errors.
    let out = ctl(&server, &["endpoint", "status"]).await;
    let cols: Vec<&str> = out.trim_end().split(", ").collect();
    assert_eq!(cols[0], url);
    assert_eq!(cols[2], version);
    assert_eq!(cols[4], "true", "is leader: {out:?}");
    assert_eq!(cols[5], "false", "is learner: {out:?}");

    // health: the verdict goes to stderr.
    let res = etcdctl(&server, &["endpoint", "health"], None).await;
    assert_eq!(res.code, Some(0), "{res:?}");
    assert!(
        res.stderr.contains(&format!(
            "{url} is healthy: successfully committed proposal"
        )),
        "{res:?}"
    );
    let v = ctl_json(&server, &["endpoint", "health"]).await;
    assert_eq!(v[0]["endpoint"], url.as_str());
    assert_eq!(v[0]["health"], true);

    let v = ctl_json(&server, &["endpoint", "hashkv"]).await;
    assert_eq!(v[0]["Endpoint"], url.as_str());
    assert!(v[0]["HashKV"]["hash"].is_u64(), "{v}");
    let out = ctl(&server, &["endpoint", "hashkv"]).await;
    assert_eq!(out, format!("{url}, {}\n", v[0]["HashKV"]["hash"]));

    let v = ctl_json(&server, &["member", "list"]).await;
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{v}");
    assert_eq!(members[0]["name"], "default");
    assert_eq!(members[0]["clientURLs"][0], full_url.as_str());
    assert_eq!(members[0]["ID"], v["header"]["member_id"]);
    // Table form: id (hex), status, name, peer urls, client urls, is learner.
    let out = ctl(&server, &["member", "list"]).await;
    let id = format!("{:x}", members[0]["ID"].as_u64().expect("ID"));
    let peer = members[0]["peerURLs"][0].as_str().expect("peer url");
    assert_eq!(
        out,
        format!("{id}, started, default, {peer}, {full_url}, false\n")
    );
}

#[tokio::test]
async fn ctl_snapshot_defrag_alarm() {
    let (server, _dir) = start(&[]).await;
    for i in 0..20 {
        ctl(&server, &["put", &format!("k{i}"), "v"]).await;
    }
    let snap_dir = tempfile::tempdir().expect("tempdir for the snapshot");
    let snap = snap_dir.path().join("snap.db");
    let snap_s = snap.display().to_string();
    let out = ctl(&server, &["snapshot", "save", &snap_s]).await;
    assert_eq!(out, format!("Snapshot saved at {snap_s}\n"));
    let len = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    assert!(len > 0, "snapshot file is empty");

    assert_eq!(
        ctl(&server, &["defrag"]).await,
        format!(
            "Finished defragmenting etcd member[{}]\n",
            server.client_url()
        )
    );
    assert_eq!(
        ctl(&server, &["get", "k1", "--print-value-only"]).await,
        "v\n"
    );
    assert_eq!(ctl(&server, &["alarm", "list"]).await, "");
}

#[tokio::test]
async fn ctl_lock_two_contenders() {
    let (server, _dir) = start(&[]).await;
    let mut first = Running::spawn(&server, &["lock", "mylock"]);
    // etcdctl prints the lock's key (NAME/LEASE-HEX) once it holds the lock.
    let held = first.lines(1).await;
    assert!(held[0].starts_with("mylock/"), "{held:?}");

    // The second contender runs a command under the lock, which must wait for the first.
    let mut second = Running::spawn(&server, &["lock", "mylock", "echo", "second-holds-it"]);
    // Both contenders' keys exist once the second is queued: server state, not timing.
    eventually("second contender queued", Duration::from_secs(30), || {
        let server = &server;
        async move { (count(server, "mylock/").await == 2).then_some(()) }
    })
    .await;
    assert!(
        !second.exited(),
        "the second contender must wait while the first holds the lock"
    );

    first.terminate().await;
    let rest = second.finish().await;
    assert_eq!(rest, ["second-holds-it"]);
    // Both sessions ended: no keys left.
    eventually("lock keys released", Duration::from_secs(30), || {
        let server = &server;
        async move { (count(server, "mylock/").await == 0).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn ctl_elect_and_listen() {
    let (server, _dir) = start(&[]).await;
    let mut one = Running::spawn(&server, &["elect", "el", "p1"]);
    let won = one.lines(2).await;
    assert!(won[0].starts_with("el/"), "{won:?}");
    assert_eq!(won[1], "p1");

    let mut listen = Running::spawn(&server, &["elect", "-l", "el"]);
    assert_eq!(
        listen.lines(2).await,
        won,
        "the observer sees the current leader"
    );

    let mut two = Running::spawn(&server, &["elect", "el", "p2"]);
    eventually("second candidate queued", Duration::from_secs(30), || {
        let server = &server;
        async move { (count(server, "el/").await == 2).then_some(()) }
    })
    .await;
    one.terminate().await;
    let won2 = two.lines(2).await;
    assert!(won2[0].starts_with("el/") && won2[0] != won[0], "{won2:?}");
    assert_eq!(won2[1], "p2");
    assert_eq!(
        listen.lines(2).await,
        won2,
        "the observer sees the new leader"
    );
    two.terminate().await;
    listen.terminate().await;
}
