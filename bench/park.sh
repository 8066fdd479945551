#!/usr/bin/env bash
# The CPU cost of parking idle connections (`park_after`): N keep-alive
# clients each send a request, read the answer and wait THINK seconds,
# for 10 s, through convoy with parking off ("0s"), with every wait
# parked ("20ms"), and through HAProxy 2.6 in the same run. Prints the
# proxy's CPU (utime+stime) per request. PROTO=tcp: the same through TCP
# listeners (`mode tcp`; each client's requests still HTTP/1.1 to nginx).
#
#   bench/park.sh [connections] [think_seconds]   (defaults 200 and 0.1)
#   PROTO=tcp bench/park.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
THINK=${2:-0.1}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx python3; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx"; exit 1; }
done
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18291; PROXY=18292
. bench/lib.sh
origin_conf "$W" $ORIGIN
PROTO=${PROTO:-http}
if [ "$PROTO" = tcp ]; then
  haproxy_tcp_conf "$W" $PROXY $ORIGIN 9990
else
  haproxy_http_conf "$W" $PROXY $ORIGIN 9990 ""
fi
for park in 0s 20ms; do
  convoy_conf "$W/convoy-$park.toml" "$PROTO" $PROXY $ORIGIN "park_after = \"$park\""
done
cat > "$W/think.py" <<'PY'
import selectors, socket, sys, time
port, n, think, dur = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
sel = selectors.DefaultSelector()
due = {}
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    s.send(req)
done, end = 0, time.monotonic() + dur
while time.monotonic() < end:
    now = time.monotonic()
    for s, t in list(due.items()):
        if t <= now:
            s.send(req)
            del due[s]
    for k, _ in sel.select(0.005):
        if not k.fileobj.recv(65536):
            sys.exit("a connection closed")
        done += 1
        due[k.fileobj] = time.monotonic() + think
print(done)
PY
nginx -c "$W/nginx.conf" &
sleep 0.5
run() { # name command... -> one line
  local name=$1; shift
  "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 0.7
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local n; n=$(python3 "$W/think.py" $PROXY "$N" "$THINK" 10)
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null || true
  local hz; hz=$(getconf CLK_TCK)
  awk -v n="$n" -v t="$((t1 - t0))" -v hz="$hz" -v name="$name" \
    'BEGIN { printf "%s %d %.1f\n", name, n, t / hz * 1e6 / n }'
}
echo "# parking cost ($PROTO); $N connections, think ${THINK}s, 10 s each; convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%F), $(nproc) cores"
echo "proxy requests cpu_us_per_request"
run haproxy haproxy -f "$W/haproxy.cfg" -db
run convoy-park-off "$BIN" run -c "$W/convoy-0s.toml"
run convoy-park20ms "$BIN" run -c "$W/convoy-20ms.toml"
