#!/usr/bin/env bash
# 1,000,000 keys of 256 bytes: resident memory and restart-to-serving time, mini-etcd vs etcd.
# Usage: cargo build --release && scripts/mem-1m.sh   (N=200000 for a shorter run; WHO=mini for one side)
# Needs /usr/bin/etcd (apt-get install etcd-server) and bc. Data under /var/tmp; ports 124xx on 127.0.0.1.
set -u
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release/mini-etcd}

N=${N:-1000000}
rm -rf /var/tmp/m1m /var/tmp/e1m; mkdir -p /var/tmp/m1m /var/tmp/e1m
start_mini() { $B --data-dir /var/tmp/m1m/d --listen-rest-url http://127.0.0.1:18091 --listen-client-urls http://127.0.0.1:12401 >>/var/tmp/m1m/log 2>&1 & echo $!; }
start_etcd() { /usr/bin/etcd --name x --data-dir /var/tmp/e1m/d --listen-client-urls http://127.0.0.1:12411 --advertise-client-urls http://127.0.0.1:12411 --listen-peer-urls http://127.0.0.1:12412 --initial-advertise-peer-urls http://127.0.0.1:12412 --initial-cluster x=http://127.0.0.1:12412 >>/var/tmp/e1m/log 2>&1 & echo $!; }
wait_health() { local url=$1; local t0=$(date +%s.%N); for i in $(seq 1 6000); do curl -sf $url/health >/dev/null 2>&1 && break; sleep 0.01; done; echo "$(date +%s.%N) - $t0" | bc; }
rss() { grep -E "VmRSS|VmHWM" /proc/$1/status | tr '\n' ' '; }
for who in ${WHO:-mini etcd}; do
  if [ $who = mini ]; then pid=$(start_mini); url=http://127.0.0.1:12401; else pid=$(start_etcd); url=http://127.0.0.1:12411; fi
  wait_health $url >/dev/null
  echo "== $who: fill $N keys"
  $B bench put --endpoints $url --clients 64 --conns 8 --total $N --key-size 32 --val-size 256 --sequential-keys --key-space-size $N --no-progress 2>/dev/null | grep -E "Requests/sec|Latency"
  sleep 2
  echo "$who after fill: $(rss $pid)"
  kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done
  if [ $who = mini ]; then pid=$(start_mini); else pid=$(start_etcd); fi
  echo "$who restart to serving: $(wait_health $url) s"
  # one read of every key range touched? just a count
  sleep 1
  echo "$who after restart: $(rss $pid)"
  du -sh /var/tmp/${who:0:1}1m/d
  kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done
done
