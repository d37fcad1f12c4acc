//! `etcdctl make-mirror` between real etcd and mini-etcd, in both directions.
//!
//! make-mirror reads the source's keys at one revision, a thousand at a time, and puts each on
//! the destination; then it watches the source from the next revision and replays every change
//! (puts and deletes, one destination transaction per source revision). Each test starts etcd
//! 3.4 itself (`/usr/bin/etcd`, or `COMPAT_REFERENCE_ETCD`) on its own loopback ports and data
//! directory, and mini-etcd beside it; a missing etcd fails the test (`apt-get install -y
//! etcd-server`), it is never skipped.
//!
//! Every wait is bounded; what has arrived is read from the destination, never assumed from
//! time. make-mirror applies the source's changes in revision order, so once a change made last
//! has arrived, everything before it has too: that is how a key that must *not* arrive is
//! checked.

mod common;
mod compat;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use compat::etcd::Etcd;
use compat::{connect, connect_url, etcdctl_cmd_at, ok, start, Running};
use etcd_client::{Client, GetOptions, Txn, TxnOp};

/// How long the destination may take to show what the source holds (a safety bound).
const MIRROR_BOUND: Duration = Duration::from_secs(60);

/// A running `etcdctl make-mirror` whose stderr goes to a file quoted in failure messages.
struct Mirror {
    /// The etcdctl process (killed on drop).
    run: Running,
    /// Holds etcdctl's stderr.
    dir: tempfile::TempDir,
}

impl Mirror {
    /// `etcdctl --endpoints=SRC make-mirror [extra...] DST` (etcdctl 3.4 takes the destination as
    /// its argument).
    fn spawn(src: &str, dst: &str, extra: &[&str]) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir for etcdctl stderr");
        let mut args = vec!["make-mirror"];
        args.extend_from_slice(extra);
        args.push(dst);
        let mut cmd = etcdctl_cmd_at(src, &args);
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        cmd.stderr(stderr);
        let what = format!("etcdctl --endpoints={src} {}", args.join(" "));
        Mirror {
            run: Running::spawn_cmd(cmd, &what),
            dir,
        }
    }

    fn stderr(&self) -> String {
        common::read_log(&self.dir.path().join("stderr"))
    }
}

/// Every key and value on `c`.
async fn contents(c: &mut Client) -> BTreeMap<String, String> {
    let r = ok(
        "get all",
        c.get("", Some(GetOptions::new().with_all_keys())).await,
    );
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// Waits until `dst` holds exactly `expected`; fails with what differs, etcdctl's stderr and
/// whether it is still running.
async fn await_mirrored(
    what: &str,
    dst: &mut Client,
    expected: &BTreeMap<String, String>,
    mirror: &mut Mirror,
) {
    let deadline = Instant::now() + MIRROR_BOUND;
    loop {
        let got = contents(dst).await;
        if &got == expected {
            return;
        }
        if Instant::now() >= deadline || mirror.run.exited() {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(10)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, _)| !expected.contains_key(*k))
                .take(10)
                .collect();
            panic!(
                "{what}: destination differs (exited: {}): {} keys, {} expected; missing or \
                 different {missing:?}; unexpected {extra:?}; etcdctl stderr:\n{}",
                mirror.run.exited(),
                got.len(),
                expected.len(),
                mirror.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `n` keys `prefix0000`.. with values `v0`.., a hundred per transaction.
async fn fill(c: &mut Client, prefix: &str, n: usize) {
    for start in (0..n).step_by(100) {
        let ops: Vec<TxnOp> = (start..(start + 100).min(n))
            .map(|i| TxnOp::put(format!("{prefix}{i:04}"), format!("v{i}"), None))
            .collect();
        ok("fill", c.txn(Txn::new().and_then(ops)).await);
    }
}

/// The changes a live mirror must replay: a put, an overwrite, deletes, and one transaction of
/// several operations (one source revision).
async fn change(c: &mut Client, prefix: &str) {
    ok("put new", c.put(format!("{prefix}new"), "n", None).await);
    ok(
        "overwrite",
        c.put(format!("{prefix}0002"), "changed", None).await,
    );
    ok("delete", c.delete(format!("{prefix}0000"), None).await);
    ok(
        "txn",
        c.txn(Txn::new().and_then(vec![
            TxnOp::put(format!("{prefix}t1"), "a", None),
            TxnOp::put(format!("{prefix}t2"), "b", None),
            TxnOp::delete(format!("{prefix}0001"), None),
        ]))
        .await,
    );
}

#[tokio::test]
async fn mirror_etcd_to_mini_etcd() {
    let etcd = Etcd::start().await;
    let (mini, _dir) = start(&[]).await;
    let mut src = connect_url(&etcd.url, || etcd.log()).await;
    let mut dst = connect(&mini).await;

    // More keys than etcdctl reads in one page (1000).
    fill(&mut src, "k/", 1500).await;
    ok("put", src.put("top", "level", None).await);

    let mut mirror = Mirror::spawn(&etcd.url, &mini.client_url(), &[]);
    let base = contents(&mut src).await;
    assert_eq!(base.len(), 1501);
    await_mirrored("existing keys", &mut dst, &base, &mut mirror).await;

    change(&mut src, "k/").await;
    let live = contents(&mut src).await;
    assert!(!live.contains_key("k/0000") && live.contains_key("k/t2"));
    await_mirrored("live changes", &mut dst, &live, &mut mirror).await;

    assert!(
        !mirror.run.exited(),
        "make-mirror ended: {}",
        mirror.stderr()
    );
    mirror.run.terminate().await;
}

#[tokio::test]
async fn mirror_mini_etcd_to_etcd_under_a_prefix() {
    let etcd = Etcd::start().await;
    let (mini, _dir) = start(&[]).await;
    let mut src = connect(&mini).await;
    let mut dst = connect_url(&etcd.url, || etcd.log()).await;

    fill(&mut src, "p/", 1200).await;
    ok("put outside", src.put("q/outside", "x", None).await);
    // `p0` is beside the prefix `p/`, not under it.
    ok("put beside", src.put("p0", "y", None).await);

    let mut mirror = Mirror::spawn(&mini.client_url(), &etcd.url, &["--prefix", "p/"]);
    let under = |all: BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| k.starts_with("p/"))
            .collect()
    };
    let base = under(contents(&mut src).await);
    assert_eq!(base.len(), 1200);
    await_mirrored("existing keys under p/", &mut dst, &base, &mut mirror).await;

    change(&mut src, "p/").await;
    ok("put outside", src.put("q/later", "z", None).await);
    // Last: once it has arrived, every change before it has been replayed (or left out).
    ok("marker", src.put("p/zz-marker", "m", None).await);
    let live = under(contents(&mut src).await);
    // Equal to exactly the keys under p/: nothing outside the prefix arrived.
    await_mirrored("live changes under p/", &mut dst, &live, &mut mirror).await;

    assert!(
        !mirror.run.exited(),
        "make-mirror ended: {}",
        mirror.stderr()
    );
    mirror.run.terminate().await;

    // `--dest-prefix` puts the same keys under another prefix at the destination.
    let mut moved = Mirror::spawn(
        &mini.client_url(),
        &etcd.url,
        &["--prefix", "p/", "--dest-prefix", "m/"],
    );
    let mut expected = live.clone();
    for (k, v) in &live {
        expected.insert(format!("m/{}", &k["p/".len()..]), v.clone());
    }
    await_mirrored("keys under m/", &mut dst, &expected, &mut moved).await;
    moved.run.terminate().await;
}
