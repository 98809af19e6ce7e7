#!/usr/bin/env bash
# A realistic configuration against the plain proxy: Gantry and nginx, one worker each, on the
# same 20 KB text answer from the same static backend (nginx, 1 worker), each first as a plain
# proxy and then with its access log on (to a file, each side's default format) and gzip at
# level 6 for clients that accept it. Issue 22 asks that Gantry's ratio to nginx with the
# realistic configuration stay within 10% of its plain-proxy ratio. Rounds are interleaved
# (every target once per round), figures are medians: requests/s (wrk -t1 -c50) and the
# proxy's own CPU per request (/proc utime+stime), and the ratios to nginx's same configuration.
# Loopback only; every process started here is stopped by PID.
#   GANTRY_BIN=path/to/gantry ROUNDS=3 DURATION=8 benches/realistic-bench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}; CONNS=${CONNS:-50}
for t in nginx wrk curl; do command -v $t >/dev/null || { echo "needs $t (apt-get install nginx-light wrk curl)" >&2; exit 2; }; done
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry >&2
bin=${GANTRY_BIN:-$root/target/release/gantry}
work=$(mktemp -d /tmp/realistic-bench.XXXX); pids=()
chmod 755 "$work"   # nginx's workers run as www-data
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# 20 KB of real text (the project's docs and sources), not a repeated line.
mkdir -p "$work/www" "$work/logs"; chmod 777 "$work/logs"
cat "$root"/README.md "$root"/docs/*.md "$root"/proxy/src/*.rs > "$work/all.txt"
head -c 20480 "$work/all.txt" > "$work/www/page.txt"
SIZE=$(stat -c %s "$work/www/page.txt")
# Ports: backend 9401; nginx plain 9402, realistic 9403; Gantry plain 9404, realistic 9405.
# The compressed sizes are printed at the end: both sides compress the same text at level 6.
proxy_loc='location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }'
nginx_conf() { # file port extra
  cat > "$1" <<NGX
worker_processes 1; daemon off; pid $1.pid; error_log $work/logs/error-$2.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  upstream be { server 127.0.0.1:9401; keepalive 64; }
  server { listen 127.0.0.1:$2; keepalive_requests 10000000; $3 $proxy_loc }
}
NGX
}
nginx_conf "$work/plain.conf" 9402 ""
nginx_conf "$work/real.conf" 9403 "access_log $work/logs/nginx-access.log; gzip on; gzip_comp_level 6; gzip_types text/plain; gzip_proxied any; gzip_min_length 1024;"
cat > "$work/backend.conf" <<NGX
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/logs/backend-error.log;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; server { listen 127.0.0.1:9401; root $work/www; keepalive_requests 10000000; } }
NGX
gantry_conf() { # file port admin extra-top router-extra
  cat > "$1" <<TOML
$4
[entrypoints.web]
address = "127.0.0.1:$2"
[admin]
address = "127.0.0.1:$3"
[routers.all]
service = "be"
$5
[services.be]
backends = [{ url = "http://127.0.0.1:9401" }]
[middlewares.zip.compress]
encodings = ["gzip"]
TOML
}
gantry_conf "$work/plain.toml" 9404 9414 "" ""
gantry_conf "$work/real.toml" 9405 9415 "[access_log]
path = \"$work/logs/gantry-access.log\"" 'middlewares = ["zip"]'
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
nginx -c "$work/plain.conf" -p "$work" & pids+=($!); np=$!
nginx -c "$work/real.conf" -p "$work" & pids+=($!); nr=$!
GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 "$bin" run --config "$work/plain.toml" & pids+=($!); gp=$!
GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 "$bin" run --config "$work/real.toml" & pids+=($!); gr=$!
for port in 9401 9402 9403 9404 9405; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/page.txt" && break; sleep 0.1; done
done
# Every target answers the page, and the realistic ones gzip it.
for port in 9402 9403 9404 9405; do
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/page.txt")
  [ "$got" = "200 $SIZE" ] || { echo "port $port answers \"$got\", not 200 with $SIZE bytes" >&2; exit 1; }
done
for port in 9403 9405; do
  enc=$(curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/page.txt" | tr -d '\r' | awk -F': ' 'tolower($1)=="content-encoding" {print $2}')
  [ "$enc" = gzip ] || { echo "port $port does not gzip (\"$enc\")" >&2; exit 1; }
done
worker() { pgrep -P "$1" | head -1; }   # nginx's master forks the worker: measure the worker
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
run() { # port pid -> "rps cpu_us_per_req"
  local before after out reqs
  before=$(cpu "$2")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H 'Accept-Encoding: gzip' "http://127.0.0.1:$1/page.txt")
  after=$(cpu "$2")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$reqs" -v d="$DURATION" -v c=$((after - before)) -v t="$tck" \
    'BEGIN { printf "%d %.1f\n", r / d, c / t * 1e6 / r }'
}
targets=("nginx-plain 9402 $(worker $np)" "gantry-plain 9404 $gp" "nginx-real 9403 $(worker $nr)" "gantry-real 9405 $gr")
declare -A rps cpu
for t in "${targets[@]}"; do set -- $t; run "$2" "$3" >/dev/null; done   # warm-up
for r in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    set -- $t
    read -r a b < <(run "$2" "$3")
    rps[$1]+="$a "; cpu[$1]+="$b "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "20 KB text answer (%d bytes), Accept-Encoding: gzip; %d rounds x %ss; wrk -t1 -c%d; one worker each\n" "$SIZE" "$ROUNDS" "$DURATION" "$CONNS"
printf "%-14s %8s %10s\n" target rps "cpu us/r"
for t in "${targets[@]}"; do set -- $t; printf "%-14s %8s %10s\n" "$1" "$(median <<<"${rps[$1]}")" "$(median <<<"${cpu[$1]}")"; done
for c in plain real; do
  printf "%s: Gantry/nginx RPS %.2f, CPU per request %.2f\n" "$c" \
    "$(awk -v a="$(median <<<"${rps[gantry-$c]}")" -v b="$(median <<<"${rps[nginx-$c]}")" 'BEGIN {print a/b}')" \
    "$(awk -v a="$(median <<<"${cpu[gantry-$c]}")" -v b="$(median <<<"${cpu[nginx-$c]}")" 'BEGIN {print a/b}')"
done
awk -v gp="$(median <<<"${rps[gantry-plain]}")" -v np="$(median <<<"${rps[nginx-plain]}")" \
    -v gr="$(median <<<"${rps[gantry-real]}")" -v nr="$(median <<<"${rps[nginx-real]}")" \
    -v cgp="$(median <<<"${cpu[gantry-plain]}")" -v cnp="$(median <<<"${cpu[nginx-plain]}")" \
    -v cgr="$(median <<<"${cpu[gantry-real]}")" -v cnr="$(median <<<"${cpu[nginx-real]}")" \
    'BEGIN { printf "realistic ratio / plain ratio: RPS %.2f, CPU per request %.2f (within 10%%: 0.90..1.10)\n", (gr/nr)/(gp/np), (cgr/cnr)/(cgp/cnp) }'
for port in 9403 9405; do
  printf "gzip answer on port %s: %d bytes\n" "$port" "$(curl -s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/page.txt" | wc -c)"
done
for f in nginx-access gantry-access; do printf "%s: %d lines\n" "$f" "$(wc -l < "$work/logs/$f.log")"; done
