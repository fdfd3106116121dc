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
for target in manifests config dns_query http1_response policy proxy_header cookie htpasswd; do
  mkdir -p "corpus/$target"
  cp -n corpus-seed/"$target"/* "corpus/$target/" 2>/dev/null || true
  # --dev: unoptimised build. The smoke run is about reaching the parsers with sanitizers on, and
  # an optimised build of the whole agent (rustls, aws-lc, hyper) takes most of CI's budget.
  cargo +nightly fuzz run --dev "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -max_len=8192
done
echo "fuzz smoke: passed"
