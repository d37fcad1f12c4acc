//! Micro benchmarks of the hot paths under the server: WAL group commit, MVCC put and range, the key
//! index, and watch fan-out.
//!
//! `cargo bench --bench hot_paths` measures; `cargo test --all-targets` runs every benchmark once (criterion's
//! test mode), so setups here shrink when not measuring (see [`measuring`]) to keep CI quick.
//!
//! - `wal/save`: one `Wal::save` (one write + one fdatasync) of 1 or 64 entries of 256 bytes, in a temp
//!   dir. Throughput is in entries, so the two rows show what batching buys per entry.
//! - `mvcc/put`: one write transaction with one put of a 256-byte value into a key space of 100k keys,
//!   committing the backend every 10,000 writes as the apply loop does.
//! - `mvcc/range_one_key`: a read of one key among 100k, at the current revision.
//! - `key_index/get`: the visible revision of a key with 1000 revisions over 10 generations, at the
//!   newest and at an old revision.
//! - `watch/notify`: `WatchHub::notify` of one put event to 1000 synced watchers of that key (the
//!   channels are drained outside the timed part).
//! - `watch/prefix_watchers`: `WatchHub::notify` of a put and a delete of one key, with no watcher
//!   at all and with 100,000 synced watchers on distinct prefixes (one of which covers the key):
//!   what matching an event costs as prefix watchers pile up.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mini_etcd::mvcc::{
    Event, EventKind, History, KeyIndex, KeyValue, RangeOptions, Revision, Store,
};
use mini_etcd::wal::{Wal, WalOptions};
use mini_etcd::watch::{WatchHub, WatchRequest};
use raft::eraftpb::{Entry, HardState};

/// True under `cargo bench` (criterion gets `--bench`); false in `cargo test`'s run-once mode.
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Keys in the MVCC store for the put and range benchmarks.
fn key_space() -> u64 {
    if measuring() {
        100_000
    } else {
        1_000
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn wal_save(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal/save");
    for per_save in [1usize, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal =
            Wal::create(&dir.path().join("wal"), b"bench", WalOptions::default()).expect("wal");
        let mut index = 0u64;
        let data = vec![0xAB; 256];
        g.throughput(Throughput::Elements(per_save as u64));
        g.bench_function(BenchmarkId::new("entries_per_save", per_save), |b| {
            b.iter_batched(
                || {
                    (0..per_save)
                        .map(|_| {
                            index += 1;
                            Entry {
                                term: 1,
                                index,
                                data: data.clone().into(),
                                ..Entry::default()
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |entries| {
                    let hs = HardState {
                        term: 1,
                        vote: 1,
                        commit: entries.last().map_or(0, |e| e.index),
                        ..HardState::default()
                    };
                    wal.save(Some(&hs), &entries).expect("save");
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A store in a temp dir with every key of the key space written once, committed.
fn filled_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let value = vec![0xCD; 256];
    let mut ci = 0;
    for chunk in (0..key_space()).collect::<Vec<_>>().chunks(1000) {
        // 1000 keys per transaction keeps the setup quick; the index is the same either way.
        let mut txn = store.write();
        for &i in chunk {
            txn.put(&key(i), &value, 0, false).expect("put");
        }
        ci += 1;
        txn.end(ci);
    }
    store.commit_backend().expect("commit");
    (dir, store)
}

fn mvcc(c: &mut Criterion) {
    let (_dir, store) = filled_store();
    let space = key_space();
    let mut g = c.benchmark_group("mvcc");
    let value = vec![0xEF; 256];
    let mut n = 0u64;
    let mut ci = 1_000_000u64;
    // A plain put, as the server makes it when neither prev_kv nor leases need the old record.
    g.bench_function("put", |b| {
        b.iter(|| {
            n += 1;
            ci += 1;
            let k = key(n.wrapping_mul(0x9E37_79B9) % space);
            let mut txn = store.write();
            txn.put(&k, &value, 0, false).expect("put");
            txn.end(ci);
            if store.backend_pending() >= 10_000 {
                store.commit_backend().expect("commit");
            }
        })
    });
    store.commit_backend().expect("commit");
    g.bench_function(BenchmarkId::new("range_one_key", space), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let opts = RangeOptions {
                key: key(i.wrapping_mul(0x9E37_79B9) % space),
                ..RangeOptions::default()
            };
            let r = store.range(&opts).expect("range");
            assert_eq!(r.kvs.len(), 1);
        })
    });
    g.finish();
}

fn key_index(c: &mut Criterion) {
    // 10 generations of 100 revisions each (99 puts and a tombstone), then an open one.
    let mut ki = KeyIndex::new();
    let mut main = 1;
    for _ in 0..10 {
        let created = main + 1;
        for v in 1..100 {
            main += 1;
            ki.put(Revision::new(main, 0), created, v);
        }
        main += 1;
        ki.tombstone(Revision::new(main, 0));
    }
    main += 1;
    ki.put(Revision::new(main, 0), main, 1);
    let newest = main;
    let mut g = c.benchmark_group("key_index/get");
    g.bench_function("newest", |b| {
        b.iter(|| std::hint::black_box(ki.get(std::hint::black_box(newest))))
    });
    g.bench_function("old", |b| {
        b.iter(|| std::hint::black_box(ki.get(std::hint::black_box(150))))
    });
    g.finish();
}

/// History for the hub: only the current revision matters, since the watchers stay synced.
struct BenchHistory(AtomicI64);

impl History for BenchHistory {
    fn current_revision(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
    fn compact_revision(&self) -> i64 {
        0
    }
    fn events(&self, _: &[u8], _: &[u8], _: i64, _: i64) -> mini_etcd::Result<Vec<Event>> {
        Ok(Vec::new())
    }
}

fn watch_fan_out(c: &mut Criterion) {
    const WATCHERS: usize = 1000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let history = Arc::new(BenchHistory(AtomicI64::new(1)));
    let hub = {
        let _guard = rt.enter();
        WatchHub::new(history.clone())
    };
    let mut watchers: Vec<_> = (0..WATCHERS)
        .map(|_| {
            hub.watch(WatchRequest {
                key: b"hot".to_vec(),
                ..WatchRequest::default()
            })
        })
        .collect();
    let mut rev = 1i64;
    let mut g = c.benchmark_group("watch/notify");
    g.throughput(Throughput::Elements(WATCHERS as u64));
    g.bench_function(BenchmarkId::new("one_key_watchers", WATCHERS), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                // Below the channel capacity (128), so no watcher falls behind.
                let chunk = left.min(64);
                left -= chunk;
                for _ in 0..chunk {
                    rev += 1;
                    history.0.store(rev, Ordering::Release);
                    let ev = Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: b"hot".to_vec(),
                            value: vec![1; 64],
                            create_revision: 2,
                            mod_revision: rev,
                            version: rev - 1,
                            lease: 0,
                        },
                        prev_kv: None,
                    };
                    let t = Instant::now();
                    hub.notify(rev, std::slice::from_ref(&ev));
                    timed += t.elapsed();
                }
                rt.block_on(async {
                    for w in &mut watchers {
                        let mut got = 0;
                        while got < chunk as usize {
                            let batch = w.recv().await.expect("watcher open");
                            got += batch.events.len();
                        }
                    }
                });
            }
            timed
        })
    });
    g.finish();
    drop(watchers);
    hub.close();
}

fn watch_prefix_watchers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("watch/prefix_watchers");
    g.throughput(Throughput::Elements(2));
    let many = if measuring() { 100_000 } else { 1_000 };
    for n in [0usize, many] {
        let history = Arc::new(BenchHistory(AtomicI64::new(1)));
        let hub = {
            let _guard = rt.enter();
            WatchHub::new(history.clone())
        };
        let prefix = |i: usize| format!("/registry/pods/ns-{i:06}/").into_bytes();
        let watchers: Vec<_> = (0..n)
            .map(|i| {
                let key = prefix(i);
                hub.watch(WatchRequest {
                    range_end: mini_etcd::watch::prefix_end(&key),
                    key,
                    ..WatchRequest::default()
                })
            })
            .collect();
        let mut rev = 1i64;
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("put_and_delete", n), |b| {
            b.iter(|| {
                // Each watcher gets at most two events per `n` iterations: none falls behind.
                i = (i + 1) % n.max(1);
                let mut key = prefix(i);
                key.extend_from_slice(b"pod");
                for kind in [EventKind::Put, EventKind::Delete] {
                    rev += 1;
                    history.0.store(rev, Ordering::Release);
                    let ev = Event {
                        kind,
                        kv: KeyValue {
                            key: key.clone(),
                            mod_revision: rev,
                            ..KeyValue::default()
                        },
                        prev_kv: None,
                    };
                    hub.notify(rev, std::slice::from_ref(&ev));
                }
            })
        });
        drop(watchers);
        hub.close();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = wal_save, mvcc, key_index, watch_fan_out, watch_prefix_watchers
}
criterion_main!(benches);
