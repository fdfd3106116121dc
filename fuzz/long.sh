#!/usr/bin/env bash
# Runs every fuzz target for MINUTES minutes each (default 10) from an optimised build with debug
# assertions, keeping the corpus in fuzz/corpus/<target> between runs, and prints per target the
# executions, executions per second and the corpus size. Exit status: nonzero on any crash (the
# crashing input is left in fuzz/artifacts/<target>).
# Usage: fuzz/long.sh [MINUTES] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
MINUTES=${1:-10}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(manifests config dns_query http1_response policy proxy_header cookie htpasswd)
export PATH="$HOME/.cargo/bin:$PATH"
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz long: needs a nightly toolchain"; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  cp -n corpus-seed/"$target"/* "corpus/$target/" 2>/dev/null || true
done
# -O: optimised; -a: with debug assertions (overflow checks included).
cargo +nightly fuzz build -O -a
printf '%-16s %10s %8s %8s %s\n' target runs per_sec corpus result
for target in "${TARGETS[@]}"; do
  log=$(mktemp)
  status=ok
  cargo +nightly fuzz run -O -a "$target" "corpus/$target" -- \
    -max_total_time=$((MINUTES * 60)) -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || status=CRASH
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  per_sec=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "corpus/$target" -type f | wc -l)
  printf '%-16s %10s %8s %8s %s\n' "$target" "$runs" "$per_sec" "$corpus" "$status"
  if [ "$status" != ok ]; then tail -40 "$log"; fi
  rm -f "$log"
done
