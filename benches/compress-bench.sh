#!/usr/bin/env bash
# Compression throughput: Gantry's `compress` middleware against nginx's gzip at the same level
# (6, both zlib-compatible deflate), one worker each, on the same 100 KB text response from the
# same static backend (nginx, 1 worker, no gzip). Loopback only; every process started here is
# stopped by PID. For each target and coding: requests/s, the proxy's own CPU per request
# (/proc utime+stime) and the throughput that makes, in MB of uncompressed input per CPU-second
# (per core), and the compressed size. Brotli (quality 4) and zstd (level 3) are Gantry's only.
#   BIN=path/to/gantry ROUNDS=3 DURATION=8 benches/compress-bench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}
for t in nginx wrk curl; do command -v $t >/dev/null || { echo "needs $t (apt-get install nginx-light wrk curl)" >&2; exit 2; }; done
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry >&2
  BIN="$root/target/release/gantry"
fi
work=$(mktemp -d /tmp/compress-bench.XXXX); pids=()
chmod 755 "$work"   # nginx's workers run as www-data
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# 100 KB of real text (the project's docs and sources), not a repeated line.
mkdir -p "$work/www"
cat "$root"/README.md "$root"/docs/*.md "$root"/proxy/src/*.rs > "$work/all.txt"
head -c 102400 "$work/all.txt" > "$work/www/page.txt"
SIZE=$(stat -c %s "$work/www/page.txt")
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  upstream be { server 127.0.0.1:9301; keepalive 64; }
  server {
    listen 127.0.0.1:9302;
    keepalive_requests 10000000;
    gzip on; gzip_comp_level 6; gzip_types text/plain; gzip_proxied any; gzip_min_length 1024;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
cat > "$work/backend.conf" <<NGX
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend-error.log;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; server { listen 127.0.0.1:9301; root $work/www; keepalive_requests 10000000; } }
NGX
cat > "$work/gantry.toml" <<TOML
[entrypoints.web]
address = "127.0.0.1:9303"
[admin]
address = "127.0.0.1:9304"
[routers.all]
service = "be"
middlewares = ["zip"]
[services.be]
backends = [{ url = "http://127.0.0.1:9301" }]
[middlewares.zip.compress]
encodings = ["gzip", "br", "zstd"]
TOML
nginx -c "$work/backend.conf" -p "$work" & pids+=($!); backend_pid=$!
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!); nginx_pid=$!
GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 "$BIN" run --config "$work/gantry.toml" & pids+=($!); gantry_pid=$!
for port in 9301 9302 9303; do
  for i in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/page.txt" && break; sleep 0.1; done
done
for port in 9301 9302 9303; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/page.txt")
  [ "$got" = "200 $SIZE" ] || { echo "port $port answers \"$got\", not 200 with $SIZE bytes" >&2; exit 1; }
done
# nginx's master forks the worker: measure the worker.
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
# name port pid coding -> "rps cpu_us_per_req"
run() {
  local before after out reqs
  before=$(cpu "$3")
  out=$(wrk -t1 -c8 -d"${DURATION}s" -H "Accept-Encoding: $4" "http://127.0.0.1:$2/page.txt")
  after=$(cpu "$3")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$reqs" -v d="$DURATION" -v c=$((after - before)) -v t="$tck" \
    'BEGIN { printf "%d %.1f\n", r / d, c / t * 1e6 / r }'
}
size() { curl -s -H "Accept-Encoding: $2" "http://127.0.0.1:$1/page.txt" | wc -c; }
declare -A rps cpu
targets=("nginx-gzip 9302 $nginx_worker gzip" "gantry-gzip 9303 $gantry_pid gzip" \
         "gantry-br 9303 $gantry_pid br" "gantry-zstd 9303 $gantry_pid zstd" \
         "gantry-identity 9303 $gantry_pid identity")
for t in "${targets[@]}"; do set -- $t; run "$1" "$2" "$3" "$4" >/dev/null; done   # warm-up
for r in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    set -- $t
    read -r a b < <(run "$1" "$2" "$3" "$4")
    rps[$1]+="$a "; cpu[$1]+="$b "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "input %d bytes; %d rounds x %ss; one worker each\n" "$SIZE" "$ROUNDS" "$DURATION"
printf "%-16s %8s %10s %12s %10s %8s\n" target rps "cpu us/r" "MB/s/core" "bytes out" "x nginx"
ref=""
for t in "${targets[@]}"; do
  set -- $t
  m_rps=$(median <<<"${rps[$1]}"); m_cpu=$(median <<<"${cpu[$1]}")
  mbs=$(awk -v s="$SIZE" -v c="$m_cpu" 'BEGIN { printf "%.1f", s / c }')
  [ -z "$ref" ] && ref=$mbs
  printf "%-16s %8s %10s %12s %10s %8s\n" "$1" "$m_rps" "$m_cpu" "$mbs" "$(size "$2" "$4")" \
    "$(awk -v a="$mbs" -v b="$ref" 'BEGIN { printf "%.2f", a / b }')"
done
