#!/usr/bin/env bash
# Start-up after many kill -9 restarts (issue 17, "snapshots count from the last snapshot"): CYCLES
# (default 40) runs of one mini-etcd member with --snapshot-count COUNT (default 1000), each writing
# PUTS puts (default 600, fewer than COUNT) over 400 keys with etcd's `benchmark`, then kill -9.
# Prints, every 10 cycles, the start-up time (spawn to /health 200), the peak RSS of that start, the
# WAL's size on disk and the snapshot index. Flat start-up time and memory mean the log is truncated.
# tmpfs; ports 237xx on 127.0.0.1; every loop is bounded.
# Usage: cargo build --release && scripts/restart-loop.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
CYCLES=${CYCLES:-40}; COUNT=${COUNT:-1000}; PUTS=${PUTS:-600}
[ -x "$BM" ] || { echo "restart-loop: no benchmark tool at $BM" >&2; exit 2; }
D=/dev/shm/restart-loop; EP=127.0.0.1:23779
rm -rf "$D"
for c in $(seq "$CYCLES"); do
  t0=$(date +%s.%N)
  setsid "$B" --data-dir "$D" --snapshot-count "$COUNT" --listen-client-urls "http://$EP" \
    --advertise-client-urls "http://$EP" --listen-peer-urls http://127.0.0.1:23780 \
    --initial-advertise-peer-urls http://127.0.0.1:23780 --listen-rest-url http://127.0.0.1:23781 \
    >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf "http://$EP/health" >/dev/null 2>&1 && break; sleep 0.01; done
  t1=$(date +%s.%N)
  rss=$(awk '/VmHWM/{printf "%d", $2 / 1024}' /proc/$pid/status)
  if [ $((c % 10)) -eq 1 ] || [ "$c" -eq "$CYCLES" ]; then
    snap=$(curl -s "http://127.0.0.1:23781/metrics" | awk '/^mini_etcd_snapshot_index /{print $2}')
    applied=$(curl -s "http://127.0.0.1:23781/metrics" | awk '/^etcd_server_proposals_applied_total /{print $2}')
    echo "cycle $c: start-up $(echo "($t1 - $t0) * 1000 / 1" | bc) ms, peak RSS ${rss} MiB, WAL $(du -sm "$D/member/wal" | cut -f1) MiB on disk, applied $applied, snapshot at $snap"
  fi
  "$BM" --endpoints "$EP" --conns 2 --clients 8 put --key-size 16 --val-size 256 --total "$PUTS" \
    --key-space-size 400 >/dev/null 2>&1
  kill -9 "$pid"; wait "$pid" 2>/dev/null
done
rm -rf "$D"
