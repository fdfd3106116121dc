#!/usr/bin/env bash
# HTTP ingress load comparison in one run on this machine: the same backend (nginx answering a
# small body) reached directly, through Capstan's ingress (an Ingress + Service + EndpointSlice
# from manifests), and through nginx configured as the equivalent reverse proxy (upstream
# keep-alive, HTTP/1.1 to the backend, X-Forwarded-* headers), for plain HTTP/1.1 and for TLS
# (same certificate, SNI bench.example, keep-alive). Measured with oha, keep-alive connections.
#
# CPU placement: the proxy under test (Capstan, or nginx's single worker) gets CPU 0; oha and the
# backend share CPU 1. Both proxies therefore have one core: Capstan starts one worker, nginx
# runs worker_processes 1.
#
# Usage: benches/ingress.sh [DURATION_SECONDS] [CONCURRENCY]     (defaults: 10, 64)
#        ROUNDS=N benches/ingress.sh ...   interleaves the targets N times (default 3) and reports
#                                          the median round of each: this machine is noisy.
# Installs what it needs: apt packages (nginx-light, openssl) and `cargo install oha`.
# Everything listens on 127.0.0.1 ports picked at run time and is stopped at exit.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONCURRENCY=${2:-64}
ROUNDS=${ROUNDS:-3}

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --locked --quiet --bin capstan
CAPSTAN=$PWD/target/release/capstan
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
PROXY_CPU=0; CLIENT_CPU=1
[ "$(nproc)" -lt 2 ] && CLIENT_CPU=0

BACKEND=$(free_port)
CAP_HTTP=$(free_port); CAP_HTTPS=$(free_port); CAP_ADMIN=$(free_port)
NGX_HTTP=$(free_port); NGX_HTTPS=$(free_port)

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

# Capstan: the same route from Kubernetes manifests.
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
taskset -c "$PROXY_CPU" "$CAPSTAN" run --manifests "$work/manifests" --dns off \
  --http "127.0.0.1:$CAP_HTTP" --https "127.0.0.1:$CAP_HTTPS" --admin "127.0.0.1:$CAP_ADMIN" \
  --log warn & pids+=($!)
CAPSTAN_PID=$!

for port in $BACKEND $NGX_HTTP $NGX_HTTPS $CAP_HTTP $CAP_HTTPS $CAP_ADMIN; do wait_port "$port"; done
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$CAP_ADMIN/readyz" && break; sleep 0.05
done

# CPU time (user + system, clock ticks) of a process and its children's threads so far.
cpu_ticks() { cat "/proc/$1/task/"*/stat 2>/dev/null | awk '{ t += $14 + $15 } END { print t + 0 }'; }
# nginx does its work in its worker process, the master's child.
worker_of() { pgrep -P "$1" | head -1; }
TICKS_PER_SECOND=$(getconf CLK_TCK)

# oha_run PID URL ARGS...: oha's JSON summary as requests/s, failures (excluding requests cut by
# the -z deadline), p50, p99, and the CPU time PID spent per request in microseconds (the
# proxy's efficiency, which does not depend on how busy the client's CPU is).
oha_run() {
  local pid=$1 before after
  shift
  before=$(cpu_ticks "$pid")
  taskset -c "$CLIENT_CPU" oha -z "${DURATION}s" -c "$CONCURRENCY" --no-tui --output-format json "$@" \
    > "$work/oha.json" 2>/dev/null
  after=$(cpu_ticks "$pid")
  python3 - "$work/oha.json" "$((after - before))" "$TICKS_PER_SECOND" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
s = d["summary"]
codes = d.get("statusCodeDistribution", {})
bad = sum(n for c, n in codes.items() if c != "200")
errors = sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
p = d.get("latencyPercentiles", {})
done = sum(codes.values()) or 1
cpu_us = ticks / hz * 1e6 / done
print(f'{s["requestsPerSec"]:.0f} {bad + errors} {p.get("p50", 0)*1000:.3f} {p.get("p99", 0)*1000:.3f} {cpu_us:.1f}')
PY
}
check() { # every target must answer 200 before it is measured
  curl -s -o /dev/null -w '%{http_code}' "$@" | grep -q 200 || { echo "target not answering: $*" >&2; exit 1; }
}
check "http://127.0.0.1:$BACKEND/"
check -H "Host: plain.bench.example" "http://127.0.0.1:$NGX_HTTP/"
check -H "Host: plain.bench.example" "http://127.0.0.1:$CAP_HTTP/"
check -k --resolve "bench.example:$NGX_HTTPS:127.0.0.1" "https://bench.example:$NGX_HTTPS/"
check -k --resolve "bench.example:$CAP_HTTPS:127.0.0.1" "https://bench.example:$CAP_HTTPS/"

median_by_first_field() { sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
declare -A runs result
for round in $(seq "$ROUNDS"); do
  runs[http_direct]+="$(oha_run "$(worker_of "$BACKEND_PID")" "http://127.0.0.1:$BACKEND/")"$'\n'
  # bench.example has a TLS section, so Capstan redirects its plain-HTTP requests (308): the
  # plain runs use plain.bench.example, a rule without TLS (nginx serves it from the same block).
  runs[http_capstan]+="$(oha_run "$CAPSTAN_PID" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$CAP_HTTP")"$'\n'
  runs[http_nginx]+="$(oha_run "$(worker_of "$NGINX_PID")" "http://plain.bench.example/" --connect-to "plain.bench.example:80:127.0.0.1:$NGX_HTTP")"$'\n'
  runs[tls_capstan]+="$(oha_run "$CAPSTAN_PID" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$CAP_HTTPS")"$'\n'
  runs[tls_nginx]+="$(oha_run "$(worker_of "$NGINX_PID")" "https://bench.example/" --insecure --connect-to "bench.example:443:127.0.0.1:$NGX_HTTPS")"$'\n'
done
for key in "${!runs[@]}"; do
  result[$key]=$(printf '%s' "${runs[$key]}" | median_by_first_field)
done

field() { echo "$1" | cut -d' ' -f"$2"; }
ratio() { python3 -c "print('%.2f' % ($1 / $2 if $2 else 0))"; }
row() { printf '%-34s %10s %10s %16s %10s\n' "$@"; }
echo
echo "Capstan ingress load comparison: median of $ROUNDS rounds of ${DURATION}s, $CONCURRENCY keep-alive connections,"
echo "proxy on CPU $PROXY_CPU, oha and backend on CPU $CLIENT_CPU"
row "" "req/s" "failed" "p50/p99 ms" "CPU us/req"
for key in http_direct http_capstan http_nginx tls_capstan tls_nginx; do
  r=${result[$key]:-0 0 0 0 0}
  row "$key" "$(field "$r" 1)" "$(field "$r" 2)" "$(field "$r" 3)/$(field "$r" 4)" "$(field "$r" 5)"
done
echo "(CPU us/req: CPU time of the backend (direct) or of the proxy, per request answered)"
echo
echo "capstan / nginx, HTTP/1.1 req/s : $(ratio "$(field "${result[http_capstan]}" 1)" "$(field "${result[http_nginx]}" 1)")   (target >= 1.20)"
echo "capstan / nginx, TLS req/s      : $(ratio "$(field "${result[tls_capstan]}" 1)" "$(field "${result[tls_nginx]}" 1)")   (target >= 1.20)"
echo "capstan / nginx, HTTP/1.1 p99   : $(ratio "$(field "${result[http_capstan]}" 4)" "$(field "${result[http_nginx]}" 4)")   (target <= 1.00)"
echo "capstan / nginx, TLS p99        : $(ratio "$(field "${result[tls_capstan]}" 4)" "$(field "${result[tls_nginx]}" 4)")   (target <= 1.00)"
echo "capstan / nginx, HTTP/1.1 CPU/req: $(ratio "$(field "${result[http_capstan]}" 5)" "$(field "${result[http_nginx]}" 5)")   (lower is better)"
echo "capstan / nginx, TLS CPU/req     : $(ratio "$(field "${result[tls_capstan]}" 5)" "$(field "${result[tls_nginx]}" 5)")   (lower is better)"
