//! The `watch` workload: many watchers on one key, one putter, event latency and lost events.
//!
//! Setup opens `--streams` watch streams (spread over the connections) and creates `--watchers`
//! watchers on the key over them, waiting until the server has confirmed every one (`created`).
//! Then one putter writes the key `--total` times at `--put-rate`, recording each put's revision and
//! the instant its answer arrived. Each stream's reader records `(watch id, revision, arrival)` for
//! every event. After the last put the readers get a grace period (5 s, within `--timeout`) to see
//! every expected event; then the results are joined on the revision. The latency of an event is
//! arrival minus the put's acknowledgement, clamped at zero: the event often overtakes the put's
//! answer, so the median is typically 0. The summary therefore also gives the latency from the put's
//! send (what etcd's `benchmark watch-latency` reports).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::keys::{KeyGen, Rng};
use super::plot::Sample;
use super::report::{Latency, Progress, Summary, WatchStats};
use super::run::Shared;
use super::{status_text, BenchArgs, BenchError};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};

/// How long after the last put the watchers may take to receive their events.
const GRACE: Duration = Duration::from_secs(5);

/// One event seen by a reader: watch id, revision, arrival. Watch ids are per stream (etcd numbers
/// them from 0 on each stream), so each reader's events are keyed by its stream too.
type Seen = (i64, i64, Instant);

pub(super) async fn run(
    args: &BenchArgs,
    channels: &[Channel],
    deadline: tokio::time::Instant,
) -> Result<Summary, BenchError> {
    let keys = KeyGen::new(args.key_size, args.key_space_size, args.sequential_keys)
        .map_err(BenchError::Flag)?;
    let key = keys.key_of(0);
    let watchers = args.watchers as usize;
    let streams = (args.streams as usize).clamp(1, watchers);

    // Setup: streams and watchers, each confirmed by the server.
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = signal::channel(false);
    let mut readers = Vec::with_capacity(streams);
    // Held until the end: dropping a request sender would end that stream.
    let mut senders = Vec::with_capacity(streams);
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let mut wc = WatchClient::new(channels[s % channels.len()].clone());
        let (tx, rx) = mpsc::channel::<WatchRequest>(n.max(1));
        for _ in 0..n {
            let req = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.clone(),
                    ..WatchCreateRequest::default()
                })),
            };
            // Capacity n: never blocks.
            let _ = tx.send(req).await;
        }
        let mut stream = tokio::time::timeout_at(deadline, wc.watch(ReceiverStream::new(rx)))
            .await
            .map_err(|_| BenchError::Timeout)?
            .map_err(|s| BenchError::Setup(format!("watch stream: {}", status_text(&s))))?
            .into_inner();
        let mut created = 0;
        while created < n {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .map_err(|_| BenchError::Timeout)?
                .map_err(|s| BenchError::Setup(format!("watch create: {}", status_text(&s))))?;
            match msg {
                Some(r) if r.created => created += 1,
                Some(r) if r.canceled => {
                    return Err(BenchError::Setup(format!(
                        "watch create canceled: {}",
                        r.cancel_reason
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(BenchError::Setup(
                        "watch stream ended during setup".to_string(),
                    ))
                }
            }
        }
        senders.push(tx);
        let received = Arc::clone(&received);
        let mut stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut seen: Vec<Seen> = Vec::new();
            let mut error = None;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    msg = stream.message() => match msg {
                        Ok(Some(r)) => {
                            let now = Instant::now();
                            for ev in &r.events {
                                if let Some(kv) = &ev.kv {
                                    seen.push((r.watch_id, kv.mod_revision, now));
                                }
                            }
                            received.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            error = Some("watch stream ended by the server".to_string());
                            break;
                        }
                        Err(s) => {
                            error = Some(format!("watch stream: {}", status_text(&s)));
                            break;
                        }
                    }
                }
            }
            (seen, error)
        }));
    }

    // The measured phase: one putter at --put-rate.
    let shared = Shared::new(args.total, Some(args.put_rate), deadline);
    let progress = Progress::start(
        "watch (puts)".to_string(),
        Arc::clone(&shared.done),
        args.total,
        !args.no_progress,
    );
    let started = Instant::now();
    let mut kv = KvClient::new(channels[0].clone());
    let value = Rng::new(1).bytes(args.val_size);
    // Revision -> (put sent, put acknowledged).
    let mut acks: HashMap<i64, (Instant, Instant)> = HashMap::new();
    while shared.next().await.is_some() {
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..PutRequest::default()
        };
        let sent = Instant::now();
        if let Some(resp) = shared.bounded(kv.put(req)).await {
            let ack = Instant::now();
            if let Some(h) = resp.into_inner().header {
                acks.insert(h.revision, (sent, ack));
            }
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    let expected = acks.len() as u64 * watchers as u64;
    // Grace period for the last events, bounded by the deadline.
    let grace_end = (tokio::time::Instant::now() + GRACE).min(deadline);
    while received.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    progress.finish().await;

    // Join events with acknowledgements. Each (watch id, revision) counts once.
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut from_send = Vec::with_capacity(expected as usize);
    let mut unique: HashSet<(usize, i64, i64)> = HashSet::with_capacity(expected as usize);
    for (stream, r) in readers.into_iter().enumerate() {
        match r.await {
            Ok((seen, error)) => {
                if let Some(e) = error {
                    shared.error(e);
                }
                for (id, rev, at) in seen {
                    if let Some((sent, ack)) = acks.get(&rev) {
                        if unique.insert((stream, id, rev)) {
                            latencies.push(Sample {
                                at_ns: at.saturating_duration_since(started).as_nanos() as u64,
                                latency_ns: at.saturating_duration_since(*ack).as_nanos() as u64,
                            });
                            from_send.push(at.saturating_duration_since(*sent).as_nanos() as u64);
                        }
                    }
                }
            }
            Err(e) => shared.error(format!("watch reader failed: {e}")),
        }
    }
    drop(senders);
    let received = latencies.len() as u64;
    let mut summary = shared.summary(latencies, elapsed, 1);
    summary.watch = Some(WatchStats {
        watchers: watchers as u64,
        puts: acks.len() as u64,
        events_expected: expected,
        events_received: received,
        events_lost: expected.saturating_sub(received),
        latency_from_put_sent_ms: Latency::from_nanos(from_send),
    });
    Ok(summary)
}
