#!/usr/bin/env bash
# Where an HTTP proxy's CPU goes under load: convoy (`workers = 1`) and
# HAProxy (`nbthread 1`) in front of one nginx origin, `wrk -t1 -c50`,
# interleaved. Per request: user and system CPU µs (from /proc/PID/stat),
# voluntary and involuntary context switches (/proc/PID/status), and the
# system calls (`strace -c` over a shorter run; strace slows the proxy,
# so only the calls per request are read from it).
# How to read the figures: bench/RESULTS.md ("HTTP CPU under load").
#
#   bench/cpu.sh [rounds]     (default 2; release build)
#   THREADS=2 bench/cpu.sh    both proxies on both cores: convoy
#                             `workers = 0`, HAProxy `nbthread 2`
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BIN=${CONVOY_BIN:-target/release/convoy}
. bench/lib.sh
need_tools "haproxy nginx wrk strace" haproxy nginx wrk strace
[ -x "$BIN" ] || cargo build --release -p convoy
bench_workdir
ORIGIN=18971; CONVOY=18972; HAP=18973
http_trio_confs $ORIGIN $CONVOY $HAP
THREADS=${THREADS:-1}
if [ "$THREADS" = 2 ]; then
  sed -i 's/^  nbthread 1$/  nbthread 2/' "$W/haproxy.cfg"
  sed -i 's/^workers = 1$/workers = 0/' "$W/convoy.toml"
fi
http_trio_start $CONVOY $HAP
HZ=$(getconf CLK_TCK)
cs() { awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' /proc/"$1"/status; }
cpu() { awk '{print $14, $15}' /proc/"$1"/stat; }

echo "# HTTP under wrk -t1 -c50, proxy threads: $THREADS; convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3), $(date -u +%F), $(nproc) cores"
echo "round proxy requests user_us/req sys_us/req vol_cs/req invol_cs/req"
for r in $(seq "$ROUNDS"); do
  for name in haproxy convoy; do
    if [ $name = convoy ]; then P=$CPID; port=$CONVOY; else P=$HPID; port=$HAP; fi
    wrk -t1 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null
    c0=$(cs $P); t0=$(cpu $P)
    out=$(wrk -t1 -c50 -d8s "http://127.0.0.1:$port/")
    t1=$(cpu $P); c1=$(cs $P)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$r $name $n $(echo $t0 $t1 $c0 $c1 | awk -v r="$n" -v hz="$HZ" '{printf "%.2f %.2f %.4f %.4f", ($3-$1)/hz*1e6/r, ($4-$2)/hz*1e6/r, ($7-$5)/r, ($8-$6)/r}')"
  done
done

echo
echo "system calls per request (strace -c, wrk -t1 -c50 for 4 s)"
for name in haproxy convoy; do
  if [ $name = convoy ]; then P=$CPID; port=$CONVOY; else P=$HPID; port=$HAP; fi
  strace -f -c -p $P -o "$W/st.$name" 2>/dev/null & SPID=$!
  sleep 0.5
  out=$(wrk -t1 -c50 -d4s "http://127.0.0.1:$port/")
  kill -INT $SPID; wait $SPID 2>/dev/null || true
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v r="$n" -v p=$name 'NR > 2 && $4 ~ /^[0-9]+$/ && $4 / r >= 0.001 {printf "%s %s %.3f\n", p, $NF, $4 / r}' "$W/st.$name"
done
