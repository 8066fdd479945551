#!/usr/bin/env bash
# Balancing quality: four origins, one 10× slower (2 ms vs 20 ms per
# request), the same fixed offered load (h2load, 1000 req/s over 20
# keep-alive connections, 10 s) through HAProxy `roundrobin` and `leastconn`
# and convoy `round_robin`, `least_outstanding` and `qos`. Prints p50, p99
# and failed requests per setup. How to read the figures: bench/RESULTS.md.
#
#   bench/quality.sh [rounds]    (default 1; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
O=(18301 18302 18303 18304); DELAYS=(2 2 2 20); FRONT=18310
for i in 0 1 2 3; do python3 bench/origin.py "${O[$i]}" "${DELAYS[$i]}" & done
sleep 1

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up"; exit 1; }

haproxy_cfg() { # balance
  cat <<HA
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
  bind 127.0.0.1:$FRONT
  default_backend b
backend b
  balance $1
HA
  for i in 0 1 2 3; do echo "  server o$i 127.0.0.1:${O[$i]}"; done
}

convoy_cfg() { # algorithm
  printf '[node]\nworkers = 1\n[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:%s"\npool = "o"\n[pools.o]\nalgorithm = "%s"\nhealth = { check = "none" }\n' "$FRONT" "$1"
  for i in 0 1 2 3; do printf '[[pools.o.servers]]\naddress = "127.0.0.1:%s"\n' "${O[$i]}"; done
}

run() { # label -> "p50 p99 failed"
  rm -f "$W/lat.log"   # h2load appends to an existing log
  h2load --h1 -c 20 -t 1 --rps 50 -D 10 --log-file "$W/lat.log" "http://127.0.0.1:$FRONT/" > "$W/h2.out" 2>&1 || true
  local failed; failed=$(awk '/requests:/ {print $10+$12}' "$W/h2.out")
  awk '{print $3}' "$W/lat.log" | sort -n | awk -v f="$failed" '{a[NR]=$1} END {printf "%.2f %.2f %s\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, f}'
}

echo "# balancing quality, $(date -u +%F), origins 2/2/2/20 ms, 1000 req/s, 10 s"
echo "round setup p50_ms p99_ms failed"
for r in $(seq "$ROUNDS"); do
  for b in roundrobin leastconn; do
    haproxy_cfg $b > "$W/h.cfg"; haproxy -f "$W/h.cfg" -db >/dev/null 2>&1 & P=$!; wait_port $FRONT
    echo "$r haproxy-$b $(run)"; kill $P; wait $P 2>/dev/null || true
  done
  for a in round_robin least_outstanding qos; do
    convoy_cfg $a > "$W/c.toml"; CONVOY_LOG=warn "$BIN" run -c "$W/c.toml" >/dev/null 2>&1 & P=$!; wait_port $FRONT
    echo "$r convoy-$a $(run)"; kill $P; wait $P 2>/dev/null || true
  done
done
