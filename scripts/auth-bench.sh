#!/usr/bin/env bash
# Put and range with authentication on, and put over TLS, mini-etcd against etcd 3.4 in the same run
# (issue 15).
#
# Both servers run on tmpfs, one at a time, each with auth enabled and a non-root user whose role may
# read and write every key (so every request is permission-checked, as for an application user).
# etcd's own `benchmark` tool drives them with `--user` (each client authenticates once, then sends
# its token with every request). The same workloads run with auth off for the baseline, and put-64c
# once more with both servers on `https://` client URLs (a certificate made here with openssl; the
# load tool verifies it with `--cacert`). Prints requests/s medians over REPS rounds, servers
# alternating within each round, and the B/A ratios.
#
#   cargo build --release && scripts/auth-bench.sh            # REPS=3 TOTAL=100000 by default
#
# Needs /usr/bin/etcd (etcd-server) and etcd's benchmark tool (../shared/tools/build-etcd-benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
TOTAL=${TOTAL:-100000}
BENCH=${BENCH:-$HOME/.cache/etcd-bench/bin/benchmark}
MINI=${MINI:-$PWD/target/release/mini-etcd}
ETCD=${ETCD:-/usr/bin/etcd}
for b in "$BENCH" "$MINI" "$ETCD"; do
  [ -x "$b" ] || { echo "auth-bench: $b is missing" >&2; exit 1; }
done
export ETCDCTL_API=3

work=$(mktemp -d /dev/shm/auth-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# A CA and a server certificate for 127.0.0.1, for the TLS rows.
certs="$work/certs"
mkdir -p "$certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout "$certs/ca-key.pem" \
  -out "$certs/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$certs/key.pem" \
  -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$certs/ext"
openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$certs/ext" -out "$certs/cert.pem" 2>/dev/null

# start SERVER MODE: starts etcd or mini-etcd on fresh ports and data; MODE is off (plain), on (auth
# enabled, a user with a read-write role) or tls (https client URL, no auth).
start() {
  local server=$1 auth=$2 port peer rest scheme=http
  port=$(free_port); peer=$(free_port); rest=$(free_port)
  rm -rf "$work/data"
  tls=()
  if [ "$auth" = tls ]; then
    scheme=https
    tls=(--cacert "$certs/ca.pem")
  fi
  local common=(--data-dir "$work/data" --listen-client-urls "$scheme://127.0.0.1:$port"
    --advertise-client-urls "$scheme://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer"
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer")
  [ "$auth" = tls ] && common+=(--cert-file "$certs/cert.pem" --key-file "$certs/key.pem")
  if [ "$server" = etcd ]; then
    "$ETCD" "${common[@]}" >"$work/log" 2>&1 &
  else
    "$MINI" "${common[@]}" --listen-rest-url "http://127.0.0.1:$rest" --log-level warn >"$work/log" 2>&1 &
  fi
  pid=$!
  ep="$scheme://127.0.0.1:$port"
  for _ in $(seq 100); do
    etcdctl --endpoints="$ep" "${tls[@]}" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  if [ "$auth" = on ]; then
    local c="etcdctl --endpoints=$ep"
    $c user add root:rootpw >/dev/null
    $c role add root >/dev/null
    $c user grant-role root root >/dev/null
    $c user add bench:benchpw >/dev/null
    $c role add app >/dev/null
    $c role grant-permission app readwrite "" --from-key >/dev/null
    $c user grant-role bench app >/dev/null
    $c auth enable >/dev/null
    user=(--user bench:benchpw)
  else
    user=()
  fi
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

rate() { awk '/Requests\/sec/ {print $2}'; }

results="$work/results"
: >"$results"
for rep in $(seq "$REPS"); do
  for server in etcd mini; do
    for auth in off on tls; do
      start "$server" "$auth"
      put=$("$BENCH" --endpoints="$ep" "${user[@]}" "${tls[@]}" --conns 64 --clients 64 put \
        --total "$TOTAL" --key-size 8 --val-size 256 --key-space-size 10000 2>/dev/null | rate)
      echo "$server $auth put-64c $put" >>"$results"
      if [ "$auth" != tls ]; then
        range=$("$BENCH" --endpoints="$ep" "${user[@]}" --conns 64 --clients 64 range k \
          --total "$TOTAL" --consistency l 2>/dev/null | rate)
        echo "$server $auth range-lin-64c $range" >>"$results"
      fi
      echo "rep $rep $server mode=$auth: put $put/s range ${range:-}/s" >&2
      range=""
      stop
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    server, auth, work, rate = line.split()
    rows.setdefault((work, auth), {}).setdefault(server, []).append(float(rate))
print("| workload | mode | etcd 3.4 req/s (A) | mini-etcd req/s (B) | B/A |")
print("| --- | --- | ---: | ---: | ---: |")
for (work, auth), by in sorted(rows.items()):
    a, b = statistics.median(by["etcd"]), statistics.median(by["mini"])
    print(f"| {work} | {auth} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
PY
