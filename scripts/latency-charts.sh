#!/usr/bin/env bash
# Latency distributions of etcd 3.4 and mini-etcd loaded the same way, drawn as SVG for
# docs/performance.md (issue 18). One member each, on tmpfs, one at a time; `mini-etcd bench` loads
# both (the same client for both servers) and saves every sample; `mini-etcd plot latency` draws them.
# MEMBERS=3 runs three-member clusters of each instead (the load spread over every member's client
# URL, as etcd's benchmark spreads it), and names the charts latency-3m-*.svg.
#
#   cargo build --release && scripts/latency-charts.sh        # writes docs/charts/latency-*.svg
#   MEMBERS=3 scripts/latency-charts.sh                        # writes docs/charts/latency-3m-*.svg
#
# Needs /usr/bin/etcd (etcd-server) and etcdctl (etcd-client).
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=${TOTAL:-50000}
MEMBERS=${MEMBERS:-1}
MINI=${MINI:-$PWD/target/release/mini-etcd}
ETCD=${ETCD:-/usr/bin/etcd}
OUT=${OUT:-$PWD/docs/charts}
for b in "$MINI" "$ETCD"; do
  [ -x "$b" ] || { echo "latency-charts: $b is missing" >&2; exit 1; }
done
mkdir -p "$OUT"

work=$(mktemp -d /dev/shm/latency-charts.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start SERVER: $MEMBERS members of etcd or mini-etcd on fresh ports and data; sets $ep (every
# member's client URL, comma-separated) once each member answers.
start() {
  local server=$1 i cluster="" eps=() clients=() peers=() rests=()
  for i in $(seq "$MEMBERS"); do
    clients+=("$(free_port)"); peers+=("$(free_port)"); rests+=("$(free_port)")
    cluster+="${cluster:+,}m$i=http://127.0.0.1:${peers[-1]}"
  done
  rm -rf "$work/data"
  for i in $(seq "$MEMBERS"); do
    local port=${clients[$((i - 1))]} peer=${peers[$((i - 1))]} rest=${rests[$((i - 1))]}
    local common=(--name "m$i" --data-dir "$work/data/m$i" --listen-client-urls "http://127.0.0.1:$port"
      --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer"
      --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "$cluster"
      --initial-cluster-state new)
    if [ "$server" = etcd ]; then
      "$ETCD" "${common[@]}" >"$work/log-m$i" 2>&1 &
    else
      "$MINI" "${common[@]}" --listen-rest-url "http://127.0.0.1:$rest" --log-level warn >"$work/log-m$i" 2>&1 &
    fi
    pids+=($!)
    eps+=("http://127.0.0.1:$port")
  done
  ep=$(IFS=,; echo "${eps[*]}")
  for _ in $(seq 200); do
    ETCDCTL_API=3 etcdctl --endpoints="$ep" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
}

stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; pids=(); }

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
  if [ "$MEMBERS" = 1 ]; then what="one member"; name="latency-$work_name"; else what="$MEMBERS members"; name="latency-${MEMBERS}m-$work_name"; fi
  "$MINI" plot latency "$work/$work_name-etcd.json" "$work/$work_name-mini-etcd.json" \
    --title "$work_name, $what on tmpfs: latency distribution" --out "$OUT/$name.svg"
  echo "wrote $OUT/$name.svg" >&2
done
