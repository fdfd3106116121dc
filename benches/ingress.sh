#!/usr/bin/env bash
# HTTP ingress load comparison in one run on this machine: the same backend (nginx answering a
# small body) reached directly, through Capstan's ingress (an Ingress + Service + EndpointSlice
# from manifests), through nginx and through HAProxy (both Debian packages) configured as the
# equivalent reverse proxy (upstream keep-alive, HTTP/1.1 to the backend, X-Forwarded-* headers),
# for plain HTTP/1.1, for TLS with HTTP/1.1 and for TLS with HTTP/2 by ALPN (same certificate, SNI
# bench.example). Measured with oha over keep-alive connections: CONCURRENCY connections of one
# request at a time for HTTP/1.1; CONCURRENCY / 8 connections of 8 streams each for HTTP/2.
#
# One more row, l4_capstan, is a reference, not a contender: Capstan's L4 proxy (a capstan.yaml
# service) copying the same requests' bytes to the backend without parsing HTTP. Any HTTP proxy
# does at least its four socket calls per request, so that row is the floor of proxy CPU per
# request on this machine, and its req/s the ceiling a user-space proxy can reach here.
#
# CPU placement: the proxy under test (Capstan, nginx's single worker, HAProxy with one thread)
# gets CPU 0; oha and the backend share CPU 1. Every proxy therefore has one core: Capstan starts
# one worker, nginx runs worker_processes 1, HAProxy nbthread 1.
#
# Usage: benches/ingress.sh [DURATION_SECONDS] [CONCURRENCY]     (defaults: 10, 64)
#        ROUNDS=N benches/ingress.sh ...   interleaves the targets N times (default 3) and reports
#                                          the median round of each: this machine is noisy.
#        BASELINE=path/to/capstan benches/ingress.sh ...   adds rows *_baseline: another build
#                                          (an earlier commit's) on the same route, in the same
#                                          rounds, on the same CPU, for before/after comparisons.
# Installs what it needs: apt packages (nginx-light, haproxy, openssl) and `cargo install oha`.
# Everything listens on 127.0.0.1 ports picked at run time and is stopped at exit.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONCURRENCY=${2:-64}
ROUNDS=${ROUNDS:-3}

# shellcheck source=benches/common.sh
source benches/common.sh
bench_setup nginx=nginx-light haproxy=haproxy openssl=openssl taskset=util-linux
PROXY_CPU=0; CLIENT_CPU=1
[ "$(nproc)" -lt 2 ] && CLIENT_CPU=0

BACKEND=$(free_port)
CAP_HTTP=$(free_port); CAP_HTTPS=$(free_port); CAP_ADMIN=$(free_port)
NGX_HTTP=$(free_port); NGX_HTTPS=$(free_port)
HAP_HTTP=$(free_port); HAP_HTTPS=$(free_port); CAP_L4=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.example" -addext "subjectAltName=DNS:bench.example" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# The backend: nginx, one worker, a small body, unlimited keep-alive.
mkdir -p "$work/backend" "$work/proxy" "$work/manifests"
cat > "$work/backend/nginx.conf" <<CONF
worker_processes 1;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log crit;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$BACKEND backlog=4096;
    location / { return 200 "ok\n"; }
  }
}
CONF
taskset -c "$CLIENT_CPU" nginx -c "$work/backend/nginx.conf" -g 'daemon off;' & pids+=($!)
BACKEND_PID=$!

# nginx as the reverse proxy: what ingress-nginx renders for one Ingress, minus Lua.
cat > "$work/proxy/nginx.conf" <<CONF
worker_processes 1;
pid $work/proxy/nginx.pid;
error_log $work/proxy/error.log crit;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream backend {
    server 127.0.0.1:$BACKEND;
    keepalive 320;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$NGX_HTTP backlog=4096;
    listen 127.0.0.1:$NGX_HTTPS ssl http2 backlog=4096;
    server_name bench.example;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
CONF
taskset -c "$PROXY_CPU" nginx -c "$work/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)
NGINX_PID=$!

# HAProxy as the reverse proxy: the same headers, connections to the backend kept and shared.
cat "$work/cert.pem" "$work/key.pem" > "$work/proxy/haproxy.pem"
cat > "$work/proxy/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend bench
  bind 127.0.0.1:$HAP_HTTP backlog 4096
  bind 127.0.0.1:$HAP_HTTPS ssl crt $work/proxy/haproxy.pem alpn h2,http/1.1 backlog 4096
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend bench
backend bench
  server backend 127.0.0.1:$BACKEND
CONF
taskset -c "$PROXY_CPU" haproxy -db -f "$work/proxy/haproxy.cfg" & pids+=($!)
HAPROXY_PID=$!

# Capstan: the same route from Kubernetes manifests, and the L4 reference from capstan.yaml.
cat > "$work/capstan.yaml" <<CONF
services:
  bench-l4:
    listen: 127.0.0.1:$CAP_L4
    backends: [127.0.0.1:$BACKEND]
CONF
indent() { sed 's/^/    /' "$1"; }
cat > "$work/manifests/bench.yaml" <<CONF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: capstan
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: capstan.dev/ingress}
---
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: None
  ports: [{name: http, port: 80, targetPort: $BACKEND}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-1
  namespace: default
  labels: {kubernetes.io/service-name: bench}
addressType: IPv4
ports: [{name: http, port: $BACKEND}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: default}
spec:
  tls: [{hosts: [bench.example], secretName: bench-tls}]
  rules:
  - host: bench.example
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: bench, port: {number: 80}}}}]
  - host: plain.bench.example
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: bench, port: {number: 80}}}}]
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: bench-tls, namespace: default}
stringData:
  tls.crt: |
$(indent "$work/cert.pem")
  tls.key: |
$(indent "$work/key.pem")
CONF
taskset -c "$PROXY_CPU" "$CAPSTAN" run --manifests "$work/manifests" --config "$work/capstan.yaml" --dns off \
  --http "127.0.0.1:$CAP_HTTP" --https "127.0.0.1:$CAP_HTTPS" --admin "127.0.0.1:$CAP_ADMIN" \
  --healthz off --metrics off --log warn & pids+=($!)
CAPSTAN_PID=$!
if [ -n "${BASELINE:-}" ]; then
  BASE_HTTP=$(free_port); BASE_HTTPS=$(free_port); BASE_ADMIN=$(free_port)
  taskset -c "$PROXY_CPU" "$BASELINE" run --manifests "$work/manifests" --dns off \
    --http "127.0.0.1:$BASE_HTTP" --https "127.0.0.1:$BASE_HTTPS" --admin "127.0.0.1:$BASE_ADMIN" \
    --healthz off --metrics off --log warn & pids+=($!)
  BASELINE_PID=$!
  for port in $BASE_HTTP $BASE_HTTPS $BASE_ADMIN; do wait_port "$port"; done
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$BASE_ADMIN/readyz" && break; sleep 0.05
  done
fi

for port in $BACKEND $NGX_HTTP $NGX_HTTPS $HAP_HTTP $HAP_HTTPS $CAP_HTTP $CAP_HTTPS $CAP_ADMIN $CAP_L4; do wait_port "$port"; done
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$CAP_ADMIN/readyz" && break; sleep 0.05
done

# CPU time of a process's threads so far, in clock ticks: "user system".
cpu_ticks() { cat "/proc/$1/task/"*/stat 2>/dev/null | awk '{ u += $14; s += $15 } END { print u + 0, s + 0 }'; }
# nginx does its work in its worker process, the master's child.
worker_of() { pgrep -P "$1" | head -1; }
TICKS_PER_SECOND=$(getconf CLK_TCK)

# [STREAMS=N] oha_run PID URL ARGS...: CONCURRENCY requests at a time (over CONCURRENCY / N
# connections of N HTTP/2 streams each when STREAMS is set), then oha's JSON summary as
# requests/s, failures (excluding requests cut by the -z deadline), p50, p99, and the CPU time PID
# spent per request in microseconds: total, user, system (the proxy's efficiency, which does not
# depend on how busy the client's CPU is).
oha_run() {
  local pid=$1 before after
  shift
  before=$(cpu_ticks "$pid")
  local streams=${STREAMS:-1}
  taskset -c "$CLIENT_CPU" oha -z "${DURATION}s" -c "$(( (CONCURRENCY + streams - 1) / streams ))" \
    -p "$streams" --no-tui --output-format json "$@" \
    > "$work/oha.json" 2>/dev/null
  after=$(cpu_ticks "$pid")
  python3 - "$work/oha.json" "$before" "$after" "$TICKS_PER_SECOND" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
(u0, s0), (u1, s1) = (map(int, a.split()) for a in sys.argv[2:4])
hz = int(sys.argv[4])
s = d["summary"]
codes = d.get("statusCodeDistribution", {})
bad = sum(n for c, n in codes.items() if c != "200")
errors = sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
p = d.get("latencyPercentiles", {})
done = sum(codes.values()) or 1
user_us, sys_us = ((t1 - t0) / hz * 1e6 / done for t0, t1 in ((u0, u1), (s0, s1)))
print(f'{s["requestsPerSec"]:.0f} {bad + errors} {p.get("p50", 0)*1000:.3f} {p.get("p99", 0)*1000:.3f} '
      f'{user_us + sys_us:.1f} {user_us:.1f} {sys_us:.1f}')
PY
}
check() { # every target must answer 200 before it is measured
  curl -s -o /dev/null -w '%{http_code}' "$@" | grep -q 200 || { echo "target not answering: $*" >&2; exit 1; }
}
check "http://127.0.0.1:$BACKEND/"
check -H "Host: plain.bench.example" "http://127.0.0.1:$NGX_HTTP/"
check -H "Host: plain.bench.example" "http://127.0.0.1:$CAP_HTTP/"
check -H "Host: plain.bench.example" "http://127.0.0.1:$HAP_HTTP/"
check "http://127.0.0.1:$CAP_L4/"
check -k --resolve "bench.example:$NGX_HTTPS:127.0.0.1" "https://bench.example:$NGX_HTTPS/"
check -k --resolve "bench.example:$HAP_HTTPS:127.0.0.1" "https://bench.example:$HAP_HTTPS/"
check -k --resolve "bench.example:$CAP_HTTPS:127.0.0.1" "https://bench.example:$CAP_HTTPS/"

median_by_first_field() { sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
declare -A runs result
for round in $(seq "$ROUNDS"); do
  runs[http_direct]+="$(oha_run "$(worker_of "$BACKEND_PID")" "http://127.0.0.1:$BACKEND/")"$'\n'
  # bench.example has a TLS section, so Capstan redirects its plain-HTTP requests (308): the
  # plain runs use plain.bench.example, a rule without TLS (nginx serves it from the same block).
  runs[http_capstan]+="$(oha_run "$CAPSTAN_PID" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$CAP_HTTP")"$'\n'
  runs[http_nginx]+="$(oha_run "$(worker_of "$NGINX_PID")" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$NGX_HTTP")"$'\n'
  runs[http_haproxy]+="$(oha_run "$HAPROXY_PID" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$HAP_HTTP")"$'\n'
  runs[l4_capstan]+="$(oha_run "$CAPSTAN_PID" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$CAP_L4")"$'\n'
  runs[tls_capstan]+="$(oha_run "$CAPSTAN_PID" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$CAP_HTTPS")"$'\n'
  runs[tls_nginx]+="$(oha_run "$(worker_of "$NGINX_PID")" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$NGX_HTTPS")"$'\n'
  runs[tls_haproxy]+="$(oha_run "$HAPROXY_PID" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$HAP_HTTPS")"$'\n'
  runs[h2_capstan]+="$(STREAMS=8 oha_run "$CAPSTAN_PID" "https://bench.example/" --insecure --http2 --connect-to "bench.example:443:127.0.0.1:$CAP_HTTPS")"$'\n'
  runs[h2_nginx]+="$(STREAMS=8 oha_run "$(worker_of "$NGINX_PID")" "https://bench.example/" --insecure --http2 --connect-to "bench.example:443:127.0.0.1:$NGX_HTTPS")"$'\n'
  runs[h2_haproxy]+="$(STREAMS=8 oha_run "$HAPROXY_PID" "https://bench.example/" --insecure --http2 --connect-to "bench.example:443:127.0.0.1:$HAP_HTTPS")"$'\n'
  if [ -n "${BASELINE:-}" ]; then
    runs[http_baseline]+="$(oha_run "$BASELINE_PID" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$BASE_HTTP")"$'\n'
    runs[tls_baseline]+="$(oha_run "$BASELINE_PID" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$BASE_HTTPS")"$'\n'
    runs[h2_baseline]+="$(STREAMS=8 oha_run "$BASELINE_PID" "https://bench.example/" --insecure --http2 --connect-to "bench.example:443:127.0.0.1:$BASE_HTTPS")"$'\n'
  fi
done
for key in "${!runs[@]}"; do
  result[$key]=$(printf '%s' "${runs[$key]}" | median_by_first_field)
done

field() { echo "$1" | cut -d' ' -f"$2"; }
ratio() { python3 -c "print('%.2f' % ($1 / $2 if $2 else 0))"; }
row() { printf '%-20s %10s %8s %16s %11s %11s\n' "$@"; }
echo
echo "Capstan ingress load comparison: median of $ROUNDS rounds of ${DURATION}s, $CONCURRENCY keep-alive connections,"
echo "proxy on CPU $PROXY_CPU, oha and backend on CPU $CLIENT_CPU"
row "" "req/s" "failed" "p50/p99 ms" "CPU us/req" "user/sys"
baseline_rows=""
if [ -n "${BASELINE:-}" ]; then baseline_rows="http_baseline tls_baseline h2_baseline"; fi
for key in http_direct http_capstan http_nginx http_haproxy l4_capstan tls_capstan tls_nginx tls_haproxy \
  h2_capstan h2_nginx h2_haproxy $baseline_rows; do
  r=${result[$key]:-0 0 0 0 0 0 0}
  row "$key" "$(field "$r" 1)" "$(field "$r" 2)" "$(field "$r" 3)/$(field "$r" 4)" "$(field "$r" 5)" \
    "$(field "$r" 6)/$(field "$r" 7)"
done
echo "(CPU us/req: CPU time of the backend (direct) or of the proxy, per request answered;"
echo " l4_capstan: bytes copied without parsing HTTP, the floor of any proxy on this machine)"
echo
# compare A B PLANE: A over B in req/s, p99 and CPU per request, on one line.
compare() {
  local a=${result[$3_$1]} b=${result[$3_$2]}
  printf '%-22s %-9s req/s %5sx   p99 %5sx   CPU/req %5sx\n' "$1 / $2" "$3" \
    "$(ratio "$(field "$a" 1)" "$(field "$b" 1)")" "$(ratio "$(field "$a" 4)" "$(field "$b" 4)")" \
    "$(ratio "$(field "$a" 5)" "$(field "$b" 5)")"
}
for plane in http tls h2; do
  compare capstan nginx "$plane"
  compare capstan haproxy "$plane"
  compare haproxy nginx "$plane"
  if [ -n "${BASELINE:-}" ]; then compare capstan baseline "$plane"; fi
done
echo "(http: HTTP/1.1; tls: HTTP/1.1 over TLS; h2: HTTP/2 over TLS, by ALPN)"
echo "(target for capstan / nginx: req/s >= 1.20x with p99 <= 1.00x; CPU/req: lower is better)"
echo
# The L4 row has no TLS and parses nothing: how far below nginx any proxy's CPU could go here.
echo "ceiling here: l4_capstan / nginx HTTP/1.1 req/s $(ratio "$(field "${result[l4_capstan]}" 1)" "$(field "${result[http_nginx]}" 1)")x," \
  "nginx / l4_capstan CPU/req $(ratio "$(field "${result[http_nginx]}" 5)" "$(field "${result[l4_capstan]}" 5)")x," \
  "direct / nginx req/s $(ratio "$(field "${result[http_direct]}" 1)" "$(field "${result[http_nginx]}" 1)")x"
