#!/usr/bin/env bash
# DNS load comparison in one run on this machine: the same 1,000 generated Services answered by
# Capstan (from Kubernetes manifests) and by Knot DNS (Debian package, the same records as a zone
# file), measured with dnsperf (Debian package) with the same settings; then Capstan's cached
# forwarding rate (names it forwards to Knot, answered from its cache after the first pass).
#
# Usage: benches/dns.sh [DURATION_SECONDS] [CLIENTS]      (defaults: 10, 20)
#        ROUNDS=N benches/dns.sh ...   alternates Knot and Capstan N times (default 3) and reports
#                                      the median of each: this 2-core machine is noisy.
# Installs what it needs (apt: dnsperf, knot). Everything listens on 127.0.0.1 ports picked at run
# time; everything is stopped at exit. Prints queries/s and latency for each and the ratio.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CLIENTS=${2:-20}
SERVICES=1000

need_apt=()
command -v dnsperf >/dev/null || need_apt+=(dnsperf)
command -v knotd >/dev/null || need_apt+=(knot)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo build --release --locked --quiet --bin capstan
CAPSTAN=target/release/capstan

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() {
  python3 -c 'import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}

# The same records for both: Service svc-N in namespace bench with ClusterIP 10.96.X.Y.
mkdir -p "$work/manifests" "$work/knot"
python3 - "$work" "$SERVICES" <<'EOF'
import sys
work, n = sys.argv[1], int(sys.argv[2])
ips = [f"10.96.{i // 250}.{i % 250 + 1}" for i in range(n)]
with open(f"{work}/manifests/services.yaml", "w") as f:
    for i, ip in enumerate(ips):
        f.write(f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n"
                f"spec: {{clusterIP: {ip}, ports: []}}\n---\n")
with open(f"{work}/knot/cluster.local.zone", "w") as f:
    f.write("$ORIGIN cluster.local.\n$TTL 5\n"
            "@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n"
            "@ NS ns.dns.cluster.local.\n")
    for i, ip in enumerate(ips):
        f.write(f"svc-{i}.bench.svc A {ip}\n")
with open(f"{work}/knot/example.test.zone", "w") as f:
    f.write("$ORIGIN example.test.\n$TTL 300\n"
            "@ SOA ns.example.test. hostmaster.example.test. 1 7200 1800 86400 300\n"
            "@ NS ns.example.test.\nns A 192.0.2.53\n")
    for i in range(n):
        f.write(f"host-{i} A 192.0.2.{i % 250 + 1}\n")
with open(f"{work}/cluster.queries", "w") as f:
    for i in range(n):
        f.write(f"svc-{i}.bench.svc.cluster.local A\n")
with open(f"{work}/forward.queries", "w") as f:
    for i in range(n):
        f.write(f"host-{i}.example.test A\n")
EOF

KNOT=$(free_port); CAP=$(free_port)
# Servers and client on separate cores, so neither steals the other's CPU: the servers share
# cores 0..n-2 (one worker per core each), dnsperf has the last one.
ncpu=$(nproc)
if [ "$ncpu" -ge 2 ]; then
  cores=$((ncpu - 1)); server_cpus="0-$((ncpu - 2))"; client_cpu="$((ncpu - 1))"
else
  cores=1; server_cpus=0; client_cpu=0
fi
cat > "$work/knot/knot.conf" <<EOF
server:
    listen: 127.0.0.1@$KNOT
    rundir: $work/knot
    udp-workers: $cores
    tcp-workers: 1
    background-workers: 1
database:
    storage: $work/knot/db
template:
  - id: default
    storage: $work/knot
    file: "%s.zone"
zone:
  - domain: cluster.local
  - domain: example.test
log:
  - target: stderr
    any: warning
EOF
taskset -c "$server_cpus" knotd -c "$work/knot/knot.conf" 2> "$work/knot.log" & pids+=($!)
KNOT_PID=$!
taskset -c "$server_cpus" "$CAPSTAN" run --manifests "$work/manifests" --admin 127.0.0.1:0 --dns "127.0.0.1:$CAP" \
  --upstream "127.0.0.1:$KNOT" --log warn 2> "$work/capstan.log" & pids+=($!)
CAP_PID=$!

ready() { for _ in $(seq 200); do dig +time=1 +tries=1 @127.0.0.1 -p "$1" +short "$2" | grep -q . && return 0; sleep 0.05; done; echo "port $1 never answered $2" >&2; cat "$work"/*.log >&2; exit 1; }
ready "$KNOT" svc-999.bench.svc.cluster.local
ready "$CAP" svc-999.bench.svc.cluster.local

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # port pid queries → "qps avg_ms lost queries_per_server_cpu_second"
  local before after
  before=$(cpu_ticks "$2")
  taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l "$DURATION" -c "$CLIENTS" -q 100 -t 2 > "$work/run.log" 2>&1
  after=$(cpu_ticks "$2")
  cat "$work/run.log" >> "$work/dnsperf.log"
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /Queries completed:/ { done = $3 } /Queries lost:/ { lost = $3 } /Queries per second:/ { qps = $4 }
    /Average Latency/ { avg = $4 * 1000 }
    END { printf "%.0f %.3f %s %.0f\n", qps, avg, lost, done / (ticks > 0 ? ticks / hz : 1) }' "$work/run.log"
}
ROUNDS=${ROUNDS:-3}
echo "dnsperf: $SERVICES names, ${DURATION}s x $ROUNDS rounds, $CLIENTS clients; servers on CPU $server_cpus ($cores worker(s) each), dnsperf on CPU $client_cpu"
: > "$work/knot.results"; : > "$work/capstan.results"
for round in $(seq "$ROUNDS"); do
  run "$KNOT" "$KNOT_PID" "$work/cluster.queries" >> "$work/knot.results"
  run "$CAP" "$CAP_PID" "$work/cluster.queries" >> "$work/capstan.results"
  echo "round $round: knot $(tail -1 "$work/knot.results" | cut -d' ' -f1) q/s, capstan $(tail -1 "$work/capstan.results" | cut -d' ' -f1) q/s"
done
median() { sort -n "$1" | awk '{ rows[NR] = $0 } END { print rows[int((NR + 1) / 2)] }'; }
read -r knot_qps knot_ms knot_lost knot_eff < <(median "$work/knot.results")
read -r cap_qps cap_ms cap_lost cap_eff < <(median "$work/capstan.results")
# Warm the cache with one pass, then measure answers served from it.
dnsperf -s 127.0.0.1 -p "$CAP" -d "$work/forward.queries" -n 1 -c 1 >/dev/null 2>&1
read -r fwd_qps fwd_ms fwd_lost fwd_eff < <(run "$CAP" "$CAP_PID" "$work/forward.queries")

printf '%-30s %11s %8s %6s %18s\n' "target (median)" "queries/s" "avg ms" lost "queries/server-cpu-s"
printf '%-30s %11s %8s %6s %18s\n' "knot (authoritative)" "$knot_qps" "$knot_ms" "$knot_lost" "$knot_eff"
printf '%-30s %11s %8s %6s %18s\n' "capstan (cluster zone)" "$cap_qps" "$cap_ms" "$cap_lost" "$cap_eff"
printf '%-30s %11s %8s %6s %18s\n' "capstan (cached forwarding)" "$fwd_qps" "$fwd_ms" "$fwd_lost" "$fwd_eff"
awk -v c="$cap_qps" -v k="$knot_qps" -v ce="$cap_eff" -v ke="$knot_eff" \
  'BEGIN { printf "ratio capstan/knot: %.2f queries/s, %.2f queries per server CPU-second\n", c / k, ce / ke }'
