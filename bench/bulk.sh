#!/usr/bin/env bash
# Where the CPU goes in an L4 bulk transfer on loopback: iperf3 direct,
# through convoy (TCP listener, splice) and through HAProxy `mode tcp`,
# with the CPU seconds of every process taking part (iperf3 client,
# iperf3 server, the proxy; user and system time from /proc) per GB
# moved. On a machine of two cores a bulk transfer is CPU-bound: the
# throughput ratio to direct follows the total CPU per GB.
# How to read the figures: bench/RESULTS.md ("L4 bulk: where the CPU goes").
#
#   bench/bulk.sh [seconds] [rounds]     (default 5 s, 3 rounds; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
BIN=${CONVOY_BIN:-target/release/convoy}
. bench/lib.sh
need_tools "haproxy iperf3" haproxy iperf3
[ -x "$BIN" ] || cargo build --release -p convoy
bench_workdir
IPERF=18581; CONVOY=18582; HAP=18583
convoy_conf "$W/convoy.toml" tcp $CONVOY $IPERF
haproxy_tcp_conf "$W" $HAP $IPERF

ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
HZ=$(getconf CLK_TCK)

iperf3 -s -p $IPERF >/dev/null 2>&1 & SPID=$!
echo $SPID >> "$W/pids"
wait_port $IPERF

run() { # name port proxy_pid -> one line
  local name=$1 port=$2 ppid=${3:-} s0 p0=0 s1 p1=0 out c_ticks gbit bytes
  s0=$(ticks $SPID); [ -n "$ppid" ] && p0=$(ticks "$ppid")
  # The client's own CPU: bash's `times` is not per child; read it from
  # /proc while it runs, just before it exits (-J prints at the end).
  iperf3 -c 127.0.0.1 -p "$port" -t "$SECS" -J > "$W/out.json" & local cpid=$!
  local c=0
  while kill -0 $cpid 2>/dev/null; do
    c=$(ticks $cpid 2>/dev/null || echo "$c")
    sleep 0.1
  done
  wait $cpid
  s1=$(ticks $SPID); [ -n "$ppid" ] && p1=$(ticks "$ppid")
  bytes=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d["end"]["sum_received"]["bytes"]))' "$W/out.json")
  gbit=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$W/out.json")
  awk -v n="$name" -v g="$gbit" -v b="$bytes" -v hz="$HZ" -v c="$c" -v s=$((s1 - s0)) -v p=$((p1 - p0)) 'BEGIN {
    gb = b / 1e9
    printf "%s %s %.2f %.2f %.2f %.2f\n", n, g, c/hz/gb, s/hz/gb, p/hz/gb, (c+s+p)/hz/gb }'
}

echo "# L4 bulk, ${SECS}s per run; $(date -u +%F), $(nproc) cores"
echo "round path Gbit/s client_cpu_s/GB server_cpu_s/GB proxy_cpu_s/GB total_cpu_s/GB"
for r in $(seq "$ROUNDS"); do
  echo "$r $(run direct $IPERF)"
  CONVOY_LOG=warn "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 & PID=$!
  echo $PID >> "$W/pids"; wait_port $CONVOY
  echo "$r $(run convoy $CONVOY $PID)"
  kill $PID; wait $PID 2>/dev/null || true
  haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PID=$!
  echo $PID >> "$W/pids"; wait_port $HAP
  echo "$r $(run haproxy $HAP $PID)"
  kill $PID; wait $PID 2>/dev/null || true
done
