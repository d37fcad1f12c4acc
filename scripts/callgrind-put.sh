#!/usr/bin/env bash
# Instructions per put, repeatably: the release server runs under valgrind's callgrind on tmpfs, the
# counters are zeroed after a warm-up, `mini-etcd bench put` sends a fixed load, and the dump is
# summed by crate (user space only: callgrind does not see the kernel).
# Usage: cargo build --release && scripts/callgrind-put.sh
#   CLIENTS=64 TOTAL=4000 for the batched case (default 1 client, 2000 puts). Needs valgrind.
# Ports 234xx on 127.0.0.1; data in /dev/shm/callgrind-put (removed at the end).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
CLIENTS=${CLIENTS:-1}; TOTAL=${TOTAL:-2000}
D=/dev/shm/callgrind-put; OUT=${OUT:-/tmp/callgrind-put.out}
command -v valgrind >/dev/null || { echo "callgrind-put: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
rm -rf "$D" "$OUT"*; mkdir -p "$D"
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$B" --data-dir "$D/data" \
  --listen-client-urls http://127.0.0.1:23479 --listen-peer-urls http://127.0.0.1:23480 \
  --listen-rest-url http://127.0.0.1:23481 >"$D/log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null; wait $VG 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 600); do curl -sf http://127.0.0.1:23481/health >/dev/null 2>&1 && break; sleep 0.1; done
load() { "$B" bench put --endpoints http://127.0.0.1:23479 --conns 8 --clients "$CLIENTS" --total "$1" \
  --key-size 32 --val-size 256 --key-space-size 100000 --no-progress 2>&1 | grep -E "Requests/sec"; }
load 500 >/dev/null                      # warm-up: connections, allocator, redb pages
fsyncs() { curl -s http://127.0.0.1:23481/metrics | awk '/^mini_etcd_wal_fsyncs_total/{print $2}'; }
callgrind_control -z "$VG" >/dev/null 2>&1
f0=$(fsyncs)
load "$TOTAL"
callgrind_control -d measured "$VG" >/dev/null 2>&1
f1=$(fsyncs)
echo "clients $CLIENTS, puts $TOTAL, WAL fsyncs $((f1 - f0)) (entries per fsync $(( TOTAL / (f1 - f0) )))"
python3 "$ROOT/scripts/callgrind-by-crate.py" "$(ls "$OUT".* | head -1)" "$TOTAL"
