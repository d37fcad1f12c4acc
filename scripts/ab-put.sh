#!/usr/bin/env bash
# Two server builds, X and Y, in alternated pairs under etcd's `benchmark put --clients 64 --conns 8`
# (put-64c), with a confidence interval for Y's throughput relative to X's.
#
# Each run starts a fresh server with `setsid` (as bench-vs-etcd does), warms it with WARMUP puts
# (default 3,000), then measures TOTAL puts (default 30,000) and the server's CPU time. The order inside a pair
# alternates, so neither build always runs first. At the end it prints the geometric mean of the
# per-pair ratios Y/X with a 95 % confidence interval (mean of the log ratios +- 2 standard errors),
# and each build's mean server CPU per put.
#
# Why: one bench-vs-etcd run of 5 repetitions cannot tell a 5 % change from noise on these shared
# two cores (docs/performance.md, "session 8"); 16 pairs take about three minutes and give an
# interval of about +-5 %. Use it to decide whether a change is worth a harness run, not instead of
# the harness: the harness against etcd is the ruler the targets are measured with.
#
# Usage: scripts/ab-put.sh X Y   (X and Y: server binaries, or wrapper scripts that exec one and
#        pass their arguments on; both must take mini-etcd's flags)
#        PAIRS=16 TOTAL=30000 WARMUP=3000 STORAGE=tmpfs|disk PORT=23779 BM=<etcd benchmark tool>
#        (WARMUP=0 measures from the first put, as bench-vs-etcd does)
set -u
[ $# -eq 2 ] || { echo "usage: scripts/ab-put.sh X Y" >&2; exit 2; }
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
PAIRS=${PAIRS:-16}; TOTAL=${TOTAL:-30000}; WARMUP=${WARMUP:-3000}; STORAGE=${STORAGE:-tmpfs}; PORT=${PORT:-23779}
[ -x "$BM" ] || { echo "ab-put: no benchmark tool at $BM (run ../shared/tools/build-etcd-benchmark)" >&2; exit 2; }
command -v etcdctl >/dev/null || { echo "ab-put: etcdctl is not installed (apt-get install etcd-client)" >&2; exit 2; }
for b in "$1" "$2"; do [ -x "$b" ] || { echo "ab-put: $b is not executable" >&2; exit 2; }; done
if [ "$STORAGE" = disk ]; then D=/var/tmp/ab-put-$$; else D=/dev/shm/ab-put-$$; fi
OUT=$(mktemp)
trap 'rm -rf "$D" "$OUT"' EXIT

# One run of build $1: prints "puts/s server-µs-per-put".
one() {
  local bin=$1 pid c0 c1 out rps
  rm -rf "$D"; mkdir -p "$D"
  if ss -ltn | grep -q ":$PORT "; then echo "ab-put: port $PORT is busy" >&2; exit 2; fi
  setsid "$bin" --data-dir "$D" --listen-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --listen-rest-url "http://127.0.0.1:$((PORT + 2))" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --command-timeout=1s --endpoints "127.0.0.1:$PORT" put ab-put ready \
      >/dev/null 2>&1 && break
    sleep 0.1
  done
  local load=("$BM" --endpoints "127.0.0.1:$PORT" --conns 8 --clients 64 put --key-size 32
    --val-size 256 --key-space-size 100000)
  [ "$WARMUP" -gt 0 ] && timeout 120 "${load[@]}" --total "$WARMUP" >/dev/null 2>&1
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(timeout 300 "${load[@]}" --total "$TOTAL" 2>&1)
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; sleep 0.3; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  [ -n "$rps" ] || { echo "ab-put: no result from $bin" >&2; exit 1; }
  # /proc/PID/stat counts clock ticks (100 per second): ticks * 10,000 µs / puts.
  echo "$rps $(awk -v a="$c0" -v b="$c1" -v t="$TOTAL" 'BEGIN {printf "%.1f", (b - a) * 10000 / t}')"
}

for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then x=$(one "$1") || exit 1; y=$(one "$2") || exit 1
  else y=$(one "$2") || exit 1; x=$(one "$1") || exit 1; fi
  echo "$x $y" >>"$OUT"
  echo "$x $y" | awk -v i="$i" '{printf "pair %2d  X %6d puts/s %5.1f us  Y %6d puts/s %5.1f us  Y/X %.3f\n", i, $1, $2, $3, $4, $3 / $1}'
done

python3 - "$OUT" <<'EOF'
import math, statistics, sys
rows = [[float(v) for v in line.split()] for line in open(sys.argv[1])]
logs = [math.log(r[2] / r[0]) for r in rows]
mean = statistics.mean(logs)
se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("inf")
lo, hi = math.exp(mean - 2 * se), math.exp(mean + 2 * se)
cx = statistics.mean(r[1] for r in rows)
cy = statistics.mean(r[3] for r in rows)
print(f"{len(rows)} pairs: Y/X puts/s {math.exp(mean):.3f} (95 % CI {lo:.3f} .. {hi:.3f}); "
      f"server CPU per put X {cx:.1f} us, Y {cy:.1f} us")
EOF
