#!/usr/bin/env bash
# Memory per idle client connection: Gantry against nginx and HAProxy in one run, one worker
# each, loopback only. For each of
#   h2c   HTTP/2 with prior knowledge, settings exchanged both ways (SETTINGS + ACK), no request
#   tls   HTTP/1.1 over TLS 1.3 (ECDSA P-256), one request answered, then kept alive
# it opens N connections to each proxy and reports its RSS growth, as MB per 10,000 clients and
# as a ratio to nginx. (HTTP/1.1 in clear text: ../shared/bench/peer-bench.sh --idle N.)
# Every process started here is stopped by PID.
#   benches/idle-bench.sh [N]        (default 5000; MODES="tls" for one mode: each mode in a run of
#                                    its own keeps memory freed by the other out of its figure)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(cd "$here/.." && pwd)"
N=${1:-5000}
for t in nginx haproxy openssl python3 curl; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done
[ -n "${GANTRY_BIN:-}" ] || cargo build --release --manifest-path "$root/Cargo.toml" --bin gantry >&2
bin=${GANTRY_BIN:-$root/target/release/gantry}
work=$(mktemp -d /tmp/idle-bench.XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"
BODY="hello world hello world hello world hello world hello world 0123456789"
# Ports: backend 9301; h2c 9311 nginx, 9312 haproxy, 9313 gantry; tls 9321/9322/9323.
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 16000; }
http {
  access_log off;
  keepalive_timeout 600s; keepalive_requests 10000000;
  upstream be { server 127.0.0.1:9301; keepalive 64; }
  server { listen 127.0.0.1:9301; location / { return 200 "$BODY\n"; } }
  server { listen 127.0.0.1:9311 http2; location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:9321 ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
           ssl_protocols TLSv1.3;
           location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
  maxconn 9000
frontend h2c
  bind 127.0.0.1:9312 proto h2
  default_backend be
frontend tls
  bind 127.0.0.1:9322 ssl crt $work/both.pem ssl-min-ver TLSv1.3
  default_backend be
backend be
  server s1 127.0.0.1:9301
HAP
cat > "$work/gantry.toml" <<TOML
[entrypoints.h2c]
address = "127.0.0.1:9313"
[entrypoints.tls]
address = "127.0.0.1:9323"
tls = {}
[[tls.certificates]]
cert = "$work/cert.pem"
key = "$work/key.pem"
[routers.all]
service = "be"
[services.be]
backends = [{ url = "http://127.0.0.1:9301" }]
TOML
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!); nginx_pid=$!
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!); haproxy_pid=$!
GANTRY_LOG=warn TOKIO_WORKER_THREADS=1 "$bin" run --config "$work/gantry.toml" --admin 127.0.0.1:0 & pids+=($!); gantry_pid=$!
for p in $nginx_pid $haproxy_pid $gantry_pid; do
  sleep 0.5; [ -d "/proc/$p" ] || { echo "a proxy did not start:"; cat "$work/error.log" "$work/haproxy.log" 2>/dev/null; exit 1; } >&2
done
for port in 9311 9312 9313; do
  for i in $(seq 100); do curl -s --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
for port in 9321 9322 9323; do
  for i in $(seq 100); do curl -sk -o /dev/null "https://localhost:$port/" && break; sleep 0.1; done
done
cat > "$work/idle.py" <<'PY'
import asyncio, os, ssl, sys
mode, port, n, ready, release = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"       # empty SETTINGS
ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"            # SETTINGS ACK
REQ = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
async def frames(r):
    head = await r.readexactly(9)
    ln = int.from_bytes(head[:3], "big")
    body = await r.readexactly(ln)
    return head[3], head[4], body
async def one(sem):
    async with sem:
        try:
            if mode == "h2c":
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(PREFACE + SETTINGS); await w.drain()
                got_settings = got_ack = False
                while not (got_settings and got_ack):
                    typ, flags, _ = await asyncio.wait_for(frames(r), 10)
                    if typ == 4 and flags & 1: got_ack = True
                    elif typ == 4: got_settings = True; w.write(ACK); await w.drain()
            else:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10)
                w.write(REQ); await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                cl = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                await asyncio.wait_for(r.readexactly(cl[0] if cl else 0), 10)
            return w
        except Exception:
            return None
async def main():
    sem = asyncio.Semaphore(100)
    ws = await asyncio.gather(*[one(sem) for _ in range(n)])
    ok = [w for w in ws if w is not None]
    with open(ready + ".tmp", "w") as f: f.write(str(len(ok)))
    os.rename(ready + ".tmp", ready)
    for _ in range(1200):
        if os.path.exists(release): break
        await asyncio.sleep(0.1)
    for w in ok: w.close()
asyncio.run(main())
PY
# RSS of a process and its children (nginx's master and worker), in kB.
rss_kb() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
measure() { # mode name pid port -> "MB-per-10k held"
  local mode=$1 name=$2 pid=$3 port=$4 before after ok i
  rm -f "$work/ready" "$work/release"
  sleep 1; before=$(rss_kb "$pid")
  python3 "$work/idle.py" "$mode" "$port" "$N" "$work/ready" "$work/release" & local client=$!
  for (( i=0; i<1800; i++ )); do [ -f "$work/ready" ] && break; sleep 0.1; done
  sleep 2; after=$(rss_kb "$pid"); ok=$(cat "$work/ready" 2>/dev/null || echo 0)
  touch "$work/release"; wait "$client" 2>/dev/null || true
  echo "$mode $name: $ok connections, RSS $before -> $after kB" >&2
  echo "$(echo "($after - $before) / 1024 * 10000 / $ok" | bc -l) $ok"
}
printf '%-5s %-8s %10s %8s %8s\n' mode proxy "MB/10k" held "x nginx"
for mode in ${MODES:-h2c tls}; do
  base=9311; [ $mode = tls ] && base=9321
  declare -A mb=()
  for t in nginx:$nginx_pid:0 haproxy:$haproxy_pid:1 gantry:$gantry_pid:2; do
    IFS=: read -r name pid off <<<"$t"
    read -r m held < <(measure "$mode" "$name" "$pid" $((base + off)))
    mb[$name]=$m
    printf '%-5s %-8s %10.1f %8s %8.2f\n' "$mode" "$name" "$m" "$held" "$(echo "$m / ${mb[nginx]}" | bc -l)"
    sleep 1
  done
done
