#!/usr/bin/env bash
# Latency distributions of etcd 3.4 and mini-etcd loaded the same way, drawn as SVG for
# docs/performance.md (issue 18). One member each, on tmpfs, one at a time; `mini-etcd bench` loads
# both (the same client for both servers) and saves every sample; `mini-etcd plot latency` draws them.
#
#   cargo build --release && scripts/latency-charts.sh        # writes docs/charts/latency-*.svg
#
# Needs /usr/bin/etcd (etcd-server) and etcdctl (etcd-client).
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=${TOTAL:-50000}
MINI=${MINI:-$PWD/target/release/mini-etcd}
ETCD=${ETCD:-/usr/bin/etcd}
OUT=${OUT:-$PWD/docs/charts}
for b in "$MINI" "$ETCD"; do
  [ -x "$b" ] || { echo "latency-charts: $b is missing" >&2; exit 1; }
done
mkdir -p "$OUT"

work=$(mktemp -d /dev/shm/latency-charts.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start SERVER: etcd or mini-etcd on fresh ports and data; sets $ep.
start() {
  local server=$1 port peer rest
  port=$(free_port); peer=$(free_port); rest=$(free_port)
  rm -rf "$work/data"
  local common=(--data-dir "$work/data" --listen-client-urls "http://127.0.0.1:$port"
    --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer"
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer")
  if [ "$server" = etcd ]; then
    "$ETCD" "${common[@]}" >"$work/log" 2>&1 &
  else
    "$MINI" "${common[@]}" --listen-rest-url "http://127.0.0.1:$rest" --log-level warn >"$work/log" 2>&1 &
  fi
  pid=$!
  ep="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$ep" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

declare -A load=(
  [put-64c]="put --conns 64 --clients 64 --key-size 8 --val-size 256 --key-space-size 10000"
  [range-lin-64c]="range --conns 64 --clients 64 --val-size 256"
)
for work_name in put-64c range-lin-64c; do
  for server in etcd mini-etcd; do
    start "$server"
    # shellcheck disable=SC2086 # the workload's flags are words
    "$MINI" bench ${load[$work_name]} --total "$TOTAL" --endpoints "$ep" --no-progress \
      --label "$server ($( [ "$server" = etcd ] && echo 3.4.23 || git rev-parse --short HEAD))" \
      --samples "$work/$work_name-$server.json" >"$work/$work_name-$server.txt"
    echo "== $work_name $server" >&2
    grep -E 'Requests/sec|OK:|Latency' "$work/$work_name-$server.txt" >&2
    stop
  done
  "$MINI" plot latency "$work/$work_name-etcd.json" "$work/$work_name-mini-etcd.json" \
    --title "$work_name, one member on tmpfs: latency distribution" --out "$OUT/latency-$work_name.svg"
done
echo "wrote $OUT/latency-put-64c.svg and $OUT/latency-range-lin-64c.svg" >&2
