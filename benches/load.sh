#!/usr/bin/env bash
# L4 load comparison in one run on this machine: the same backends reached directly, through
# Capstan, and through HAProxy (Debian package, mode tcp), with the same client and settings.
#
#   connection rate : oha, a new TCP connection per HTTP request (--disable-keepalive)
#   request rate    : oha, keep-alive HTTP/1.1 requests over CONCURRENCY connections
#   bulk throughput : iperf3, one TCP stream
#
# Usage: benches/load.sh [DURATION_SECONDS] [CONCURRENCY]      (defaults: 10, 64)
#        QUICK=1 benches/load.sh ...   measures only the connection rate
# Installs what it needs: apt packages (haproxy, nginx-light, iperf3) and `cargo install oha`.
# Everything listens on 127.0.0.1 ports picked at run time; everything is stopped at exit.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONCURRENCY=${2:-64}

need_apt=()
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --locked --quiet --bin capstan
CAPSTAN=target/release/capstan

# Hundreds of thousands of short connections on loopback: without limits, TIME_WAIT sockets
# fill the port space and whichever target runs later pays for the earlier ones. Allow reuse,
# widen the ephemeral range, and cap TIME_WAIT buckets for the run (restored at exit).
saved_sysctls=""
if [ "$(id -u)" = 0 ]; then
  saved_sysctls=$(sysctl -n net.ipv4.tcp_tw_reuse net.ipv4.ip_local_port_range net.ipv4.tcp_max_tw_buckets | tr '\t\n' '  ')
  sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_max_tw_buckets=16384 || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"
  if [ -n "$saved_sysctls" ]; then
    read -r reuse low high buckets <<< "$saved_sysctls"
    sysctl -qw net.ipv4.tcp_tw_reuse="$reuse" net.ipv4.ip_local_port_range="$low $high" net.ipv4.tcp_max_tw_buckets="$buckets" || true
  fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done; echo "$1:$2 never opened" >&2; exit 1; }
# Each path gets its own loopback addresses (client side and backend side), so the three
# targets never share TCP 4-tuples: backends listen on every address.
DIRECT_IP=127.0.1.1
CAP_IP=127.0.2.1; CAP_BACKEND_IP=127.0.2.2
HAP_IP=127.0.3.1; HAP_BACKEND_IP=127.0.3.2

HTTP=$(free_port); IPERF=$(free_port)
CAP_HTTP=$(free_port); CAP_BULK=$(free_port); CAP_ADMIN=$(free_port)
HAP_HTTP=$(free_port); HAP_BULK=$(free_port)

# Backend: nginx answering a small body with keep-alive; iperf3 server for bulk.
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log crit;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $HTTP backlog=4096;
    location / { return 200 "ok\n"; }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
iperf3 -s -p "$IPERF" >/dev/null 2>&1 & pids+=($!)

cat > "$work/capstan.yaml" <<CONF
services:
  http:
    listen: $CAP_IP:$CAP_HTTP
    backends: [$CAP_BACKEND_IP:$HTTP]
  bulk:
    listen: $CAP_IP:$CAP_BULK
    backends: [$CAP_BACKEND_IP:$IPERF]
CONF
$CAPSTAN run --config "$work/capstan.yaml" --admin "127.0.0.1:$CAP_ADMIN" --log warn & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend http_in
  bind $HAP_IP:$HAP_HTTP
  default_backend http
backend http
  server s1 $HAP_BACKEND_IP:$HTTP
frontend bulk_in
  bind $HAP_IP:$HAP_BULK
  default_backend bulk
backend bulk
  server s1 $HAP_BACKEND_IP:$IPERF
CONF
haproxy -f "$work/haproxy.cfg" -q & pids+=($!)

for target in $DIRECT_IP:$HTTP $DIRECT_IP:$IPERF $CAP_IP:$CAP_HTTP $CAP_IP:$CAP_BULK $HAP_IP:$HAP_HTTP $HAP_IP:$HAP_BULK; do
  wait_port "${target%:*}" "${target##*:}"
done

# oha's JSON summary: requests/s and the success ratio.
oha_run() {
  local url=$1; shift
  oha -z "${DURATION}s" -c "$CONCURRENCY" --no-tui --output-format json "$@" "$url" > "$work/oha.json" 2>/dev/null
  python3 - "$work/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["summary"]
# Requests still in flight when the -z deadline hits are cut by oha itself, not failures.
errors = sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
p = d.get("latencyPercentiles", {})
print(f'{s["requestsPerSec"]:.0f} {s["successRate"]:.4f} {errors} {p.get("p50", 0)*1000:.3f} {p.get("p99", 0)*1000:.3f}')
PY
}
iperf_run() {
  iperf3 -c "$1" -p "$2" -t "$DURATION" -J > "$work/iperf.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$work/iperf.json"
}

# Each measurement runs ROUNDS times, the three targets interleaved within a round, and the
# median round is reported: this machine is shared, and a single run is noisy.
ROUNDS=${ROUNDS:-3}
median_by_first_field() { sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
declare -A runs result
for round in $(seq "$ROUNDS"); do
  for target in direct:$DIRECT_IP:$HTTP capstan:$CAP_IP:$CAP_HTTP haproxy:$HAP_IP:$HAP_HTTP; do
    name=${target%%:*}; addr=${target#*:}
    runs[conn_$name]+="$(oha_run "http://$addr/" --disable-keepalive)"$'\n'
    [ -n "${QUICK:-}" ] && continue
    runs[req_$name]+="$(oha_run "http://$addr/")"$'\n'
  done
  [ -n "${QUICK:-}" ] && continue
  for target in direct:$DIRECT_IP:$IPERF capstan:$CAP_IP:$CAP_BULK haproxy:$HAP_IP:$HAP_BULK; do
    name=${target%%:*}; addr=${target#*:}
    runs[bulk_$name]+="$(iperf_run "${addr%:*}" "${addr##*:}")"$'\n'
  done
done
for key in "${!runs[@]}"; do
  result[$key]=$(printf '%s' "${runs[$key]}" | median_by_first_field)
done
for name in direct capstan haproxy; do
  : "${result[req_$name]:=0 0 0 0 0}" "${result[bulk_$name]:=0}"
done

field() { echo "$1" | cut -d' ' -f"$2"; }
ratio() { python3 -c "print('%.2f' % ($1 / $2 if $2 else 0))"; }
echo
echo "Capstan L4 load comparison: median of $ROUNDS rounds of ${DURATION}s, $CONCURRENCY connections, $(nproc) cores"
printf '%-32s %12s %12s %12s\n' "" direct capstan haproxy
for kind in conn req; do
  label=$([ $kind = conn ] && echo "new connections/s (oha)" || echo "keep-alive requests/s (oha)")
  printf '%-32s %12s %12s %12s\n' "$label" "$(field "${result[${kind}_direct]}" 1)" "$(field "${result[${kind}_capstan]}" 1)" "$(field "${result[${kind}_haproxy]}" 1)"
  printf '%-32s %12s %12s %12s\n' "  p50 / p99 latency ms" \
    "$(field "${result[${kind}_direct]}" 4)/$(field "${result[${kind}_direct]}" 5)" \
    "$(field "${result[${kind}_capstan]}" 4)/$(field "${result[${kind}_capstan]}" 5)" \
    "$(field "${result[${kind}_haproxy]}" 4)/$(field "${result[${kind}_haproxy]}" 5)"
  printf '%-32s %12s %12s %12s\n' "  failed (excl. deadline cut)" "$(field "${result[${kind}_direct]}" 3)" "$(field "${result[${kind}_capstan]}" 3)" "$(field "${result[${kind}_haproxy]}" 3)"
done
printf '%-32s %12s %12s %12s\n' "bulk Gbit/s (iperf3)" "${result[bulk_direct]}" "${result[bulk_capstan]}" "${result[bulk_haproxy]}"
echo
echo "capstan / haproxy, new connections/s : $(ratio "$(field "${result[conn_capstan]}" 1)" "$(field "${result[conn_haproxy]}" 1)")   (target >= 1.00)"
echo "capstan / haproxy, keep-alive req/s  : $(ratio "$(field "${result[req_capstan]}" 1)" "$(field "${result[req_haproxy]}" 1)")"
echo "capstan / direct,  bulk throughput   : $(ratio "${result[bulk_capstan]}" "${result[bulk_direct]}")   (target >= 0.90)"
echo "haproxy / direct,  bulk throughput   : $(ratio "${result[bulk_haproxy]}" "${result[bulk_direct]}")"
