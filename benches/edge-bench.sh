#!/usr/bin/env bash
# Every figure of docs/performance.md in one run, Gantry against nginx and HAProxy (one and two
# workers), with one release build:
#   1. ../shared/bench/peer-bench.sh (through benches/peer-bench.sh): HTTP/1.1 RPS and p99 with
#      1 and 2 workers, h2c RPS, callgrind instructions and syscalls per proxied request, memory
#      per 10k idle HTTP/1.1 keep-alive clients (5,000 held);
#   2. benches/idle-bench.sh: memory per 10k idle h2c clients (settings exchanged) and per 10k
#      idle TLS 1.3 clients, each mode in a run of its own;
#   3. benches/realistic-bench.sh: access log (to a file) and gzip on a 20 KB text answer, the
#      ratio to nginx against the plain-proxy ratio.
# Output: the three reports, also kept under OUT (default target/edge-bench/<time>).
# Takes about 25 minutes; loopback only; every process is stopped by PID by the scripts.
#   benches/edge-bench.sh            (IDLE=5000 ROUNDS=3 DURATION=8 to change the defaults)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
IDLE=${IDLE:-5000}; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}
cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry >&2
export GANTRY_BIN="$root/target/release/gantry"
out=${OUT:-$root/target/edge-bench/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$out"
echo "== 1. peer-bench: HTTP/1.1 (1 and 2 workers), h2c, instructions, idle HTTP/1.1 ($IDLE clients)"
"$here/peer-bench.sh" --peers "direct nginx1 nginx2 haproxy1 haproxy2" --h2 --instr \
  --idle "$IDLE" --rounds "$ROUNDS" --duration "$DURATION" 2>&1 | tee "$out/peer-bench.txt"
for mode in h2c tls; do
  echo "== 2. idle $mode clients ($IDLE)"
  MODES=$mode "$here/idle-bench.sh" "$IDLE" 2>&1 | tee "$out/idle-$mode.txt"
done
echo "== 3. access log and gzip on a 20 KB answer"
ROUNDS=$ROUNDS DURATION=$DURATION "$here/realistic-bench.sh" 2>&1 | tee "$out/realistic.txt"
echo "reports kept in $out"
