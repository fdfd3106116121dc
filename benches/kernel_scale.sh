#!/usr/bin/env bash
# Kernel data path scale figures (root: network namespaces and nftables): 10,000 ClusterIP
# Services x 10 endpoints from the fake API server to a release build of Capstan in a node
# namespace. Prints the first full sync, time until a pod's connection is served through the
# kernel, resident memory, and EndpointSlice change -> new endpoint serving latency, for both
# --kernel-programmer netlink and nft.
# Usage: benches/kernel_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Both ways of writing the table, in one run: netlink batches from Capstan (the default) and
# the same transactions through `nft -f -`.
for programmer in netlink nft; do
  CAPSTAN_KERNEL_PROGRAMMER=$programmer \
    cargo test --release --locked --test e2e kernel_scale -- --ignored --nocapture 2>&1 \
    | grep -E "^kernel scale|test result"
done
