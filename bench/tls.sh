#!/usr/bin/env bash
# HTTPS benchmark: convoy (HTTP listener with `[listeners.tls]`, rustls)
# against HAProxy `mode http` with `bind ... ssl` (OpenSSL), both
# terminating TLS with the same ECDSA P-256 self-signed certificate in
# front of the same plain-HTTP nginx origin, all on loopback, interleaved
# in one run. How to read the figures: bench/RESULTS.md.
#
#   bench/tls.sh [rounds]       (default 3 rounds; needs a release build)
#
# Prints, per proxy and round:
#   instr/req     callgrind instructions per HTTPS keep-alive request:
#                 one TLS connection (HTTP/1.1), 100 warm-up requests,
#                 callgrind_control -z, 2000 requests, callgrind_control -d
#                 (the handshake is not counted)
#   instr/hs      callgrind instructions per new connection: 200 fresh TLS
#                 connections, each a full handshake (no resumption) + one
#                 request + close, after 20 warm-up connections
#   h1_us/req     proxy CPU µs per request (utime+stime from /proc/PID/stat)
#                 over `h2load --h1 -n 300000 -c 50 -t 1` (keep-alive)
#   h1_req/s      h2load's req/s of that run
#   h2_us/req     same over HTTP/2: `h2load -n 300000 -c 10 -m 10 -t 1`
#   h2_req/s      h2load's req/s of that run
#   hs/s          new TLS connections per second: `ab -n 10000 -c 10` without
#                 -k, i.e. one full handshake + one request per connection
#   us/hs         proxy CPU µs per such connection over that ab run
#
# The client is the same for both proxies in every figure. Both proxies
# follow the client's cipher-suite order (rustls does by default; HAProxy
# gets `prefer-client-ciphers`), so each client negotiates the same TLS 1.3
# suite and key exchange with both; the script prints what was negotiated.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx ab h2load openssl python3 valgrind callgrind_control; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx apache2-utils nghttp2-client openssl valgrind"; exit 1; }
done

W=$(mktemp -d)
# Proxies are started inside $(...) subshells: their PIDs go to $W/pids so
# that the EXIT trap also stops them (and their children) after an error.
cleanup() {
  local p
  for p in $(cat "$W/pids" 2>/dev/null) $(jobs -p); do
    kill $(pgrep -P "$p") "$p" 2>/dev/null || true
  done
  sleep 0.3; rm -rf "$W"
}
trap cleanup EXIT
ORIGIN=18401; HAP=18402; CONVOY=18403
N_KA=2000; N_HS=200; N_LOAD=300000; N_AB=10000


. bench/lib.sh
tls_cert
origin_conf "$W" $ORIGIN
cat > "$W/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  http-reuse always
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$HAP ssl crt $W/haproxy.pem alpn h2,http/1.1 prefer-client-ciphers
  default_backend b
backend b
  server o 127.0.0.1:$ORIGIN
HA
cat > "$W/convoy.toml" <<CV
[node]
workers = 1
log_format = "json"

[admin]
enabled = false

[[listeners]]
name = "tls"
protocol = "http"
address = "127.0.0.1:$CONVOY"
pool = "web"
max_connections = 100000
[listeners.tls]
certificates = [ { cert = "$W/cert.pem", key = "$W/key.pem" } ]

[pools.web]
health = { check = "none" }
[[pools.web.servers]]
address = "127.0.0.1:$ORIGIN"
CV

# Callgrind client: sequential HTTP/1.1 requests over TLS (Python's ssl,
# i.e. OpenSSL; TLS 1.3; no session is ever offered back, so every new
# connection is a full handshake). It zeroes and dumps the proxy's
# counters itself, so only the measured requests are counted.
cat > "$W/cgclient.py" <<'PY'
import re, socket, ssl, subprocess, sys
port, pids, n, mode = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
REQ = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
CL = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")

def get(s, buf=b""):
    s.sendall(REQ)
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"): raise SystemExit(head.decode(errors="replace"))
    cl = int(CL.search(head).group(1))
    while len(rest) < cl:
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        rest += d
    return rest[cl:]

def conn():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    assert s.session_reused is False
    return s

def cg(op):
    for p in pids:
        subprocess.run(["callgrind_control", op, p], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

if mode == "keepalive":
    s = conn(); buf = b""
    for _ in range(100): buf = get(s, buf)
    print("python ssl:", s.version(), s.cipher()[0], s.selected_alpn_protocol())
    cg("-z")
    for _ in range(n): buf = get(s, buf)
    cg("-d")
    s.close()
else:
    for _ in range(20):
        s = conn(); get(s); s.close()
    cg("-z")
    for _ in range(n):
        s = conn(); get(s); s.close()
    cg("-d")
PY

nginx -c "$W/nginx.conf" &
sleep 0.5

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up"; exit 1; }

start_proxy() { # name valgrind? -> sets PID
  local name=$1 vg=${2:-}
  local pre=()
  [ -n "$vg" ] && pre=(valgrind --tool=callgrind --callgrind-out-file="$W/cg.$name.%p" -q)
  case $name in
    haproxy) "${pre[@]}" haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PID=$!; wait_port $HAP;;
    convoy)  CONVOY_LOG=warn "${pre[@]}" "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 & PID=$!; wait_port $CONVOY;;
  esac
  echo "$PID" >> "$W/pids"
}
port_of() { case $1 in haproxy) echo $HAP;; convoy) echo $CONVOY;; esac; }
stop_proxy() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; sed -i "/^$PID\$/d" "$W/pids"; }
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)

instr() { # name mode n -> instructions per request / per connection
  start_proxy "$1" vg
  python3 "$W/cgclient.py" "$(port_of "$1")" "$PID" "$3" "$2" >>"$W/negotiated.$1"
  sleep 0.3
  local total
  total=$(cat "$W"/cg."$1".* | awk '/^summary:/ {s+=$2} END {print s+0}')
  stop_proxy
  rm -f "$W"/cg."$1".*
  echo $(( total / $3 ))
}

load_cpu() { # name h1|h2 -> "us_per_req req_per_s"
  local url="https://127.0.0.1:$(port_of "$1")/" args
  if [ "$2" = h1 ]; then args=(--h1 -c 50 -t 1); else args=(-c 10 -m 10 -t 1); fi
  start_proxy "$1"
  h2load "${args[@]}" -n 5000 "$url" >/dev/null 2>&1           # warm-up
  local t0; t0=$(cpu_ticks $PID)
  local out; out=$(h2load "${args[@]}" -n $N_LOAD "$url" 2>&1)
  local t1; t1=$(cpu_ticks $PID)
  stop_proxy
  echo "h2load $2: $(echo "$out" | grep -E '^(TLS Protocol|Cipher|Server Temp Key|Application protocol):' | tr '\n' ' ')" >> "$W/negotiated.$1"
  local ok; ok=$(echo "$out" | awk '/^requests:/ {print $8}')
  [ "$ok" = "$N_LOAD" ] || { echo "h2load $1 $2: $ok of $N_LOAD succeeded" >&2; echo "$out" >&2; exit 1; }
  local rps; rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  awk -v d=$((t1-t0)) -v hz="$HZ" -v r="$N_LOAD" -v rps="$rps" 'BEGIN { printf "%.2f %.0f\n", d/hz*1e6/r, rps }'
}

handshakes() { # name -> "conn_per_s us_per_conn"
  local url="https://127.0.0.1:$(port_of "$1")/"
  start_proxy "$1"
  ab -n 300 -c 10 "$url" >/dev/null 2>&1                        # warm-up
  local t0; t0=$(cpu_ticks $PID)
  local out; out=$(ab -n $N_AB -c 10 "$url" 2>&1)
  local t1; t1=$(cpu_ticks $PID)
  stop_proxy
  echo "ab: $(echo "$out" | grep -E '^(SSL/TLS Protocol|Server Temp Key):' | tr '\n' ' ')" >> "$W/negotiated.$1"
  local failed; failed=$(echo "$out" | awk '/^Failed requests:/ {print $3}')
  local done_; done_=$(echo "$out" | awk '/^Complete requests:/ {print $3}')
  [ "$failed" = 0 ] && [ "$done_" = "$N_AB" ] || { echo "ab $1: $done_ complete, $failed failed" >&2; echo "$out" >&2; exit 1; }
  local rps; rps=$(echo "$out" | awk '/^Requests per second:/ {print $4}')
  awk -v d=$((t1-t0)) -v hz="$HZ" -v r="$N_AB" -v rps="$rps" 'BEGIN { printf "%.0f %.1f\n", rps, d/hz*1e6/r }'
}

echo "# convoy $($BIN --version | cut -d' ' -f2) (rustls/ring) vs $(haproxy -v | head -1 | cut -d' ' -f1-3) ($(openssl version | cut -d' ' -f1-2)), ECDSA P-256, $(date -u +%F), $(nproc) cores"
echo "round proxy instr/req instr/hs h1_us/req h1_req/s h2_us/req h2_req/s hs/s us/hs"
for r in $(seq "$ROUNDS"); do
  for p in haproxy convoy; do
    i=$(instr $p keepalive $N_KA); h=$(instr $p handshake $N_HS)
    c1=$(load_cpu $p h1); c2=$(load_cpu $p h2); s=$(handshakes $p)
    echo "$r $p $i $h $c1 $c2 $s"
  done
done
echo "# negotiated (all rounds):"
for p in haproxy convoy; do sort -u "$W/negotiated.$p" | tr -s ' ' | sed "s/^/#   $p /"; done
