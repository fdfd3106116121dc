#!/usr/bin/env bash
# The README's first command as a newcomer runs it, from this checkout: `examples/standalone/run.sh`,
# then every line of the README's "With the example running" block, verbatim; then the README's
# "As an ordinary user" command, verbatim, as the unprivileged user `nobody`. Fails on the first
# line that does not do what the README says. Run by .ci/run; needs what the README's
# prerequisites install.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
example_pid=""
cleanup() {
  [ -n "$example_pid" ] && kill -- -"$example_pid" 2>/dev/null || true
  [ -n "${user_pid:-}" ] && kill "$user_pid" 2>/dev/null || true
}
trap cleanup EXIT

# A README block: the lines of the first ```sh fence after the line matching $1.
block() {
  awk -v start="$1" '
    index($0, start) { found = 1; next }
    found && /^```sh/ { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }
  ' README.md
}

# Up to $1 seconds (the first run builds the release binary: about 8 minutes on 2 cores).
wait_ready() {
  for _ in $(seq 1 "$1"); do
    curl -sf 127.0.0.1:9901/readyz >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "readme-example: Capstan never became ready"; tail -30 "$log"; return 1
}

# Command 1 (it builds the release binary first). Its own process group, to stop it whole.
setsid examples/standalone/run.sh >"$log" 2>&1 &
example_pid=$!
wait_ready 1800

checked=0
while IFS= read -r line; do
  command=${line%%#*}
  [ -z "${command// }" ] && continue
  out=$(bash -c "$command" 2>&1) || { echo "README line failed: $command"; echo "$out"; exit 1; }
  case "$command" in
    dig*) grep -Eq 'ANSWER: [1-9]' <<<"$out" || { echo "no answer: $command"; echo "$out"; exit 1; } ;;
    *"-i -H 'Host: web.example'"*) grep -q ' 308' <<<"$out" || { echo "no 308: $command"; echo "$out"; exit 1; } ;;
    *) [ -n "$out" ] && ! grep -Eq '^HTTP/[0-9.]+ [45]' <<<"$out" || { echo "bad answer: $command"; echo "$out"; exit 1; } ;;
  esac
  checked=$((checked + 1))
done < <(block "With the example running")
[ "$checked" -ge 10 ] || { echo "readme-example: only $checked README lines found"; exit 1; }
kill -- -"$example_pid"; wait "$example_pid" 2>/dev/null || true; example_pid=""

# The laptop command, as an ordinary user: no privileged port, no capability.
laptop=$(block "**As an ordinary user**" | tr -d '\\\n')
[ -n "$laptop" ] || { echo "readme-example: the ordinary-user command is not in the README"; exit 1; }
chmod o+rx . examples examples/standalone target target/release 2>/dev/null || true
setpriv --reuid=nobody --regid=nogroup --clear-groups bash -c "$laptop" >"$log" 2>&1 &
user_pid=$!
wait_ready 60
curl -sf 127.0.0.1:9901/debug/snapshot >/dev/null
dig @127.0.0.1 -p 8053 +short web.capstan.internal | grep -q . ||
  { echo "the ordinary user's Capstan does not answer DNS"; tail -30 "$log"; exit 1; }
echo "readme-example: $checked README lines answered as documented; the ordinary-user command runs as nobody"
