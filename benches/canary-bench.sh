#!/usr/bin/env bash
# The price of the canary's request path: Gantry with a plain service and with a 95/5 canary
# split (overrides, sticky key, per-version metrics), against nginx, in one run of
# ../shared/bench/peer-bench.sh. Extra arguments go to peer-bench.sh, e.g. --instr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bench="${PEER_BENCH:-$root/../shared/bench/peer-bench.sh}"
[ -x "$bench" ] || { echo "peer-bench.sh not found at $bench (set PEER_BENCH)" >&2; exit 2; }
cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry
bin="$root/target/release/gantry"
exec "$bench" --peers "nginx1" \
  --candidate "plain=GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 exec $bin run --config $here/peer-bench.toml --listen {listen} --admin 127.0.0.1:0" \
  --candidate "canary=GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 exec $bin run --config $here/peer-bench-canary.toml --listen {listen} --admin 127.0.0.1:0" \
  "$@"
