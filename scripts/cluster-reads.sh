#!/usr/bin/env bash
# Linearizable reads on a fresh three-member cluster: starts the cluster on tmpfs, runs
# `mini-etcd bench range` (64 clients over every member) RUNS times, and after each run prints the
# latency line, the members' CPU time (user + system, summed) and context switches per read, and
# every member's `etcd_server_slow_read_indexes_total` (read index requests Raft left unanswered
# for 500 ms and issued again). Used for the "Read index contexts" table
# (docs/performance-archive.md) and session 15's tables in docs/performance.md. CONSISTENCY=s
# reads serializably instead.
#
#   cargo build --release && scripts/cluster-reads.sh            # B=<binary> RUNS=3 TOTAL=50000
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-$PWD/target/release/mini-etcd}
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-50000}
[ -x "$B" ] || { echo "cluster-reads: $B is missing" >&2; exit 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
work=$(mktemp -d /dev/shm/cluster-reads.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

clients=(); peers=(); rests=(); cluster=""
for i in 1 2 3; do
  clients+=("$(free_port)"); peers+=("$(free_port)"); rests+=("$(free_port)")
  cluster+="${cluster:+,}m$i=http://127.0.0.1:${peers[-1]}"
done
eps=()
for i in 0 1 2; do
  "$B" --name "m$((i + 1))" --data-dir "$work/m$i" \
    --listen-client-urls "http://127.0.0.1:${clients[$i]}" --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peers[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
    --initial-cluster "$cluster" --listen-rest-url "http://127.0.0.1:${rests[$i]}" --log-level warn \
    >"$work/log$i" 2>&1 &
  pids+=($!)
  eps+=("http://127.0.0.1:${clients[$i]}")
done
ep=$(IFS=,; echo "${eps[*]}")
for _ in $(seq 200); do
  ETCDCTL_API=3 etcdctl --endpoints="$ep" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
# CPU ticks (1/100 s) and context switches of every member, summed over their threads.
cpu() { local t=0 f; for p in "${pids[@]}"; do read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
switches() { for p in "${pids[@]}"; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {s += $2} END {print s}'; }
for r in $(seq "$RUNS"); do
  c0=$(cpu); x0=$(switches)
  echo "run $r: $("$B" bench range --conns 64 --clients 64 --val-size 256 --total "$TOTAL" \
    --consistency "${CONSISTENCY:-l}" --endpoints "$ep" --no-progress 2>&1 | grep -E 'Latency' | sed 's/^ *//')"
  c1=$(cpu); x1=$(switches)
  echo "  server CPU per read $(( (c1 - c0) * 10000 / TOTAL )) µs, context switches per read" \
    "$(awk -v x="$((x1 - x0))" -v n="$TOTAL" 'BEGIN {printf "%.2f", x / n}')"
  for i in 0 1 2; do
    slow=$(curl -s "http://127.0.0.1:${rests[$i]}/metrics" | awk '/^etcd_server_slow_read_indexes_total/ {print $2}')
    leader=$(curl -s "http://127.0.0.1:${rests[$i]}/metrics" | awk '/^etcd_server_is_leader/ {print $2}')
    echo "  m$((i + 1)) leader=$leader slow_read_indexes=$slow"
  done
done
