#!/usr/bin/env bash
# Smoke-runs every fuzz target for a short time (default 30 s each) from the seed corpus.
# Needs a nightly toolchain (cargo-fuzz uses sanitizers); installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-30}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz smoke: no nightly toolchain on this machine; skipped"
  exit 0
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in manifests config dns_query; do
  mkdir -p "corpus/$target"
  cp -n corpus-seed/"$target"/* "corpus/$target/" 2>/dev/null || true
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -max_len=8192
done
echo "fuzz smoke: passed"
