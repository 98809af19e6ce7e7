#!/usr/bin/env bash
# Gantry against nginx and HAProxy on one backend, in one run (../shared/bench/peer-bench.sh).
# Builds the release binary, then passes Gantry with 1 and 2 worker threads as candidates.
# Extra arguments go to peer-bench.sh, e.g. --instr --idle 5000 --h2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bench="${PEER_BENCH:-$root/../shared/bench/peer-bench.sh}"
[ -x "$bench" ] || { echo "peer-bench.sh not found at $bench (set PEER_BENCH)" >&2; exit 2; }
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry
bin="${GANTRY_BIN:-$root/target/release/gantry}"
cfg="$here/peer-bench.toml"
exec "$bench" \
  --candidate "gantry1=GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 exec $bin run --config $cfg --listen {listen} --admin 127.0.0.1:0" \
  --candidate "gantry2=GANTRY_LOG=warn TOKIO_WORKER_THREADS=2 exec $bin run --config $cfg --listen {listen} --admin 127.0.0.1:0" \
  "$@"
