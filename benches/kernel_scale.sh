#!/usr/bin/env bash
# Kernel data path scale figures (root: network namespaces and nftables): 10,000 ClusterIP
# Services x 10 endpoints from the fake API server to a release build of Capstan in a node
# namespace. Prints the first full sync, time until a pod's connection is served through the
# kernel, resident memory, and EndpointSlice change -> new endpoint serving latency.
# Usage: benches/kernel_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked --test e2e kernel_scale -- --ignored --nocapture 2>&1 \
  | grep -E "^kernel scale|test result"
