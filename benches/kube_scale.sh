#!/usr/bin/env bash
# Kubernetes-mode scale figures: 10,000 Services x 10 endpoints served by the fake API server
# (tests/e2e/support/kube_api.rs) to a release build of Capstan. Prints time to first ready,
# resident memory, and EndpointSlice change -> new endpoint serving latency.
# Usage: benches/kube_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked --test e2e kube_scale -- --ignored --nocapture 2>&1 \
  | grep -E "^kube scale|test result"
