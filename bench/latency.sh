#!/usr/bin/env bash
# Latency at a fixed rate, convoy (`protocol = "http"`) against HAProxy
# `mode http` (`http-reuse always`) and direct, one nginx origin, all on
# loopback. Unlike bench/http.sh, which starts each proxy afresh per
# figure, both proxies start once, are warmed up, and are measured in
# alternating rounds (H C D H C D ...), so that the machine's slow
# moments fall on all three alike. How to read the figures: bench/RESULTS.md.
#
#   bench/latency.sh [rounds] [rate]   (default 8 rounds of 10 s at
#                                       2000 req/s; needs a release build)
#
# Prints per round and setup p50, p99 and p99.9 in ms (h2load --h1 -c 10
# -t 1 --rps RATE/10 -D 10, latencies from its --log-file), then the
# median of each over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-8}
RATE=${2:-2000}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx h2load; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx nghttp2-client"; exit 1; }
done

W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18601; HAP=18602; CONVOY=18603

. bench/lib.sh
origin_conf "$W" $ORIGIN
haproxy_http_conf "$W" $HAP $ORIGIN
convoy_conf "$W/convoy.toml" http $CONVOY $ORIGIN "max_connections = 100000"

nginx -c "$W/nginx.conf" &
haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 &
CONVOY_LOG=warn "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 &
wait_port $ORIGIN; wait_port $HAP; wait_port $CONVOY

url() { echo "http://127.0.0.1:$1/"; }
for p in $HAP $CONVOY $ORIGIN; do
  h2load --h1 -c 10 -t 1 -n 10000 "$(url $p)" >/dev/null 2>&1
done

measure() { # port -> "p50 p99 p999"
  rm -f "$W/lat.log"   # h2load appends to an existing log
  h2load --h1 -c 10 -t 1 --rps $((RATE / 10)) -D 10 --log-file "$W/lat.log" "$(url "$1")" >/dev/null 2>&1
  awk '{print $3}' "$W/lat.log" | sort -n |
    awk '{a[NR]=$1} END {printf "%.3f %.3f %.3f\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[int(NR*0.999)]/1000}'
}

echo "# latency at $RATE req/s, convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3) vs direct, $(date -u +%F), $(nproc) cores"
echo "round setup p50_ms p99_ms p999_ms"
for r in $(seq "$ROUNDS"); do
  for s in haproxy convoy direct; do
    case $s in haproxy) port=$HAP;; convoy) port=$CONVOY;; direct) port=$ORIGIN;; esac
    echo "$r $s $(measure $port)" | tee -a "$W/all"
  done
done
echo "# medians over $ROUNDS rounds: setup p50 p99 p999"
for s in haproxy convoy direct; do
  med() { grep " $s " "$W/all" | awk -v c="$1" '{print $c}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  echo "$s $(med 3) $(med 4) $(med 5)"
done
