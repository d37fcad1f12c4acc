#!/usr/bin/env bash
# Large ranges, as a Kubernetes LIST does them: N keys (default 10,000) of VAL bytes (default 1 KiB)
# written with etcd's `benchmark put --sequential-keys`, then `benchmark range` over all of them from
# 4 clients, TOTAL times (default 200). Prints ranges/s and the server's CPU per range, for mini-etcd
# and, when /usr/bin/etcd is there, for etcd on the same data. tmpfs; ports 235xx on 127.0.0.1.
# Usage: cargo build --release && scripts/big-range.sh   (needs ../shared/tools/build-etcd-benchmark's
# tool at $BM, default ~/.cache/etcd-bench/bin/benchmark)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
N=${N:-10000}; VAL=${VAL:-1024}; TOTAL=${TOTAL:-200}
[ -x "$BM" ] || { echo "big-range: no benchmark tool at $BM (run ../shared/tools/build-etcd-benchmark)" >&2; exit 2; }
D=/dev/shm/big-range
run() {
  local who=$1 pid
  rm -rf "$D"; mkdir -p "$D"
  if [ "$who" = mini-etcd ]; then
    setsid "$B" --data-dir "$D" --listen-client-urls http://127.0.0.1:23579 \
      --listen-peer-urls http://127.0.0.1:23580 --listen-rest-url http://127.0.0.1:23581 >/dev/null 2>&1 &
  else
    setsid /usr/bin/etcd --name a --data-dir "$D" --listen-client-urls http://127.0.0.1:23579 \
      --advertise-client-urls http://127.0.0.1:23579 --listen-peer-urls http://127.0.0.1:23580 \
      --initial-advertise-peer-urls http://127.0.0.1:23580 --initial-cluster a=http://127.0.0.1:23580 >/dev/null 2>&1 &
  fi
  pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:23579/health >/dev/null 2>&1 && break; sleep 0.1; done
  "$BM" --endpoints 127.0.0.1:23579 --conns 8 --clients 64 put --key-size 32 --val-size "$VAL" \
    --total "$N" --sequential-keys --key-space-size "$N" >/dev/null 2>&1
  sleep 0.5
  local t0 t1 rps
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  # Keys are binary (varint of the key number); 0x01..0xff covers all but key 0.
  rps=$("$BM" --endpoints 127.0.0.1:23579 --conns 4 --clients 4 range $'\x01' $'\xff' --total "$TOTAL" 2>&1 |
    awk '/Requests\/sec/{print $2}')
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  echo "$who: $rps ranges/s, server CPU $(echo "scale=1; ($t1 - $t0) * 10 / $TOTAL" | bc) ms per range of $N keys"
  kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -rf "$D"
}
run mini-etcd
[ -x /usr/bin/etcd ] && run etcd
