#!/usr/bin/env bash
# Where a put's CPU goes outside user-space code: system calls and context switches per put, for the
# server and for etcd's load tool, and the CPU each spends per put, during etcd's `benchmark put
# --clients 64 --conns 8` (TOTAL puts, default 30,000). mini-etcd, then etcd when /usr/bin/etcd is
# there, each started with `setsid` as bench-vs-etcd starts them. This is how session 5 found one
# socket write per put (docs/performance-archive.md, "put-64c, session 5").
# Usage: cargo build --release && scripts/syscalls-put.sh   (STORAGE=disk for /var/tmp; needs
# linux-perf with tracepoints, and ../shared/tools/build-etcd-benchmark's tool at $BM)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
TOTAL=${TOTAL:-30000}; STORAGE=${STORAGE:-tmpfs}
[ -x "$BM" ] || { echo "syscalls-put: no benchmark tool at $BM (run ../shared/tools/build-etcd-benchmark)" >&2; exit 2; }
command -v perf >/dev/null || { echo "syscalls-put: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
perf list 2>/dev/null | grep -q "syscalls:sys_enter_writev" \
  || { echo "syscalls-put: perf has no syscall tracepoints on this kernel" >&2; exit 2; }
if [ "$STORAGE" = disk ]; then D=/var/tmp/syscalls-put; else D=/dev/shm/syscalls-put; fi
PORT=23679
EVENTS=context-switches,task-clock
for s in writev write sendmsg sendto read recvfrom futex epoll_wait epoll_pwait fdatasync; do
  EVENTS="$EVENTS,syscalls:sys_enter_$s"
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT" "$D"' EXIT

run() {
  local who=$1 pid
  rm -rf "$D"; mkdir -p "$D"
  if ss -ltn | grep -q ":$PORT "; then echo "syscalls-put: port $PORT is busy" >&2; exit 2; fi
  if [ "$who" = mini-etcd ]; then
    setsid "$B" --data-dir "$D" --listen-client-urls "http://127.0.0.1:$PORT" \
      --listen-peer-urls http://127.0.0.1:23680 --listen-rest-url http://127.0.0.1:23681 >/dev/null 2>&1 &
  else
    setsid /usr/bin/etcd --name a --data-dir "$D" --listen-client-urls "http://127.0.0.1:$PORT" \
      --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls http://127.0.0.1:23680 \
      --initial-advertise-peer-urls http://127.0.0.1:23680 \
      --initial-cluster a=http://127.0.0.1:23680 >/dev/null 2>&1 &
  fi
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  local load=("$BM" --endpoints "127.0.0.1:$PORT" --conns 8 --clients 64 put --key-size 32
              --val-size 256 --key-space-size 100000)
  "${load[@]}" --total 5000 >/dev/null 2>&1   # warm-up: connections, allocator, files
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$OUT/server" &
  local stat=$!
  sleep 0.3
  local rps
  rps=$(perf stat -x, -e "$EVENTS" -o "$OUT/tool" "${load[@]}" --total "$TOTAL" 2>&1 \
    | awk '/Requests\/sec/{printf "%.0f", $2}')
  kill -INT "$stat"; wait "$stat" 2>/dev/null
  kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  echo "$who ($STORAGE): ${rps:-?} puts/s; per put:"
  for side in server tool; do
    awk -F, -v t="$TOTAL" -v side="$side" '
      /^[0-9.]+,/ {
        name = $3; sub("syscalls:sys_enter_", "", name)
        if (name == "task-clock") { printf "  %-6s CPU %.1f us", side, $1 * 1000 / t }
        else if ($1 > 0) { line = line sprintf("  %s %.3f", name, $1 / t) }
      }
      END { print line }' "$OUT/$side"
  done
}

run mini-etcd
[ -x /usr/bin/etcd ] && run etcd
