#!/usr/bin/env bash
# Failover time of a 3-member cluster, mini-etcd (B) against etcd (A), with the same timing flags:
# the time from `kill -9` of the leader to the first put acknowledged through a surviving member.
#
# Each repetition starts a fresh 3-member cluster of each kind on 127.0.0.1 (data under /dev/shm),
# waits until a put succeeds through every member, finds the leader with `etcdctl endpoint status`,
# kills it with SIGKILL and then runs `etcdctl put` against the two survivors (300 ms command
# timeout, no pause between attempts) until one is acknowledged. The kinds alternate inside each
# repetition. Printed: every time, then each kind's median and B/A.
#
# With WHAT=startup it measures instead the time from starting a fresh cluster's three members to
# a put acknowledged through each of them (the first election, mostly). B_FLAGS adds flags to B's
# members, e.g. B_FLAGS=--initial-election-tick-advance=false.
#
# Usage: scripts/failover.sh B_BINARY   REPS=5 HEARTBEAT=100 ELECTION=1000 PORT=24379 A=/usr/bin/etcd
#                                       WHAT=failover|startup B_FLAGS=
# Needs etcd and etcdctl (Debian's etcd-server, etcd-client) and python3. Resolution: one etcdctl
# start (about 20-40 ms) per attempt.
set -u
[ $# -eq 1 ] || { echo "usage: scripts/failover.sh B_BINARY" >&2; exit 2; }
B=$1; A=${A:-/usr/bin/etcd}
REPS=${REPS:-5}; HEARTBEAT=${HEARTBEAT:-100}; ELECTION=${ELECTION:-1000}; PORT=${PORT:-24379}
WHAT=${WHAT:-failover}; read -r -a B_FLAGS <<<"${B_FLAGS:-}"
case $WHAT in failover|startup) ;; *) echo "failover: WHAT is failover or startup" >&2; exit 2;; esac
for x in "$A" "$B"; do [ -x "$x" ] || { echo "failover: $x is not executable" >&2; exit 2; }; done
command -v etcdctl >/dev/null || { echo "failover: etcdctl is not installed" >&2; exit 2; }
export ETCDCTL_API=3
D=/dev/shm/failover-$$
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; rm -rf "$D"; }
trap cleanup EXIT

now() { date +%s.%N; }

# start KIND: starts 3 members, fills PIDS and EPS (client endpoints), and STARTUP with the seconds
# from the first spawn to a put acknowledged through every member.
start() {
  local kind=$1 ic="" i t0
  PIDS=(); EPS=()
  rm -rf "$D"; mkdir -p "$D"
  t0=$(now)
  for i in 0 1 2; do ic="$ic${ic:+,}m$i=http://127.0.0.1:$((PORT + 10 * i + 1))"; done
  for i in 0 1 2; do
    local c=$((PORT + 10 * i)) p=$((PORT + 10 * i + 1)) r=$((PORT + 10 * i + 2))
    local args=(--name "m$i" --data-dir "$D/m$i" --listen-client-urls "http://127.0.0.1:$c"
      --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p"
      --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "$ic"
      --initial-cluster-token failover --initial-cluster-state new
      --heartbeat-interval "$HEARTBEAT" --election-timeout "$ELECTION")
    if [ "$kind" = B ]; then
      setsid "$B" "${args[@]}" --listen-rest-url "http://127.0.0.1:$r" "${B_FLAGS[@]}" >"$D/m$i.log" 2>&1 &
    else
      setsid "$A" "${args[@]}" >"$D/m$i.log" 2>&1 &
    fi
    PIDS+=($!); EPS+=("127.0.0.1:$c")
    disown $!  # no job-control notice when it is killed
  done
  local deadline=$((SECONDS + 30)) e
  for e in "${EPS[@]}"; do
    # A put sent before the port listens would wait out the client's reconnect backoff (1 s).
    until (exec 3<>"/dev/tcp/${e%:*}/${e##*:}") 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || { echo "failover: $kind did not listen" >&2; exit 1; }
      sleep 0.01
    done
    until etcdctl --endpoints="$e" --command-timeout=1s put ready 1 >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { echo "failover: $kind did not start" >&2; tail "$D"/m*.log >&2; exit 1; }
      sleep 0.05
    done
  done
  STARTUP=$(python3 -c "print(f'{$(now) - $t0:.3f}')")
}

# measure: prints the failover time in seconds.
measure() {
  local lead i id leader_idx=-1
  lead=$(etcdctl --endpoints="${EPS[0]}" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["leader"])')
  for i in 0 1 2; do
    id=$(etcdctl --endpoints="${EPS[$i]}" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["member_id"])')
    [ "$id" = "$lead" ] && leader_idx=$i
  done
  [ $leader_idx -ge 0 ] || { echo "failover: no leader found" >&2; exit 1; }
  local rest=()
  for i in 0 1 2; do [ $i -ne $leader_idx ] && rest+=("${EPS[$i]}"); done
  local t0 t1 n=0
  kill -9 "${PIDS[$leader_idx]}"
  t0=$(now)
  until etcdctl --endpoints="$(IFS=,; echo "${rest[*]}")" --dial-timeout=300ms --command-timeout=300ms put after-kill 1 >/dev/null 2>&1; do
    n=$((n + 1)); [ $n -lt 600 ] || { echo "failover: no write within 600 attempts" >&2; exit 1; }
  done
  t1=$(now)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

stop() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; sleep 0.5; PIDS=(); }

declare -a TA TB
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for k in $order; do
    start "$k"
    if [ "$WHAT" = startup ]; then t=$STARTUP; else t=$(measure); fi
    stop
    if [ "$k" = A ]; then TA+=("$t"); else TB+=("$t"); fi
    echo "rep $rep $k: ${t}s"
  done
done
python3 - "${TA[*]}" "${TB[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"A (etcd) median {ma:.3f}s  {a}")
print(f"B (mini-etcd) median {mb:.3f}s  {b}")
print(f"B/A {mb / ma:.2f}")
PY
