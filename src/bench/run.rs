//! The request/response workloads: `put`, `range`, `txn-put`, `txn-range` and `lease-keepalive`.
//!
//! Every client runs the same loop against a [`Shared`] counter (see the parent module): claim a
//! request number, wait for its slot under `--rate`, send, record. Latencies stay in each client's own
//! `Vec` until the end, so the hot loop shares nothing but two atomics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::keys::{KeyGen, Rng};
use super::plot::Sample;
use super::report::{Latency, Progress, Summary};
use super::{status_text, BenchArgs, BenchError, Consistency, Workload};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{
    compare, request_op, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// TTL of the leases `lease-keepalive` keeps alive: long enough that none expires during a run's
/// setup, short enough that leftovers of a killed run go away by themselves.
const LEASE_TTL_SECS: i64 = 60;

/// What the clients of one run share.
#[derive(Debug)]
pub(super) struct Shared {
    /// Request numbers claimed so far (may run past `total`; claims beyond it are refused).
    issued: AtomicU64,
    /// Requests finished, ok or not: the progress line's count.
    pub(super) done: Arc<AtomicU64>,
    /// Requests that failed.
    errors: AtomicU64,
    /// Each distinct error text and its count.
    error_counts: Mutex<BTreeMap<String, u64>>,
    /// Set when the deadline ended the run early.
    timed_out: AtomicBool,
    /// Requests to make.
    total: u64,
    /// When the measured phase began: the origin of the `--rate` schedule.
    start: tokio::time::Instant,
    /// The same moment on the clock samples are timed with: the origin of [`Sample::at_ns`].
    origin: Instant,
    /// `--timeout`, as an instant.
    deadline: tokio::time::Instant,
    /// Seconds between two scheduled requests, if capped.
    interval: Option<f64>,
}

impl Shared {
    pub(super) fn new(total: u64, rate: Option<f64>, deadline: tokio::time::Instant) -> Shared {
        Shared {
            issued: AtomicU64::new(0),
            done: Arc::new(AtomicU64::new(0)),
            errors: AtomicU64::new(0),
            error_counts: Mutex::new(BTreeMap::new()),
            timed_out: AtomicBool::new(false),
            total,
            start: tokio::time::Instant::now(),
            origin: Instant::now(),
            deadline,
            interval: rate.map(|r| 1.0 / r),
        }
    }

    /// Claims the next request number and waits for its slot; `None` when the run is over.
    pub(super) async fn next(&self) -> Option<u64> {
        if tokio::time::Instant::now() >= self.deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if n >= self.total {
            return None;
        }
        if let Some(iv) = self.interval {
            let due = self.start + Duration::from_secs_f64(iv * n as f64);
            if due >= self.deadline {
                self.timed_out.store(true, Ordering::Relaxed);
                return None;
            }
            tokio::time::sleep_until(due).await;
        }
        Some(n)
    }

    /// A sample for a request that began at `sent` and has just been answered.
    pub(super) fn sample(&self, sent: Instant) -> Sample {
        let now = Instant::now();
        Sample {
            at_ns: now.saturating_duration_since(self.origin).as_nanos() as u64,
            latency_ns: now.saturating_duration_since(sent).as_nanos() as u64,
        }
    }

    /// Counts a failed request under its text.
    pub(super) fn error(&self, text: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .error_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(text)
            .or_insert(0) += 1;
    }

    /// Waits for `fut` until the deadline; a request cut off by it counts as an error.
    pub(super) async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(status)) => {
                self.error(status_text(&status));
                None
            }
            Err(_) => {
                self.timed_out.store(true, Ordering::Relaxed);
                self.error("no answer before --timeout".into());
                None
            }
        }
    }

    /// The summary of the run, from every client's samples.
    pub(super) fn summary(
        &self,
        samples: Vec<Sample>,
        elapsed: Duration,
        clients: usize,
    ) -> Summary {
        let ok = samples.len() as u64;
        Summary {
            clients,
            total: self.total,
            ok,
            errors: self.errors.load(Ordering::Relaxed),
            error_counts: self
                .error_counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            duration_s: elapsed.as_secs_f64(),
            requests_per_s: ok as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Latency::from_nanos(samples.iter().map(|s| s.latency_ns).collect()),
            samples,
            ..Summary::default()
        }
    }
}

/// Runs `workload` (not `watch`) and returns its summary (endpoints and names are filled by the caller).
pub(super) async fn run(
    workload: Workload,
    args: &BenchArgs,
    channels: &[Channel],
    deadline: tokio::time::Instant,
) -> Result<Summary, BenchError> {
    let keys = KeyGen::new(args.key_size, args.key_space_size, args.sequential_keys)
        .map_err(BenchError::Flag)?;
    let clients = args.clients as usize;

    // Setup, not measured.
    if matches!(workload, Workload::Range | Workload::TxnRange) {
        // The key read must exist, so each get returns a value of --val-size bytes.
        let mut kv = KvClient::new(channels[0].clone());
        let req = PutRequest {
            key: keys.key_of(0),
            value: Rng::new(7).bytes(args.val_size),
            ..PutRequest::default()
        };
        tokio::time::timeout_at(deadline, kv.put(req))
            .await
            .map_err(|_| BenchError::Timeout)?
            .map_err(|s| BenchError::Setup(format!("seeding put: {}", status_text(&s))))?;
    }
    let mut leases = Vec::new();
    if workload == Workload::LeaseKeepalive {
        for i in 0..clients {
            let mut lc = LeaseClient::new(channels[i % channels.len()].clone());
            let req = LeaseGrantRequest {
                ttl: LEASE_TTL_SECS,
                id: 0,
            };
            let resp = tokio::time::timeout_at(deadline, lc.lease_grant(req))
                .await
                .map_err(|_| BenchError::Timeout)?
                .map_err(|s| BenchError::Setup(format!("lease grant: {}", status_text(&s))))?
                .into_inner();
            if !resp.error.is_empty() {
                return Err(BenchError::Setup(format!("lease grant: {}", resp.error)));
            }
            leases.push(resp.id);
        }
    }

    let shared = Arc::new(Shared::new(args.total, args.rate, deadline));
    let progress = Progress::start(
        workload.name().to_string(),
        Arc::clone(&shared.done),
        args.total,
        !args.no_progress,
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let ch = channels[i % channels.len()].clone();
        let shared = Arc::clone(&shared);
        let client = Client {
            keys: keys.clone(),
            rng: Rng::new(0x5EED ^ (i as u64).wrapping_mul(0x1000_0000_01B3)),
            value: Rng::new(i as u64 + 1).bytes(args.val_size),
            serializable: args.consistency == Consistency::S,
        };
        let lease = leases.get(i).copied();
        tasks.push(tokio::spawn(async move {
            match workload {
                Workload::LeaseKeepalive => keepalive_loop(&shared, ch, lease.unwrap_or(0)).await,
                _ => client.kv_loop(workload, &shared, ch).await,
            }
        }));
    }
    let mut latencies = Vec::with_capacity(args.total.min(10_000_000) as usize);
    for t in tasks {
        match t.await {
            Ok(l) => latencies.extend(l),
            Err(e) => shared.error(format!("client task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    progress.finish().await;

    // Clean up leases (best effort, bounded; not measured).
    for (i, id) in leases.into_iter().enumerate() {
        let mut lc = LeaseClient::new(channels[i % channels.len()].clone());
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            lc.lease_revoke(LeaseRevokeRequest { id }),
        )
        .await;
    }
    Ok(shared.summary(latencies, elapsed, clients))
}

/// One client of a KV workload.
struct Client {
    /// Which key each request touches.
    keys: KeyGen,
    /// This client's own random stream, for keys.
    rng: Rng,
    /// The value every put writes.
    value: Vec<u8>,
    /// Range reads are serializable.
    serializable: bool,
}

impl Client {
    /// Sends requests until the run is over; returns the samples of those that succeeded.
    async fn kv_loop(mut self, workload: Workload, shared: &Shared, ch: Channel) -> Vec<Sample> {
        let mut kv = KvClient::new(ch);
        let mut lat = Vec::new();
        while let Some(n) = shared.next().await {
            let t = Instant::now();
            let ok = match workload {
                Workload::Range => {
                    let req = RangeRequest {
                        key: self.keys.key_of(0),
                        serializable: self.serializable,
                        ..RangeRequest::default()
                    };
                    shared.bounded(kv.range(req)).await.is_some()
                }
                Workload::TxnRange => {
                    let key = self.keys.key_of(0);
                    let req = TxnRequest {
                        compare: vec![Compare {
                            key: key.clone(),
                            target: compare::CompareTarget::Version as i32,
                            result: compare::CompareResult::Greater as i32,
                            target_union: Some(compare::TargetUnion::Version(0)),
                            ..Compare::default()
                        }],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestRange(RangeRequest {
                                key,
                                ..RangeRequest::default()
                            })),
                        }],
                        ..TxnRequest::default()
                    };
                    shared.bounded(kv.txn(req)).await.is_some()
                }
                Workload::TxnPut => {
                    let put = PutRequest {
                        key: self.keys.key(n, &mut self.rng),
                        value: self.value.clone(),
                        ..PutRequest::default()
                    };
                    let req = TxnRequest {
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestPut(put)),
                        }],
                        ..TxnRequest::default()
                    };
                    shared.bounded(kv.txn(req)).await.is_some()
                }
                _ => {
                    let req = PutRequest {
                        key: self.keys.key(n, &mut self.rng),
                        value: self.value.clone(),
                        ..PutRequest::default()
                    };
                    shared.bounded(kv.put(req)).await.is_some()
                }
            };
            if ok {
                lat.push(shared.sample(t));
            }
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        lat
    }
}

/// Keeps lease `id` alive on one keepalive stream, one request in flight at a time.
async fn keepalive_loop(shared: &Shared, ch: Channel, id: i64) -> Vec<Sample> {
    let mut lat = Vec::new();
    let mut lc = LeaseClient::new(ch);
    let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
    // The first request is queued before the call: etcd (grpc-go) sends the response headers only
    // with its first answer, so awaiting the call before sending anything would wait forever.
    if shared.next().await.is_none() {
        return lat;
    }
    let mut t = Instant::now();
    let _ = tx.send(LeaseKeepAliveRequest { id }).await;
    let Some(resp) = shared
        .bounded(lc.lease_keep_alive(ReceiverStream::new(rx)))
        .await
    else {
        shared.done.fetch_add(1, Ordering::Relaxed);
        return lat;
    };
    let mut stream = resp.into_inner();
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            if shared.next().await.is_none() {
                break;
            }
            t = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                shared.error("keepalive stream closed by the client side".into());
                shared.done.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        match shared.bounded(stream.message()).await {
            Some(Some(r)) if r.ttl > 0 => lat.push(shared.sample(t)),
            Some(Some(_)) => shared.error("keepalive answered TTL <= 0 (lease gone)".into()),
            Some(None) => {
                shared.error("keepalive stream ended by the server".into());
                shared.done.fetch_add(1, Ordering::Relaxed);
                break;
            }
            None => {}
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    lat
}
