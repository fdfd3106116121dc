# Sourced by the load scripts in benches/ (from the repository's root): installs what they need,
# builds Capstan, and gives them a scratch directory, process cleanup and port helpers.
#   bench_setup COMMAND=PACKAGE ...   apt-installs each PACKAGE whose COMMAND is missing, installs
#                                     oha, builds Capstan (or takes $CAPSTAN: another build, e.g.
#                                     an earlier commit's, in the same harness), raises the fd limit.
# After it: $CAPSTAN, $work (removed at exit), pids+=(…) (killed at exit), free_port, wait_port.
bench_setup() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v oha >/dev/null || cargo install oha --locked
  if [ -z "${CAPSTAN:-}" ]; then
    cargo build --release --locked --quiet --bin capstan
    CAPSTAN=$PWD/target/release/capstan
  fi
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
