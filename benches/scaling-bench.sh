#!/usr/bin/env bash
# The price of scaling's demand signals on the request path: Gantry before them (BEFORE=<binary>,
# optional), Gantry now with a plain service and with a scaled one (sampled every 100 ms,
# recommended every second), against nginx, in one run of ../shared/bench/peer-bench.sh. Extra
# arguments go to peer-bench.sh, e.g. --instr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bench="${PEER_BENCH:-$root/../shared/bench/peer-bench.sh}"
[ -x "$bench" ] || { echo "peer-bench.sh not found at $bench (set PEER_BENCH)" >&2; exit 2; }
cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry
bin="$root/target/release/gantry"
run="GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 exec"
before=()
if [ -n "${BEFORE:-}" ]; then
  before=(--candidate "before=$run $BEFORE run --config $here/peer-bench.toml --listen {listen} --admin 127.0.0.1:0")
fi
exec "$bench" --peers "nginx1" "${before[@]}" \
  --candidate "plain=$run $bin run --config $here/peer-bench.toml --listen {listen} --admin 127.0.0.1:0" \
  --candidate "scaled=$run $bin run --config $here/peer-bench-scale.toml --listen {listen} --admin 127.0.0.1:0" \
  "$@"
