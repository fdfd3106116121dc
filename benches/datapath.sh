#!/usr/bin/env bash
# The Service data paths side by side, in network namespaces (root, iperf3): a pod reaching a pod
# directly, through a ClusterIP on the kernel path and on the user-space path, on a release
# build. Prints Gbit/s, whole-machine CPU seconds per GB and new connections per second, each
# with its ratio to direct. DATAPATH_SECONDS=N sets the length of each measurement (default 5).
# Usage: benches/datapath.sh   (Debian: apt-get install iperf3)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v iperf3 >/dev/null || { echo "needs iperf3 (apt-get install iperf3)" >&2; exit 1; }
cargo test --release --locked --test e2e datapath_direct_kernel_and_userspace -- --ignored --nocapture 2>&1 \
  | grep -E "^datapath|test result|skipped"
