#!/usr/bin/env bash
# Runs Capstan on the shipped example, no Docker and no cluster needed:
#   three HTTP backends on 127.0.0.1:9001-9003 (python3 -m http.server), and Capstan serving
#   - standalone/web         on 127.0.0.1:8080 (round-robin over the three)
#   - standalone/web-sticky  on 127.0.0.1:8081 (ClientIP affinity)
#   - demo/web (manifests)   on ClusterIP 127.0.10.1:8000 and NodePort 127.0.0.1:30080
#   - cluster DNS            on 127.0.0.1:8053 (web.demo.svc.cluster.local, web.capstan.internal)
#   - ingress                on 127.0.0.1:8088 (HTTP) and 127.0.0.1:8443 (TLS): web.example and
#                              plain.example → demo/web, with a certificate generated below
# Try: curl 127.0.0.1:8080  |  curl 127.0.10.1:8000  |  curl 127.0.0.1:9901/debug/snapshot
#      dig @127.0.0.1 -p 8053 web.demo.svc.cluster.local  |  dig @127.0.0.1 -p 8053 web.capstan.internal
#      curl -H 'Host: plain.example' 127.0.0.1:8088   |   curl -i -H 'Host: web.example' 127.0.0.1:8088 (308)
#      curl --cacert "${TMPDIR:-/tmp}/capstan-example-ca.pem" --resolve web.example:8443:127.0.0.1 https://web.example:8443
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

# The Ingress's TLS Secret, generated here: keys are never committed.
mkdir -p "$root/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=web.example" -addext "subjectAltName=DNS:web.example" \
  -keyout "$root/tls/key.pem" -out "$root/tls/cert.pem" 2>/dev/null
cp "$root/tls/cert.pem" "${TMPDIR:-/tmp}/capstan-example-ca.pem"
{
  printf 'apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\n'
  printf 'metadata: {name: web-tls, namespace: demo}\nstringData:\n  tls.crt: |\n'
  sed 's/^/    /' "$root/tls/cert.pem"
  printf '  tls.key: |\n'
  sed 's/^/    /' "$root/tls/key.pem"
} > "$root/tls/secret.yaml"

cargo run --release --locked --quiet -- run \
  --config examples/standalone/capstan.yaml \
  --manifests examples/manifests \
  --manifests "$root/tls" \
  --http 127.0.0.1:8088 \
  --https 127.0.0.1:8443 \
  --nodeport-addresses 127.0.0.1 \
  --dns 127.0.0.1:8053 \
  --healthz 127.0.0.1:10256 \
  "$@"
