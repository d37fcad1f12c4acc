//! Holding a connection's proposals and running their turn on its thread, with a real server: a
//! put polled in a holding scope is answered by the time the scope ends; a turn that will take a
//! snapshot goes to the Raft thread; a zero limit holds nothing; a panic in a scope neither loses
//! what it held nor leaves the thread holding. Every wait is bounded by [`BOUND`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::proto::etcdserverpb::PutRequest;
use crate::server::Server;

/// Safety bound on any single wait; never an assertion about speed.
const BOUND: Duration = Duration::from_secs(20);

async fn server(limit: Duration, snapshot_count: u64) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::with_data_dir(dir.path()).expect("config");
    config.inline_turn_limit = limit;
    config.snapshot_count = snapshot_count;
    let server = Server::start(config).await.expect("server starts");
    (dir, server)
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

/// Polls `fut` once, as a connection's task polls a call: inside a holding scope.
fn poll_in_scope<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    with_deferred_proposals(|| fut.poll(&mut cx))
}

/// Polls `fut` once outside any scope.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
}

fn inline_turns(server: &Server) -> u64 {
    server.shared().inline_turns.load(Ordering::Relaxed)
}

fn held() -> usize {
    HELD.with(|h| h.borrow().as_ref().map_or(0, |(_, batch)| batch.len()))
}

#[tokio::test]
async fn a_put_held_in_a_scope_is_answered_when_the_scope_ends() {
    let (_dir, server) = server(Duration::from_secs(10), 100_000).await;
    // The Raft thread holds the loop's mutex for a moment every 100 ms tick; a turn that finds it
    // busy goes to the thread instead, so try a few times.
    let mut answered_inline = 0;
    for i in 0..20 {
        let before = inline_turns(&server);
        let mut call = pin!(server.put(put(&format!("k{i}"))));
        assert!(poll_in_scope(call.as_mut()).is_pending(), "waits for Raft");
        if inline_turns(&server) > before {
            // The turn ran as the scope ended: the answer is there without waiting.
            match poll_once(call.as_mut()) {
                Poll::Ready(r) => {
                    r.expect("put");
                }
                Poll::Pending => panic!("an inline turn ran but the put was not answered"),
            }
            answered_inline += 1;
        } else {
            tokio::time::timeout(BOUND, call)
                .await
                .expect("bounded")
                .expect("put");
        }
    }
    assert!(answered_inline > 0, "no turn ran inline in 20 puts");
}

#[tokio::test]
async fn a_scope_holds_its_proposals_until_it_ends_and_nested_scopes_wait_for_the_outer() {
    let (_dir, server) = server(Duration::from_secs(10), 100_000).await;
    let mut call = pin!(server.put(put("nested")));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let held_inside = with_deferred_proposals(|| {
        let inner = with_deferred_proposals(|| {
            assert!(call.as_mut().poll(&mut cx).is_pending());
            held()
        });
        (inner, held())
    });
    assert_eq!(held_inside, (1, 1), "held in the inner scope and after it");
    assert_eq!(held(), 0, "proposed when the outer scope ended");
    tokio::time::timeout(BOUND, call)
        .await
        .expect("bounded")
        .expect("put");
}

#[tokio::test]
async fn a_turn_that_takes_a_snapshot_stays_on_the_raft_thread() {
    // A snapshot every entry: every turn would take one.
    let (_dir, server) = server(Duration::from_secs(10), 1).await;
    for i in 0..10 {
        let mut call = pin!(server.put(put(&format!("s{i}"))));
        assert!(poll_in_scope(call.as_mut()).is_pending());
        tokio::time::timeout(BOUND, call)
            .await
            .expect("bounded")
            .expect("put");
    }
    assert_eq!(inline_turns(&server), 0, "a snapshot turn ran inline");
    assert!(server.shared().snapshot_index.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_zero_limit_holds_nothing() {
    let (_dir, server) = server(Duration::ZERO, 100_000).await;
    let mut call = pin!(server.put(put("zero")));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let held_inside = with_deferred_proposals(|| {
        assert!(call.as_mut().poll(&mut cx).is_pending());
        held()
    });
    assert_eq!(held_inside, 0, "sent to the Raft thread at once");
    tokio::time::timeout(BOUND, call)
        .await
        .expect("bounded")
        .expect("put");
    assert_eq!(inline_turns(&server), 0);
}

#[tokio::test]
async fn a_panic_in_a_scope_sends_what_it_held_and_ends_the_holding() {
    let (_dir, server) = server(Duration::from_secs(10), 100_000).await;
    let mut call = pin!(server.put(put("panic")));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        with_deferred_proposals(|| {
            assert!(call.as_mut().poll(&mut cx).is_pending());
            assert_eq!(held(), 1);
            panic!("a call panicked");
        })
    }));
    assert!(result.is_err());
    assert!(!HOLDING.with(Cell::get), "the thread still holds proposals");
    assert_eq!(held(), 0);
    // Sent to the Raft thread during the unwind, not run inline: answered all the same.
    tokio::time::timeout(BOUND, call)
        .await
        .expect("bounded")
        .expect("put");
    assert_eq!(inline_turns(&server), 0);
}

#[test]
fn only_puts_and_put_only_transactions_on_single_keys_run_inline() {
    use crate::proto::etcdserverpb::{
        Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
    };
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let put_op = |k: &str| op(request_op::Request::RequestPut(put(k)));
    assert_eq!(inline_writes(&Op::Put(put("k"))), Some(3));
    let txn = |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        Op::Txn(TxnRequest {
            compare,
            success,
            failure,
        })
    };
    assert_eq!(
        inline_writes(&txn(
            vec![],
            vec![put_op("a"), put_op("b")],
            vec![put_op("c")]
        )),
        Some(5),
        "two puts in the longer branch: two records, two lease records, the consistent index"
    );
    let one_key = Compare {
        key: b"k".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        inline_writes(&txn(vec![one_key], vec![put_op("a")], vec![])),
        Some(3)
    );
    let whole_keyspace = Compare {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(
        inline_writes(&txn(vec![whole_keyspace], vec![put_op("a")], vec![])),
        None,
        "a compare over a range reads any number of keys"
    );
    assert_eq!(
        inline_writes(&txn(
            vec![],
            vec![op(request_op::Request::RequestRange(
                RangeRequest::default()
            ))],
            vec![]
        )),
        None
    );
    assert_eq!(
        inline_writes(&txn(
            vec![],
            vec![],
            vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest::default()
            ))]
        )),
        None
    );
    assert_eq!(
        inline_writes(&Op::DeleteRange(DeleteRangeRequest::default())),
        None
    );
}

/// Fails the WAL of a fresh server and makes one put in a round: returns whether the failing turn
/// ran inline (rather than on the Raft thread, which may have held the mutex for a tick), after
/// checking what must hold either way.
async fn fail_wal_and_put() -> bool {
    let (_dir, server) = server(Duration::from_secs(10), 100_000).await;
    tokio::time::timeout(BOUND, server.put(put("before")))
        .await
        .expect("bounded")
        .expect("a put before the failure");
    server
        .inner
        .core
        .lock()
        .expect("raft state")
        .wal
        .fail_from_now_on();
    let mut call = pin!(server.put(put("after")));
    assert!(poll_in_scope(call.as_mut()).is_pending());
    let answer = tokio::time::timeout(BOUND, call).await.expect("bounded");
    assert!(
        matches!(answer, Err(Error::Stopped)),
        "the put whose turn failed: {answer:?}"
    );
    let why = server
        .fatal_error()
        .expect("the node records why it stopped");
    assert!(why.contains("WAL"), "{why}");
    assert!(
        server.shared().stopped.load(Ordering::SeqCst),
        "the node is stopped"
    );
    // Nothing is proposed afterwards, in a round or not.
    let mut late = pin!(server.put(put("late")));
    let answer = match poll_in_scope(late.as_mut()) {
        Poll::Ready(r) => r,
        Poll::Pending => tokio::time::timeout(BOUND, late).await.expect("bounded"),
    };
    assert!(
        matches!(answer, Err(Error::Stopped)),
        "a later put: {answer:?}"
    );
    // The Raft thread (the first one started) leaves: its channel is closed, or its own turn failed.
    let raft_thread_done = || {
        server
            .inner
            .threads
            .lock()
            .map(|t| t.first().is_some_and(|h| h.is_finished()))
            .unwrap_or(false)
    };
    let exited = async {
        while !raft_thread_done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(BOUND, exited)
        .await
        .expect("the Raft thread exits");
    why.starts_with("raft (inline turn)")
}

#[tokio::test]
async fn a_failed_wal_write_in_a_round_stops_the_node_and_answers_stopped() {
    // Each attempt checks the outcome; the attempts go on until one failed inline, which the Raft
    // thread's tick makes miss about once in ten thousand.
    let mut inline = false;
    for _ in 0..5 {
        if fail_wal_and_put().await {
            inline = true;
            break;
        }
    }
    assert!(inline, "in 5 attempts the failing turn never ran inline");
}
