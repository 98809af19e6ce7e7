#!/usr/bin/env bash
# TLS: Gantry against nginx in one run, one worker each, same ECDSA P-256 certificate, same
# backend (nginx `return 200`, 1 worker). Loopback only; every process started here is stopped
# by PID. Prints medians over interleaved rounds and ratios to nginx.
#   handshakes  wrk -H 'Connection: close': every request is a new TLS connection (full handshake)
#   https-h1    wrk keep-alive over TLS
#   https-h2    h2load over TLS (ALPN h2), 10 connections x 10 streams
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}
for t in nginx wrk h2load openssl; do command -v $t >/dev/null || { echo "needs $t (apt-get install nginx-light wrk nghttp2-client openssl)" >&2; exit 2; }; done
cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry >&2
work=$(mktemp -d /tmp/tls-bench.XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream be { server 127.0.0.1:9201; keepalive 64; }
  server { listen 127.0.0.1:9201; location / { return 200 "hello world hello world hello world hello world hello world 0123456789\n"; } }
  server {
    listen 127.0.0.1:9443 ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    # nginx closes a connection after 1000 requests by default; h2load does not reconnect.
    keepalive_requests 10000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
cat > "$work/gantry.toml" <<TOML
[entrypoints.websecure]
address = "127.0.0.1:9444"
tls = {}
[admin]
address = "127.0.0.1:9445"
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[routers.all]
service = "be"
[services.be]
backends = [{ url = "http://127.0.0.1:9201" }]
TOML
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 "$root/target/release/gantry" run --config "$work/gantry.toml" & pids+=($!)
for port in 9443 9444; do
  for i in $(seq 100); do curl -sk -o /dev/null "https://localhost:$port/" && break; sleep 0.1; done
done
declare -A res
run() { # name port kind -> requests/s
  case $3 in
    handshakes) wrk -t1 -c32 -d"${DURATION}s" -H 'Connection: close' "https://localhost:$2/" | awk '/Requests\/sec/ {print int($2)}' ;;
    https-h1) wrk -t1 -c50 -d"${DURATION}s" "https://localhost:$2/" | awk '/Requests\/sec/ {print int($2)}' ;;
    https-h2) h2load -c10 -m10 -D "$DURATION" "https://localhost:$2/" 2>/dev/null | awk '/^finished in/ {gsub(",","",$4); print int($4)}' ;;
  esac
}
for r in $(seq "$ROUNDS"); do
  for kind in handshakes https-h1 https-h2; do
    for t in nginx:9443 gantry:9444; do
      name=${t%%:*}; port=${t##*:}
      v=$(run "$name" "$port" "$kind"); res[$kind,$name]="${res[$kind,$name]:-} $v"
      echo "round $r $kind $name: $v/s" >&2
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-11s %10s %10s %8s\n' test nginx gantry "x nginx"
for kind in handshakes https-h1 https-h2; do
  n=$(echo "${res[$kind,nginx]}" | median); g=$(echo "${res[$kind,gantry]}" | median)
  printf '%-11s %10s %10s %8.2f\n' "$kind" "$n" "$g" "$(echo "$g / $n" | bc -l)"
done
