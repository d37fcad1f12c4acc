#!/usr/bin/env bash
# Two server builds, X and Y, in alternated pairs under etcd's `benchmark put --clients 64 --conns 8`
# (put-64c), with a confidence interval for Y's throughput relative to X's.
#
# Each run starts a fresh server with `setsid` (as bench-vs-etcd does), warms it with WARMUP puts
# (default 3,000), then measures TOTAL puts (default 30,000) and the server's CPU time. The order
# inside a pair alternates, so neither build always runs first. At the end it prints the geometric
# mean of the per-pair ratios Y/X with a 95 % confidence interval (Student's t on the log ratios),
# and each build's mean server CPU per put.
#
# Why: one bench-vs-etcd run of 5 repetitions cannot tell a 5 % change from noise on these shared
# two cores (docs/performance-archive.md, "put-64c, session 8"). 16 pairs take about three minutes and
# give an interval of ±3 to ±9 %, depending on how steady the two builds are. Use it to decide
# whether a change is worth harness runs, not instead of them: the harness against etcd is the ruler
# the targets are measured with.
#
# Usage: scripts/ab-put.sh X Y   (X and Y: server binaries, or wrapper scripts that exec one and
#        pass their arguments on; both must take mini-etcd's flags)
#        PAIRS=16 (even) TOTAL=30000 WARMUP=3000 STORAGE=tmpfs|disk PORT=23779 BM=<etcd's tool>
#        MEMBERS=1|3 (3: a fresh 3-member cluster per run, the load spread over the three
#        members as bench-vs-etcd --members 3 does, CPU summed over the members)
#        (WARMUP=0 measures from the first put, as bench-vs-etcd does)
#        THREADS=1 also prints, after each run, the server CPU per put and the context switches
#        per put of each kind of thread (tokio-rt-worker, raft, ...), leader and followers apart
#        (from /proc/PID/task/*/stat and status; docs/performance.md, "Worker threads")
# Needs etcd's `benchmark` tool (../shared/tools/build-etcd-benchmark), etcdctl, ss and python3.
# Uses ports PORT..PORT+2 (with MEMBERS=3, PORT..PORT+22) on 127.0.0.1; data under /dev/shm or /var/tmp, removed at the end.
set -u
[ $# -eq 2 ] || { echo "usage: scripts/ab-put.sh X Y" >&2; exit 2; }
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
PAIRS=${PAIRS:-16}; TOTAL=${TOTAL:-30000}; WARMUP=${WARMUP:-3000}; PORT=${PORT:-23779}
STORAGE=${STORAGE:-tmpfs}; MEMBERS=${MEMBERS:-1}
case "$MEMBERS" in 1|3) ;; *) echo "ab-put: MEMBERS must be 1 or 3" >&2; exit 2 ;; esac
for v in PAIRS TOTAL WARMUP PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "ab-put: $v must be a number" >&2; exit 2; }
done
{ [ "$PAIRS" -ge 2 ] && [ $((PAIRS % 2)) = 0 ]; } || { echo "ab-put: PAIRS must be even and >= 2" >&2; exit 2; }
[ "$TOTAL" -gt 0 ] || { echo "ab-put: TOTAL must be > 0" >&2; exit 2; }
[ -x "$BM" ] || { echo "ab-put: no benchmark tool at $BM (run ../shared/tools/build-etcd-benchmark)" >&2; exit 2; }
for c in etcdctl ss python3; do
  command -v "$c" >/dev/null || { echo "ab-put: $c is not installed" >&2; exit 2; }
done
for b in "$1" "$2"; do [ -x "$b" ] || { echo "ab-put: $b is not executable" >&2; exit 2; }; done
case "$STORAGE" in
  tmpfs) D=/dev/shm/ab-put-$$ ;;
  disk) D=/var/tmp/ab-put-$$ ;;
  *) echo "ab-put: STORAGE must be tmpfs or disk" >&2; exit 2 ;;
esac
OUT=$(mktemp); LOG=$(mktemp)
TCK=$(getconf CLK_TCK)
trap 'rm -rf "$D" "$OUT" "$LOG" "$LOG".*' EXIT
trap 'exit 130' INT TERM

# utime + stime of process $1 in clock ticks (the name in /proc/PID/stat may hold spaces).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat") || return 1
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} ))
}

# One line per thread of every member in SRV: "role name ticks switches" (role L for the
# leader, F for a follower, - for a member alone; ticks: utime + stime).
threads_now() {
  local i t n c sw
  for i in "${!SRV[@]}"; do
    for t in /proc/"${SRV[$i]}"/task/*; do
      n=$(cat "$t/comm" 2>/dev/null) && c=$(cpu_ticks "${t#/proc/}") || continue
      sw=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {v += $2} END {print v + 0}' "$t/status" 2>/dev/null)
      echo "${ROLE[$i]} ${n// /_} $c ${sw:-0}"
    done
  done
}

# The CPU ticks of every member in SRV, summed.
cpu_all() {
  local t=0 p v
  for p in "${SRV[@]}"; do v=$(cpu_ticks "$p") || return 1; t=$((t + v)); done
  echo "$t"
}

# One run of build $1, always in a subshell of its own (`$(one X)`): prints
# "puts/s server-µs-per-put", or fails with a message.
one() {
  local bin=$1 c0 c1 out rps p i ic="" eps=""
  rm -rf "$D"; mkdir -p "$D"
  for i in $(seq 0 $((MEMBERS - 1))); do
    for p in $((PORT + 10 * i)) $((PORT + 10 * i + 1)) $((PORT + 10 * i + 2)); do
      if ss -ltn | grep -q ":$p "; then echo "ab-put: port $p is busy" >&2; return 1; fi
    done
    ic="$ic${ic:+,}m$i=http://127.0.0.1:$((PORT + 10 * i + 1))"
    eps="$eps${eps:+,}127.0.0.1:$((PORT + 10 * i))"
  done
  SRV=()  # global on purpose: the EXIT trap below runs after this function returns
  trap 'kill -9 "${SRV[@]}" 2>/dev/null' EXIT
  trap 'exit 130' INT TERM
  for i in $(seq 0 $((MEMBERS - 1))); do
    local c=$((PORT + 10 * i)) args=()
    if [ "$MEMBERS" -gt 1 ]; then
      args=(--name "m$i" --data-dir "$D/m$i" --advertise-client-urls "http://127.0.0.1:$c"
        --initial-advertise-peer-urls "http://127.0.0.1:$((c + 1))" --initial-cluster "$ic")
    else
      args=(--data-dir "$D")
    fi
    setsid "$bin" "${args[@]}" --listen-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$((c + 1))" \
      --listen-rest-url "http://127.0.0.1:$((c + 2))" >"$LOG.$i" 2>&1 &
    SRV+=($!)
  done
  local deadline=$((SECONDS + 30)) ready=false
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "${SRV[@]}" 2>/dev/null; do
    if ETCDCTL_API=3 etcdctl --dial-timeout=1s --command-timeout=1s --endpoints "$eps" \
      put ab-put ready >/dev/null 2>&1; then ready=true; break; fi
    sleep 0.1
  done
  if ! $ready; then
    echo "ab-put: $bin exited or did not serve within 30 s; its output:" >&2; tail -5 "$LOG".* >&2; return 1
  fi
  local load=("$BM" --endpoints "$eps" --conns 8 --clients 64 put --key-size 32
    --val-size 256 --key-space-size 100000)
  if [ "$WARMUP" -gt 0 ]; then
    timeout --kill-after=5 120 "${load[@]}" --total "$WARMUP" >/dev/null 2>&1 \
      || { echo "ab-put: the warm-up against $bin failed" >&2; return 1; }
  fi
  if [ "${THREADS:-0}" = 1 ]; then
    ROLE=()
    for i in $(seq 0 $((MEMBERS - 1))); do
      if [ "$MEMBERS" = 1 ]; then ROLE+=(-); continue; fi
      if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((PORT + 10 * i))" endpoint status 2>/dev/null \
        | awk -F', ' '{exit $5 != "true"}'; then ROLE+=(L); else ROLE+=(F); fi
    done
    threads_now >"$LOG.t0"
  fi
  c0=$(cpu_all) || { echo "ab-put: $bin died" >&2; return 1; }
  out=$(timeout --kill-after=5 300 "${load[@]}" --total "$TOTAL" 2>&1)
  c1=$(cpu_all) || { echo "ab-put: $bin died during the run" >&2; return 1; }
  if [ "${THREADS:-0}" = 1 ]; then
    threads_now >"$LOG.t1"
    echo "  threads of $bin (us of CPU per put, context switches per put; F: both followers):" >&2
    python3 - "$LOG.t0" "$LOG.t1" "$TOTAL" "$TCK" >&2 <<'PY'
import collections, sys
def load(path):
    d = collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        role, name, ticks, sw = line.split()
        v = d[(role, name)]
        v[0] += int(ticks); v[1] += int(sw)
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
total, hz = int(sys.argv[3]), int(sys.argv[4])
for key in sorted(b):
    ticks, sw = (b[key][i] - a[key][i] for i in range(2))
    if ticks > 0 or sw > 0:
        print(f"    {key[0]} {key[1]:<16} {ticks / hz * 1e6 / total:6.1f} us  {sw / total:.3f} switches")
PY
  fi
  kill "${SRV[@]}"; sleep 0.3; kill -9 "${SRV[@]}" 2>/dev/null; wait "${SRV[@]}" 2>/dev/null
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  [ -n "$rps" ] || { echo "ab-put: no result from $bin" >&2; return 1; }
  echo "$rps $(awk -v a="$c0" -v b="$c1" -v t="$TOTAL" -v hz="$TCK" \
    'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / t}')"
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
n = len(logs)
# Two-sided 95 % quantiles of Student's t for n - 1 degrees of freedom (1.96 beyond the table).
T = {1: 12.71, 3: 3.18, 5: 2.57, 7: 2.36, 9: 2.26, 11: 2.20, 13: 2.16, 15: 2.13, 17: 2.11,
     19: 2.09, 21: 2.08, 23: 2.07, 25: 2.06, 27: 2.05, 29: 2.05, 31: 2.04}
t = T.get(n - 1, 2.04 if n <= 64 else 2.0)  # beyond the table: a little wider than exact
mean = statistics.mean(logs)
se = statistics.stdev(logs) / math.sqrt(n)
lo, hi = math.exp(mean - t * se), math.exp(mean + t * se)
cx = statistics.mean(r[1] for r in rows)
cy = statistics.mean(r[3] for r in rows)
print(f"{n} pairs: Y/X puts/s {math.exp(mean):.3f} (95 % CI {lo:.3f} .. {hi:.3f}); "
      f"server CPU per put X {cx:.1f} us, Y {cy:.1f} us")
EOF
