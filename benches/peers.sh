#!/usr/bin/env bash
# Capstan's ingress against nginx and HAProxy (Debian packages), side by side in one run: the figure
# that counts is CPU per request on the proxy's own core, as a ratio to the best peer in the same
# round (requests per second on a 2-core machine mostly measure the load generator).
#
# Pinning (as ../shared/bench): CPU 0 runs the load generator and the backend (nginx answering
# "ok\n"); CPU 1 runs the proxy under test alone, one worker each (Capstan BENCH_THREADS=1, nginx
# worker_processes 1, HAProxy nbthread 1). Every proxy sends upstream over kept-alive HTTP/1.1
# connections with X-Forwarded-For, and routes Host bench.local.
#
# Points, each DURATION seconds, ROUNDS interleaved rounds (capstan nginx haproxy, again …):
#   http     HTTP/1.1 keep-alive, 64 connections, wrk closed loop     CPU µs/request, RSS MiB
#   https    HTTPS keep-alive (TLS 1.3, ECDSA P-256), 64 conns, oha   CPU µs/request
#   newconn  one new TLS connection per request (full handshake, no
#            resumption: peers with tickets and session cache off,
#            Capstan with --tls-session-tickets 0), 16 at a time    CPU µs/connection
#   syscalls 20,000 HTTP/1.1 requests, perf stat on the proxy        syscalls/request
# Capstan runs twice for TLS: `capstan` with its defaults (X25519MLKEM768 first), and
# `capstan-x25519` with --tls-key-exchange X25519,secp256r1, the groups nginx and HAProxy from
# Debian 12 (OpenSSL 3.0) negotiate, so the handshake does the same cryptography as theirs.
#
# Usage: benches/peers.sh [DURATION] [ROUNDS]      (defaults 6 and 3; root for perf)
# Prints one line per point and round, then the medians and the ratio to the best peer.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-6}
ROUNDS=${2:-3}
LOAD_CPU=0
SUT_CPU=1

# shellcheck source=benches/common.sh
source benches/common.sh
bench_setup nginx=nginx-light haproxy=haproxy wrk=wrk perf=linux-perf openssl=openssl

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.local" -addext "subjectAltName=DNS:bench.local" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/combined.pem"
BACKEND=$(free_port)

cat > "$work/backend.conf" <<CONF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.err crit;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$BACKEND backlog=4096; location / { return 200 "ok\n"; } } }
CONF
taskset -c $LOAD_CPU nginx -c "$work/backend.conf" -g 'daemon off;' & pids+=($!)

declare -A HTTP TLS PID
# nginx: ingress-nginx's proxy settings for one route, minus Lua; TLS without resumption.
HTTP[nginx]=$(free_port); TLS[nginx]=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err crit;
events { worker_connections 16384; }
http {
  access_log off; keepalive_requests 10000000;
  ssl_session_cache off; ssl_session_tickets off; ssl_protocols TLSv1.2 TLSv1.3;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 320; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:${HTTP[nginx]} backlog=4096;
    listen 127.0.0.1:${TLS[nginx]} ssl backlog=4096;
    server_name bench.local;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; }
  }
}
CONF
taskset -c $SUT_CPU nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
NGINX_MASTER=$!

HTTP[haproxy]=$(free_port); TLS[haproxy]=$(free_port)
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend bench
  bind 127.0.0.1:${HTTP[haproxy]} backlog 4096
  bind 127.0.0.1:${TLS[haproxy]} ssl crt $work/combined.pem alpn http/1.1 backlog 4096
  option forwardfor
  default_backend bench
backend bench
  server backend 127.0.0.1:$BACKEND
CONF
taskset -c $SUT_CPU haproxy -db -f "$work/haproxy.cfg" & pids+=($!)
PID[haproxy]=$!

start_capstan() { # NAME TLS(yes|no) FLAGS...: its own capstan.yaml (a TLS route redirects plain HTTP)
  local name=$1 tls=$2
  shift 2
  mkdir -p "$work/$name"
  cp "$work/cert.pem" "$work/key.pem" "$work/$name/"
  {
    echo "services:"
    echo "  up:"
    echo "    listen: 127.0.0.2:$(free_port)"
    echo "    backends: [\"127.0.0.1:$BACKEND\"]"
    echo "routes:"
    echo "  - host: bench.local"
    echo "    service: up"
    [ "$tls" = yes ] && echo "    tls: {cert: cert.pem, key: key.pem}"
  } > "$work/$name/capstan.yaml"
  HTTP[$name]=$(free_port); TLS[$name]=$(free_port)
  BENCH_THREADS=1 taskset -c $SUT_CPU "$CAPSTAN" run --config "$work/$name/capstan.yaml" --dns off \
    --http "127.0.0.1:${HTTP[$name]}" --https "127.0.0.1:${TLS[$name]}" --admin 127.0.0.1:0 \
    --healthz off --metrics off --dns-metrics off --log warn "$@" & pids+=($!)
  PID[$name]=$!
}
start_capstan capstan-plain no
start_capstan capstan yes --tls-session-tickets 0
start_capstan capstan-x25519 yes --tls-session-tickets 0 --tls-key-exchange X25519,secp256r1
for port in $BACKEND "${HTTP[@]}" "${TLS[@]}"; do wait_port "$port"; done
PID[nginx]=$(pgrep -P "$NGINX_MASTER" | head -1)
check() { curl -s -o /dev/null -w '%{http_code}' "$@" | grep -q 200 || { echo "not answering: $*" >&2; exit 1; }; }
for name in nginx haproxy capstan-plain; do check -H 'Host: bench.local' "http://127.0.0.1:${HTTP[$name]}/"; done
for name in nginx haproxy capstan capstan-x25519; do
  check -k --resolve "bench.local:${TLS[$name]}:127.0.0.1" "https://bench.local:${TLS[$name]}/"
done

ticks() { cat "/proc/$1/task/"*/stat | awk '{ t += $14 + $15 } END { print t }'; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
results=$work/results.txt
# record POINT ROUND TARGET PID TICKS_BEFORE COUNT [RSS]
record() {
  local t1
  t1=$(ticks "$4")
  echo "$1 $2 $3 $(python3 -c "print(round(($t1 - $5) / $HZ * 1e6 / max($6, 1), 2))") ${7:-}" | tee -a "$results"
}
oha_count() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(d["statusCodeDistribution"].get(c, 0) for c in ("200",)))' "$1"; }

point_http() { # ROUND TARGET
  local pid=${PID[$2]} port=${HTTP[$2]} t0 n
  t0=$(ticks "$pid")
  n=$(taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" -H 'Host: bench.local' "http://127.0.0.1:$port/" |
    awk '/requests in/ { print $1 }')
  record http "$1" "$2" "$pid" "$t0" "$n" "$(rss_mib "$pid")"
}
point_tls() { # ROUND TARGET POINT(https|newconn)
  local pid=${PID[$2]} port=${TLS[$2]} t0 args=(-c 64)
  [ "$3" = newconn ] && args=(-c 16 --disable-keepalive)
  t0=$(ticks "$pid")
  taskset -c $LOAD_CPU oha -z "${DURATION}s" "${args[@]}" --no-tui --insecure --output-format json \
    --connect-to "bench.local:443:127.0.0.1:$port" https://bench.local/ > "$work/oha.json" 2>/dev/null
  record "$3" "$1" "$2" "$pid" "$t0" "$(oha_count "$work/oha.json")"
}
point_syscalls() { # ROUND TARGET
  local pid=${PID[$2]} port=${HTTP[$2]} tids
  tids=$(ls "/proc/$pid/task" | paste -sd,)
  perf stat -e raw_syscalls:sys_enter -t "$tids" -x, -o "$work/perf.txt" -- \
    taskset -c $LOAD_CPU oha -n 20000 -c 64 --no-tui -H 'Host: bench.local' "http://127.0.0.1:$port/" >/dev/null 2>&1
  local calls
  calls=$(awk -F, '/raw_syscalls/ { print $1 }' "$work/perf.txt")
  echo "syscalls $1 $2 $(python3 -c "print(round($calls / 20000, 2))")" | tee -a "$results"
}

echo "# point round target value [rss MiB]   (http/https: CPU µs per request; newconn: CPU µs per connection; syscalls: per request)"
for round in $(seq "$ROUNDS"); do
  for target in capstan-plain nginx haproxy; do point_http "$round" "$target"; done
  for target in capstan capstan-x25519 nginx haproxy; do point_tls "$round" "$target" https; done
  for target in capstan capstan-x25519 nginx haproxy; do point_tls "$round" "$target" newconn; done
  for target in capstan-plain nginx haproxy; do point_syscalls "$round" "$target"; done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(dict)   # (point, target) -> round -> value
rss = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[0], f[2])][int(f[1])] = float(f[3])
    if len(f) > 4:
        rss[f[2]].append(float(f[4]))
peers = ("nginx", "haproxy")
print("\npoint      target          median   ratio to best peer per round (min/median/max)")
for point in ("http", "https", "newconn", "syscalls"):
    targets = sorted({t for (p, t) in rows if p == point}, key=lambda t: (t in peers, t))
    for target in targets:
        values = rows[(point, target)]
        ratios = []
        for rnd, value in values.items():
            best = min(rows[(point, p)][rnd] for p in peers if rnd in rows[(point, p)])
            ratios.append(value / best)
        ratios.sort()
        print(f"{point:10} {target:15} {statistics.median(values.values()):7.2f}   "
              f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}")
print("\nresident memory under the HTTP point, MiB (median, ratio to the best peer):")
best_rss = min(statistics.median(rss[p]) for p in peers if p in rss)
for target in sorted(rss):
    median = statistics.median(rss[target])
    print(f"  {target:15} {median:6.1f}   {median / best_rss:.2f}")
PY
