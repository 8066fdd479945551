#!/usr/bin/env bash
# Memory per idle connection, convoy against HAProxy 2.6 in one run, one
# nginx origin, all on loopback:
#  - HTTP keep-alive (`protocol = "http"` / `mode http`) at about 10,000
#    connections: each sends one request, reads the answer and stays open;
#  - TCP (`protocol = "tcp"` / `mode tcp`) at about 10,000: each carries one
#    request and answer end to end and stays open (a TCP connection holds
#    a server connection too: two descriptors each);
#  - HTTPS keep-alive (TLS 1.3, the same ECDSA P-256 certificate for both;
#    HAProxy with OpenSSL, convoy with rustls) at 4,900 by default: like
#    HTTP, after a full handshake each (TLS connections do not park);
#  - HTTP/2 over TLS (ALPN h2, as browsers connect) at 4,900: one GET
#    each, its answer read, the connection then idle.
# The proxy's RSS is read before and after, and so is the heap glibc's
# malloc has handed out (through gdb: the memory the connections hold, as
# opposed to the high-water mark RSS keeps); the client's time to open and
# use all the connections is printed as a rate (connections/s through the
# proxy, one Python client: a comparison, not the proxy's limit).
# How to read the figures: bench/RESULTS.md.
#
#   bench/idle.sh [http] [tcp] [https] [h2]    (connections of each kind)
#   (defaults 9900, 9800, 4900 and 4900: about the most HAProxy takes under
#   this machine's hard descriptor limit of 20000; TLS lower because the
#   one Python client makes ~500 handshakes a second; 0 skips a kind;
#   needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9900}
NT=${2:-9800}
NS=${3:-4900}
NH2=${4:-4900}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx python3 openssl; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx openssl"; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18281; HAP=18282; CONVOY=18283; HAP_T=18284; CONVOY_T=18285; HAP_S=18286; CONVOY_S=18287

. bench/lib.sh
tls_cert
origin_conf "$W" $ORIGIN
sed -i 's/worker_connections 4096/worker_connections 19000/' "$W/nginx.conf"
haproxy_http_conf "$W" $HAP $ORIGIN 9990 "  fd-hard-limit 20000"
cat >> "$W/haproxy.cfg" <<HA
frontend ft
  mode tcp
  bind 127.0.0.1:$HAP_T
  default_backend bt
backend bt
  mode tcp
  server o 127.0.0.1:$ORIGIN
frontend fs
  mode http
  bind 127.0.0.1:$HAP_S ssl crt $W/haproxy.pem alpn h2,http/1.1
  default_backend b
HA
# idle_conf FILE [LISTENER_LINES] — convoy with an HTTP and a TCP
# listener in front of the origin (the lines go into both).
idle_conf() {
  cat > "$1" <<CV
[node]
workers = 1
log_format = "text"
[admin]
enabled = false

[[listeners]]
protocol = "http"
address = "127.0.0.1:$CONVOY"
pool = "web"
max_connections = 15000
idle_timeout = "120s"
${2:-}

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:$CONVOY_T"
pool = "web"
max_connections = 15000
idle_timeout = "120s"
${2:-}

[[listeners]]
name = "tls"
protocol = "http"
address = "127.0.0.1:$CONVOY_S"
pool = "web"
max_connections = 15000
idle_timeout = "120s"
[listeners.tls]
certificates = [ { cert = "$W/cert.pem", key = "$W/key.pem" } ]

[pools.web]
health = { check = "none" }
[[pools.web.servers]]
address = "127.0.0.1:$ORIGIN"
CV
}
idle_conf "$W/convoy.toml"
# The same with idle connections parked after 20 ms instead of the
# default 2 s (docs/CONFIG.md, `park_after`).
idle_conf "$W/convoy-park20ms.toml" 'park_after = "20ms"'

nginx -c "$W/nginx.conf" &
sleep 0.5

# heap PID ERRFILE -> bytes glibc's malloc has handed out and not got back
# ("in use bytes" of malloc_stats(), called through gdb; the process's
# standard error must go to ERRFILE), or "-" without gdb.
heap() {
  command -v gdb >/dev/null || { echo -; return; }
  gdb -p "$1" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1 || true
  awk '/^Total/ {t = 1; next} t && /in use bytes/ {v = $NF; t = 0} END {print (v == "" ? "-" : v)}' "$2"
}

measure() { # pid port count errfile [tls|h2] -> "rss_before rss_after KB_per_conn conn_per_s heap_KB_per_conn"
  local pid=$1 port=$2 n=$3 err=$4 tls=${5:-}
  sleep 0.5
  local before; before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  local hb; hb=$(heap "$pid" "$err")
  python3 - "$port" "$n" "$W/ready" "$tls" <<'PY' &
import socket, ssl, sys, time
port, n, ready, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "h2":
    ctx.set_alpn_protocols(["h2"])
def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
# HTTP/2: the preface, empty SETTINGS, and GET / as one HEADERS frame
# (HPACK: :method GET, :scheme https, :path / from the static table,
# :authority literal); the server's SETTINGS acknowledged after.
H2 = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
      + frame(1, 5, 1, bytes([0x82, 0x87, 0x84, 0x41, 9]) + b"localhost"))
socks = []
t0 = time.monotonic()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if mode:
        s = ctx.wrap_socket(s)
    if mode == "h2":
        assert s.selected_alpn_protocol() == "h2"
        s.sendall(H2)
        got = s.recv(65536)
        s.sendall(frame(4, 1, 0, b""))
        while b"hello" not in got:
            more = s.recv(65536)
            assert more, "closed before the answer"
            got += more
        socks.append(s)
        continue
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
    if len(socks) % 500 == 0:
        for t in socks[-500:]:
            t.recv(4096)
if mode != "h2":
    for t in socks[len(socks) - len(socks) % 500:]:
        t.recv(4096)
open(ready + ".tmp", "w").write("%.0f" % (n / (time.monotonic() - t0)))
import os
os.rename(ready + ".tmp", ready)
time.sleep(60)
PY
  local py=$!
  for _ in $(seq 600); do [ -f "$W/ready" ] && break; sleep 0.1; done
  sleep 4  # past convoy's park time (2 s): the idle state, not the burst
  local after; after=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  local ha; ha=$(heap "$pid" "$err")
  local rate; rate=$(cat "$W/ready")
  kill $py 2>/dev/null; wait $py 2>/dev/null || true
  rm -f "$W/ready"
  awk -v a="$after" -v b="$before" -v n="$n" -v r="$rate" -v ha="$ha" -v hb="$hb" \
    'BEGIN { h = (ha == "-" || hb == "-") ? "-" : sprintf("%.2f", (ha - hb) / 1024 / n); printf "%d %d %.2f %s %s\n", b, a, (a-b)/n, r, h }'
}

echo "# idle connections; convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%F), $(nproc) cores"
echo "kind connections proxy rss_before_KB rss_after_KB KB_per_conn conn_per_s heap_KB_per_conn"
for kind in http tcp https h2; do
  tls=
  case $kind in
    http) n=$N; hp=$HAP; cp=$CONVOY;;
    tcp) n=$NT; hp=$HAP_T; cp=$CONVOY_T;;
    https) n=$NS; hp=$HAP_S; cp=$CONVOY_S; tls=tls;;
    h2) n=$NH2; hp=$HAP_S; cp=$CONVOY_S; tls=h2;;
  esac
  [ "$n" -gt 0 ] || continue
  haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>"$W/err.haproxy" &
  HPID=$!
  echo "$kind $n haproxy $(measure $HPID $hp $n "$W/err.haproxy" $tls)"
  kill $HPID; wait $HPID 2>/dev/null || true
  "$BIN" run -c "$W/convoy.toml" 2>"$W/err.convoy" &
  CPID=$!
  echo "$kind $n convoy $(measure $CPID $cp $n "$W/err.convoy" $tls)"
  kill $CPID; wait $CPID 2>/dev/null || true
  # TLS connections do not park: no third row for them.
  [ -n "$tls" ] && continue
  "$BIN" run -c "$W/convoy-park20ms.toml" 2>"$W/err.convoy" &
  CPID=$!
  echo "$kind $n convoy-park20ms $(measure $CPID $cp $n "$W/err.convoy")"
  kill $CPID; wait $CPID 2>/dev/null || true
done
