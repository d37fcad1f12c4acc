#!/usr/bin/env bash
# Whether whole-key-space reads stall everything else (issue 17, "one huge Range"): N keys (default
# 1,000,000) of VAL bytes (default 1 KiB), then a put load (etcd's `benchmark put`, PUTS puts from 16
# clients) with /health probed every 20 ms, first on the idle store, then while four clients loop
# `etcdctl get "" --prefix`. Prints put p99 and /health p99 idle and loaded, their ratios, and the
# server's peak RSS, for mini-etcd and, when /usr/bin/etcd is there, for etcd on the same data.
# tmpfs; ports 236xx on 127.0.0.1; every loop is bounded.
# Usage: cargo build --release && scripts/huge-range-stall.sh   (needs etcdctl and
# ../shared/tools/build-etcd-benchmark's tool at $BM, default ~/.cache/etcd-bench/bin/benchmark)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
BM=${BM:-$HOME/.cache/etcd-bench/bin/benchmark}
N=${N:-1000000}; VAL=${VAL:-1024}; PUTS=${PUTS:-20000}
WHO=${WHO:-"mini-etcd etcd"}
[ -x "$BM" ] || { echo "huge-range: no benchmark tool at $BM (run ../shared/tools/build-etcd-benchmark)" >&2; exit 2; }
command -v etcdctl >/dev/null || { echo "huge-range: etcdctl missing (apt-get install etcd-client)" >&2; exit 2; }
D=/dev/shm/huge-range
EP=127.0.0.1:23679
OUT=$(mktemp -d)

p99() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"; exit} i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f\n", a[i] * 1000}'; }

# Probes /health every 20 ms until $1 exists (at most 20 minutes); one latency in seconds per line.
probe() {
  local stop=$1 end=$((SECONDS + 1200))
  while [ ! -e "$stop" ] && [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -m 30 -w '%{time_total}\n' "http://$EP/health"
    sleep 0.02
  done
}

# Put load with /health probing; prints "put_p99_ms health_p99_ms".
measure() {
  local tag=$1
  rm -f "$OUT/stop"
  probe "$OUT/stop" >"$OUT/health-$tag" &
  local prober=$!
  "$BM" --endpoints "$EP" --conns 4 --clients 16 put --key-size 32 --val-size 256 --total "$PUTS" \
    --key-space-size 100000 >"$OUT/put-$tag" 2>&1
  touch "$OUT/stop"; wait "$prober"
  local put
  put=$(awk '/99% in/{print $3 * 1000}' "$OUT/put-$tag")
  echo "${put:-nan} $(p99 <"$OUT/health-$tag")"
}

run() {
  local who=$1 pid
  rm -rf "$D"; mkdir -p "$D"
  if [ "$who" = mini-etcd ]; then
    setsid "$B" --data-dir "$D" --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
      --listen-peer-urls http://127.0.0.1:23680 --initial-advertise-peer-urls http://127.0.0.1:23680 \
      --listen-rest-url http://127.0.0.1:23681 --quota-backend-bytes $((8 << 30)) >"$OUT/$who.log" 2>&1 &
  else
    setsid /usr/bin/etcd --name a --data-dir "$D" --listen-client-urls "http://$EP" \
      --advertise-client-urls "http://$EP" --listen-peer-urls http://127.0.0.1:23680 \
      --initial-advertise-peer-urls http://127.0.0.1:23680 --initial-cluster a=http://127.0.0.1:23680 \
      --quota-backend-bytes $((8 << 30)) >"$OUT/$who.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 100); do curl -sf "http://$EP/health" >/dev/null 2>&1 && break; sleep 0.1; done
  local t0=$SECONDS
  "$BM" --endpoints "$EP" --conns 8 --clients 64 put --key-size 32 --val-size "$VAL" \
    --total "$N" --sequential-keys --key-space-size "$N" >/dev/null 2>&1
  local loaded=$((SECONDS - t0))
  local idle busy
  idle=$(measure idle-$who)
  # Four clients listing everything, each loop bounded to 20 minutes.
  rm -f "$OUT/stop-lists"
  local listers=()
  for i in 1 2 3 4; do
    ( end=$((SECONDS + 1200)); n=0
      while [ ! -e "$OUT/stop-lists" ] && [ $SECONDS -lt $end ]; do
        etcdctl --endpoints "$EP" --command-timeout 300s get "" --prefix >/dev/null 2>>"$OUT/lists-$who.err" && n=$((n + 1))
      done; echo "$n" >"$OUT/lists-$who-$i" ) &
    listers+=($!)
  done
  sleep 5 # the lists are under way
  busy=$(measure busy-$who)
  touch "$OUT/stop-lists"; wait "${listers[@]}"
  local lists=0 f
  for f in "$OUT"/lists-$who-*; do lists=$((lists + $(cat "$f"))); done
  local rss
  rss=$(awk '/VmHWM/{printf "%d", $2 / 1024}' /proc/$pid/status)
  kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -rf "$D"
  read -r ip ih <<<"$idle"; read -r bp bh <<<"$busy"
  echo "$who: $N keys x $VAL B loaded in ${loaded}s; put p99 idle ${ip} ms, listing ${bp} ms (x$(echo "scale=2; $bp / $ip" | bc)); /health p99 idle ${ih} ms, listing ${bh} ms (x$(echo "scale=2; $bh / $ih" | bc)); full lists done: $lists; peak RSS ${rss} MiB; list errors: $(sort -u "$OUT/lists-$who.err" 2>/dev/null | head -3 | tr '\n' ' ')"
}
for who in $WHO; do
  [ "$who" = etcd ] && [ ! -x /usr/bin/etcd ] && continue
  run "$who"
done
rm -rf "$OUT"
