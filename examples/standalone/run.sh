#!/usr/bin/env bash
# Runs Capstan on the shipped example, no Docker and no cluster needed:
#   three HTTP backends on 127.0.0.1:9001-9003 (python3 -m http.server), and Capstan serving
#   - standalone/web         on 127.0.0.1:8080 (round-robin over the three)
#   - standalone/web-sticky  on 127.0.0.1:8081 (ClientIP affinity)
#   - demo/web (manifests)   on ClusterIP 127.0.10.1:80 and NodePort 127.0.0.1:30080
#   - cluster DNS            on 127.0.0.1:8053 (web.demo.svc.cluster.local, web.capstan.internal)
# Try: curl 127.0.0.1:8080  |  curl 127.0.10.1  |  curl 127.0.0.1:9901/debug/snapshot
#      dig @127.0.0.1 -p 8053 web.demo.svc.cluster.local  |  dig @127.0.0.1 -p 8053 web.capstan.internal
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

root=$(mktemp -d)
for port in 9001 9002 9003; do
  mkdir -p "$root/$port"
  echo "hello from backend $port" > "$root/$port/index.html"
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$root/$port" >/dev/null 2>&1 &
  pids+=($!)
done

cargo run --release --locked --quiet -- run \
  --config examples/standalone/capstan.yaml \
  --manifests examples/manifests \
  --nodeport-addresses 127.0.0.1 \
  --dns 127.0.0.1:8053 \
  "$@"
