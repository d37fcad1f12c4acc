//! A panic on a core thread (Raft and apply, backend commit, compaction) stops the member: `/health`
//! turns false, the log says which thread panicked, and the process exits non-zero. Never a process
//! that keeps serving reads and answers every write "server stopped" forever.
//!
//! The panics come from the server's test-only switch (`MINI_ETCD_TEST_PANIC_FILE`): a file whose
//! content names the thread that panics at its next panic point. Every acknowledged write is there
//! after a restart.

mod common;

use std::time::{Duration, Instant};

use common::{assert_acked_present, start_switched, Server, Switched};

/// How long `/health` may take to turn false once the switch is set (a bound, not a measurement).
const TURN_BOUND: Duration = Duration::from_secs(10);

async fn panics_stop_the_member(thread: &str, trigger: impl AsyncFnOnce(&Server)) {
    let Switched {
        dir: _dir,
        switch,
        mut server,
        acked,
    } = start_switched("MINI_ETCD_TEST_PANIC_FILE").await;

    std::fs::write(&switch, thread).expect("set the switch");
    trigger(&server).await;
    // `/health` stops answering 200: a 503, or no answer once the listeners are closed.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let health = format!("{}/health", server.base_url());
    let deadline = Instant::now() + TURN_BOUND;
    loop {
        match client.get(&health).send().await {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => {
                assert_eq!(r.status(), 503, "{thread}");
                break;
            }
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "{thread}: /health still 200 {TURN_BOUND:?} after the panic switch; log:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, log) = server.wait_for_exit().await;
    assert!(
        !status.success(),
        "{thread}: exited with {status}; log:\n{log}"
    );
    assert!(
        log.contains(&format!("\"thread\":\"{thread}\"")) && log.contains("panicked"),
        "{thread}: the log does not say which thread panicked:\n{log}"
    );

    // Nothing acknowledged was lost.
    std::fs::remove_file(&switch).expect("clear the switch");
    server.restart().await;
    assert_acked_present(&server.rest(), &acked, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_raft_thread_stops_the_member() {
    panics_stop_the_member("raft", async |_: &Server| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_backend_commit_thread_stops_the_member() {
    panics_stop_the_member("backend-commit", async |_: &Server| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_compaction_thread_stops_the_member() {
    panics_stop_the_member("compaction", async |s: &Server| {
        let revision = s.rest().put("compact/me", "v").await;
        let r = reqwest::Client::new()
            .post(format!("{}/v3/kv/compaction", s.client_url()))
            .body(format!("{{\"revision\": \"{revision}\"}}"))
            .send()
            .await
            .expect("compaction request");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    })
    .await;
}
