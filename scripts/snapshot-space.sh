#!/usr/bin/env bash
# Disk space and time of a client's Snapshot: loads KEYS keys (default 200000) of VALUE bytes
# (default 1024) into one mini-etcd member with `mini-etcd bench put`, restarts it, then runs
# `etcdctl snapshot save` while sampling `du -sb` of the member directory every 20 ms. Prints the
# member directory's size before the save, its peak during it, the difference (the extra space the
# Snapshot took), the saved file's size and the save's wall time. The loaded data directory is kept
# in $DATA (default /var/tmp/snapshot-space/data) and reused when LOAD=0, so that two builds can be
# measured on the same data: `B=old/mini-etcd scripts/snapshot-space.sh; LOAD=0 B=new/... ...`.
# Ports 2379x/2380x on 127.0.0.1.
# Usage: cargo build --release && scripts/snapshot-space.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-$ROOT/target/release/mini-etcd}
KEYS=${KEYS:-200000}; VALUE=${VALUE:-1024}; LOAD=${LOAD:-1}
W=${W:-/var/tmp/snapshot-space}; DATA=${DATA:-$W/data}; RUN=$W/run
EP=127.0.0.1:23790
start() { # data dir -> pid in $PID, waits for health (bounded)
  "$B" --data-dir "$1" --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --listen-rest-url http://127.0.0.1:23810 >"$W/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    ETCDCTL_API=3 etcdctl --endpoints="http://$EP" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "snapshot-space: server not healthy; see $W/server.log" >&2; exit 1
}
mkdir -p "$W"
if [ "$LOAD" = 1 ]; then
  rm -rf "$DATA"; start "$DATA"
  "$B" bench put --endpoints "http://$EP" --total "$KEYS" --key-size 16 --val-size "$VALUE" \
    --key-space-size "$KEYS" --sequential-keys --clients 32 --conns 4 --no-progress 2>&1 | grep -E "Total|OK"
  kill "$PID"; wait "$PID"
fi
rm -rf "$RUN"; cp -a "$DATA" "$RUN"; start "$RUN"
BASE=$(du -sb "$RUN/member" | cut -f1)
rm -f "$W/stop" "$W/out.db"
( PEAK=0
  while [ ! -f "$W/stop" ]; do
    S=$(du -sb "$RUN/member" 2>/dev/null | cut -f1); [ "${S:-0}" -gt "$PEAK" ] && PEAK=$S; sleep 0.02
  done; echo "$PEAK" >"$W/peak" ) &
SAMPLER=$!
T0=$(date +%s.%N)
ETCDCTL_API=3 etcdctl --endpoints="http://$EP" --command-timeout=600s snapshot save "$W/out.db" >/dev/null
T1=$(date +%s.%N)
touch "$W/stop"; wait "$SAMPLER"; PEAK=$(cat "$W/peak")
kill "$PID"; wait "$PID"
echo "member dir $BASE B before, peak $PEAK B during the save: $((PEAK - BASE)) B extra;" \
  "snapshot file $(stat -c %s "$W/out.db") B; save took $(echo "$T1 - $T0" | bc) s"
rm -rf "$RUN" "$W/out.db" "$W/stop"
