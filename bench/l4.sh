#!/usr/bin/env bash
# L4 benchmark: convoy (TCP listener) against HAProxy `mode tcp` and direct,
# one nginx origin, all on loopback, in one run. How to read the figures: bench/RESULTS.md.
#
#   bench/l4.sh [rounds]        (default 3 rounds; needs a release build)
#
# Prints, per proxy: callgrind instructions per keep-alive request
# (ab -k -n 2000 -c 1 after 100 warm-up requests), proxy CPU µs per
# request over a wrk run, wrk requests/s, and iperf3 bulk throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release
for t in haproxy nginx ab wrk iperf3 valgrind callgrind_control; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx apache2-utils wrk iperf3 valgrind"; exit 1; }
done

W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18181; HAP=18182; CONVOY=18183; IPERF=18184; HAP_I=18185; CONVOY_I=18186

. bench/lib.sh
origin_conf "$W" $ORIGIN
haproxy_tcp_conf "$W" $HAP $ORIGIN
cat >> "$W/haproxy.cfg" <<HA
frontend fi
  bind 127.0.0.1:$HAP_I
  default_backend bi
backend bi
  server i 127.0.0.1:$IPERF
HA
cat > "$W/convoy.toml" <<CV
[node]
workers = 1
log_format = "text"

[[listeners]]
address = "127.0.0.1:$CONVOY"
pool = "origin"

[[listeners]]
address = "127.0.0.1:$CONVOY_I"
pool = "iperf"

[pools.origin]
health = { check = "none" }
[[pools.origin.servers]]
address = "127.0.0.1:$ORIGIN"

[pools.iperf]
health = { check = "none" }
[[pools.iperf.servers]]
address = "127.0.0.1:$IPERF"
CV

nginx -c "$W/nginx.conf" & 
iperf3 -s -p $IPERF >/dev/null 2>&1 &
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
}
port_of() { case $1 in haproxy) echo $HAP;; convoy) echo $CONVOY;; direct) echo $ORIGIN;; esac; }
iport_of() { case $1 in haproxy) echo $HAP_I;; convoy) echo $CONVOY_I;; direct) echo $IPERF;; esac; }
stop_proxy() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }

instr() { # name -> instructions per request
  start_proxy "$1" vg
  local port; port=$(port_of "$1")
  ab -k -n 100 -c 1 "http://127.0.0.1:$port/" >/dev/null 2>&1
  callgrind_control -z "$PID" >/dev/null 2>&1
  ab -k -n 2000 -c 1 "http://127.0.0.1:$port/" >/dev/null 2>&1
  callgrind_control -d "$PID" >/dev/null 2>&1
  sleep 0.3
  local total
  total=$(for f in "$W"/cg."$1".*; do grep -h '^summary:' "$f" 2>/dev/null; done | awk '{s+=$2} END {print s+0}')
  # the dump holds the counts since the zero; the final dump on exit adds
  # nothing we read: use only files written by the -d dump.
  stop_proxy
  rm -f "$W"/cg."$1".*
  echo $(( total / 2000 ))
}

cpu() { # name -> "us_per_req req_per_s"
  local port; port=$(port_of "$1")
  local pid=""
  if [ "$1" != direct ]; then start_proxy "$1"; pid=$PID; fi
  wrk -t1 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
  local t0=0; [ -n "$pid" ] && t0=$(cpu_ticks $pid)
  local out; out=$(wrk -t1 -c50 -d10s "http://127.0.0.1:$port/")
  local t1=0; [ -n "$pid" ] && t1=$(cpu_ticks $pid)
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local hz; hz=$(getconf CLK_TCK)
  [ -n "$pid" ] && stop_proxy
  awk -v d=$((t1-t0)) -v hz="$hz" -v r="$reqs" -v rps="$rps" 'BEGIN { printf "%.2f %s\n", d/hz*1e6/r, rps }'
}

bulk() { # name -> Gbit/s
  local pid=""
  if [ "$1" != direct ]; then start_proxy "$1"; pid=$PID; fi
  local g; g=$(iperf3 -c 127.0.0.1 -p "$(iport_of "$1")" -t 5 -J | awk -F: '/"sum_received"/ {f=1} f && /bits_per_second/ {gsub(/[ ,]/,"",$2); print $2/1e9; exit}')
  [ -n "$pid" ] && stop_proxy
  echo "$g"
}

echo "# convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%F), $(nproc) cores"
echo "round proxy instr/req cpu_us/req wrk_req/s iperf3_Gbit/s"
for r in $(seq "$ROUNDS"); do
  for p in haproxy convoy; do
    i=$(instr $p); c=$(cpu $p); b=$(bulk $p)
    echo "$r $p $i $c $b"
  done
  c=$(cpu direct); b=$(bulk direct)
  echo "$r direct - $c $b"
done
