#!/usr/bin/env bash
# Memory per idle keep-alive HTTP connection at about 10,000 connections:
# convoy (`protocol = "http"`) against HAProxy `mode http`, one nginx
# origin, all on loopback, in one run. Each connection sends one request,
# reads the answer and stays open; the proxy's RSS is read before and
# after. How to read the figures: bench/RESULTS.md.
#
#   bench/idle.sh [connections]     (default 9900: the most HAProxy takes
#   under this machine's hard descriptor limit of 20000; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-9900}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx python3; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx"; exit 1; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18281; HAP=18282; CONVOY=18283

. bench/lib.sh
origin_conf "$W" $ORIGIN
haproxy_http_conf "$W" $HAP $ORIGIN 9990 "  fd-hard-limit 20000"
cat > "$W/convoy.toml" <<CV
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

[pools.web]
health = { check = "none" }
[[pools.web.servers]]
address = "127.0.0.1:$ORIGIN"
CV

nginx -c "$W/nginx.conf" &
sleep 0.5

measure() { # name port -> "rss_before rss_after KB_per_conn"
  local pid=$1 port=$2
  sleep 0.5
  local before; before=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  python3 - "$port" "$N" "$W/ready" <<'PY' &
import selectors, socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
    if len(socks) % 500 == 0:
        for t in socks[-500:]:
            t.recv(4096)
for t in socks[len(socks) - len(socks) % 500:]:
    t.recv(4096)
open(ready, "w").write("ok")
time.sleep(60)
PY
  local py=$!
  for _ in $(seq 600); do [ -f "$W/ready" ] && break; sleep 0.1; done
  sleep 2
  local after; after=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  kill $py 2>/dev/null; wait $py 2>/dev/null || true
  rm -f "$W/ready"
  awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN { printf "%d %d %.2f\n", b, a, (a-b)/n }'
}

echo "# $N idle keep-alive connections; convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%F), $(nproc) cores"
echo "proxy rss_before_KB rss_after_KB KB_per_conn"
haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 &
HPID=$!
echo "haproxy $(measure $HPID $HAP)"
kill $HPID; wait $HPID 2>/dev/null || true
"$BIN" run -c "$W/convoy.toml" 2>/dev/null &
CPID=$!
echo "convoy $(measure $CPID $CONVOY)"
kill $CPID; wait $CPID 2>/dev/null || true
