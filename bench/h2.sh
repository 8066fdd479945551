#!/usr/bin/env bash
# HTTP/2 from clients: convoy against HAProxy `mode http`, both in front
# of the same nginx origin (HTTP/1.1 keep-alive to it), all on loopback,
# alternating in one run. How to read the figures: bench/RESULTS.md.
#
#   bench/h2.sh [rounds]        (default 4; needs a release build)
#
# Prints, per proxy and round:
#   h2c_instr/req  callgrind instructions per request over h2c (prior
#                  knowledge; HAProxy `bind ... proto h2`): `h2load -n 4000
#                  -c 1 -m 10` after 500 warm-up requests, counted between
#                  callgrind_control -z and -d
#   tls_us/req     proxy CPU µs per request (utime+stime from
#                  /proc/PID/stat) over TLS with ALPN h2 (one ECDSA P-256
#                  certificate for both): `h2load -n 200000 -c 10 -m 10 -t 1`
#                  after 5000 warm-up requests
#   tls_req/s      h2load's req/s of that run
# Each figure comes from a fresh proxy process; the rounds alternate
# HAProxy and convoy so that the machine's drift hits both.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${1:-4}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
need_tools "haproxy nginx nghttp2-client openssl valgrind" \
  haproxy nginx h2load openssl valgrind callgrind_control
bench_workdir
ORIGIN=18501; HAP_C=18502; HAP_T=18503; CV_C=18504; CV_T=18505
N_CG=4000; N_LOAD=200000

tls_cert
origin_conf "$W" $ORIGIN
mkdir -p "$W/c" "$W/t"
haproxy_http_conf "$W/c" $HAP_C $ORIGIN 4000 "" "proto h2"
haproxy_http_conf "$W/t" $HAP_T $ORIGIN 4000 "" "ssl crt $W/haproxy.pem alpn h2,http/1.1 prefer-client-ciphers"
convoy_conf() { # file port tls?
  cat > "$1" <<CV
[node]
workers = 1
log_format = "json"

[admin]
enabled = false

[[listeners]]
name = "web"
protocol = "http"
address = "127.0.0.1:$2"
pool = "web"
max_connections = 100000
CV
  [ -n "${3:-}" ] && cat >> "$1" <<CV
[listeners.tls]
certificates = [ { cert = "$W/cert.pem", key = "$W/key.pem" } ]
CV
  cat >> "$1" <<CV

[pools.web]
health = { check = "none" }
[[pools.web.servers]]
address = "127.0.0.1:$ORIGIN"
CV
}
convoy_conf "$W/c.toml" $CV_C
convoy_conf "$W/t.toml" $CV_T tls

nginx -c "$W/nginx.conf" &
echo $! >> "$W/pids"
wait_port $ORIGIN

start() { # name c|t [valgrind] -> PID, PORT
  local pre=()
  [ -n "${3:-}" ] && pre=(valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" -q)
  case $1 in
    haproxy) "${pre[@]}" haproxy -f "$W/$2/haproxy.cfg" -db >/dev/null 2>&1 & PID=$!
             if [ "$2" = c ]; then PORT=$HAP_C; else PORT=$HAP_T; fi;;
    convoy)  CONVOY_LOG=warn "${pre[@]}" "$BIN" run -c "$W/$2.toml" >/dev/null 2>&1 & PID=$!
             if [ "$2" = c ]; then PORT=$CV_C; else PORT=$CV_T; fi;;
  esac
  echo "$PID" >> "$W/pids"
  wait_port $PORT
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; sed -i "/^$PID\$/d" "$W/pids"; }
check() { # h2load output, n
  local ok; ok=$(echo "$1" | awk '/^requests:/ {print $8}')
  [ "$ok" = "$2" ] || { echo "h2load: $ok of $2 succeeded" >&2; echo "$1" >&2; exit 1; }
}

instr() { # name -> instructions per h2c request
  start "$1" c vg
  h2load -n 500 -c 1 -m 10 "http://127.0.0.1:$PORT/" >/dev/null 2>&1
  callgrind_control -z "$PID" >/dev/null 2>&1
  local out; out=$(h2load -n $N_CG -c 1 -m 10 "http://127.0.0.1:$PORT/" 2>&1)
  callgrind_control -d "$PID" >/dev/null 2>&1
  check "$out" $N_CG
  sleep 0.3
  local total; total=$(cat "$W"/cg.* | awk '/^summary:/ {s+=$2} END {print s+0}')
  stop; rm -f "$W"/cg.*
  echo $(( total / N_CG ))
}

cpu() { # name -> "us_per_req req_per_s" over TLS
  start "$1" t
  local url="https://127.0.0.1:$PORT/" args=(-c 10 -m 10 -t 1)
  h2load "${args[@]}" -n 5000 "$url" >/dev/null 2>&1
  local t0; t0=$(awk '{print $14+$15}' /proc/$PID/stat)
  local out; out=$(h2load "${args[@]}" -n $N_LOAD "$url" 2>&1)
  local t1; t1=$(awk '{print $14+$15}' /proc/$PID/stat)
  stop
  check "$out" $N_LOAD
  echo "$out" | grep -q '^Application protocol: h2' || { echo "not h2: $out" >&2; exit 1; }
  local rps; rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  awk -v d=$((t1-t0)) -v hz="$(getconf CLK_TCK)" -v r=$N_LOAD -v rps="$rps" \
    'BEGIN { printf "%.2f %.0f\n", d/hz*1e6/r, rps }'
}

echo "# convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), h2load $(h2load --version | awk '{print $2; exit}'), $(date -u +%F), $(nproc) cores"
echo "round proxy h2c_instr/req tls_us/req tls_req/s"
for r in $(seq "$ROUNDS"); do
  for p in haproxy convoy; do
    echo "$r $p $(instr $p) $(cpu $p)"
  done
done
