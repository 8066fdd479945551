#!/usr/bin/env bash
# How much of an HTTP proxy's CPU per request the kernel's TCP path takes,
# and how much of it fewer system calls (io_uring, batching) could save:
# convoy (`workers = 1`) and HAProxy (`nbthread 1`) in front of one nginx
# origin under `wrk -t1 -c50`, and nginx direct, in the same run. Prints
#  1. TCP segments per request sent and received on the machine (`nstat`
#     deltas; the same peers for all, so differences are the proxy's),
#  2. per proxy, a `perf record -e cpu-clock` profile over the same load
#     split into the proxy's own code, libc, and the kernel, with the
#     kernel's system-call entry, fd lookup and epoll part apart (what an
#     io_uring or batched loop could remove; the rest is TCP/IP work the
#     sends and receives need anyway), in µs per request (perf slows
#     both proxies alike: read the shares, not the µs),
#  3. the cost of one trivial system call here (`perf bench syscall`).
# Figures and how to read them: bench/RESULTS.md ("What the kernel takes").
#
#   bench/kernel.sh            (release build; needs perf, nstat, wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONVOY_BIN:-target/release/convoy}
. bench/lib.sh
need_tools "haproxy nginx wrk linux-perf iproute2" haproxy nginx wrk perf nstat
[ -x "$BIN" ] || cargo build --release -p convoy
bench_workdir
ORIGIN=18991; CONVOY=18992; HAP=18993
http_trio_confs $ORIGIN $CONVOY $HAP
http_trio_start $CONVOY $HAP
port_of() { case $1 in convoy) echo $CONVOY;; haproxy) echo $HAP;; direct) echo $ORIGIN;; esac; }
requests() { awk '/requests in/ {print $1}'; }

echo "# convoy $($BIN --version | cut -d' ' -f2) vs $(haproxy -v | head -1 | cut -d' ' -f1-3) vs nginx direct, wrk -t1 -c50, $(date -u +%F), $(nproc) cores"
echo "## TCP segments per request (nstat, 4 s each)"
echo "peer out_segs in_segs pure_acks delayed_acks"
for name in haproxy convoy direct; do
  port=$(port_of $name)
  wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null
  nstat -n
  n=$(wrk -t1 -c50 -d4s "http://127.0.0.1:$port/" | requests)
  nstat -z | awk -v r="$n" -v p=$name '
    $1 == "TcpOutSegs" {o=$2} $1 == "TcpInSegs" {i=$2}
    $1 == "TcpExtTCPPureAcks" {a=$2} $1 == "TcpExtDelayedACKs" {d=$2}
    END {printf "%s %.3f %.3f %.4f %.4f\n", p, o/r, i/r, a/r, d/r}'
done

echo
echo "## CPU per request by where it runs (perf record -e cpu-clock, 4 s each; shares are what count)"
echo "proxy own_us libc_us kernel_us syscall+epoll_us kernel_share syscall+epoll_share_of_kernel"
# Kernel symbols of the system-call layer and the readiness machinery:
# what would go with fewer calls; everything else in the kernel is the
# TCP/IP and socket work of the data itself.
LAYER='do_syscall_64|entry_SYSCALL|syscall_exit|exit_to_user|__x64_sys|__sys_sendto|__sys_recvfrom|fdget|fput|sockfd_lookup|import_ubuf|__check_object_size|__virt_addr_valid|check_heap_object|ep_|epoll|sock_poll|tcp_poll|srso_|__get_user|__put_user|rseq'
for name in haproxy convoy; do
  if [ $name = convoy ]; then P=$CPID; else P=$HPID; fi
  port=$(port_of $name)
  wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null
  perf record -F 4999 -e cpu-clock -p $P -o "$W/perf.$name" -- sleep 4.4 >/dev/null 2>&1 & PP=$!
  sleep 0.2
  n=$(wrk -t1 -c50 -d4s "http://127.0.0.1:$port/" | requests)
  wait $PP || true
  perf report -i "$W/perf.$name" --sort dso,sym --stdio -F sample,dso,sym 2>/dev/null |
    awk -v r="$n" -v p=$name -v layer="$LAYER" '
      /^ +[0-9]+ / {
        us = $1 * 1e6 / 4999 / r
        if ($0 ~ /\[k\]/) { k += us; if ($0 ~ layer) s += us }
        else if ($2 ~ /^libc/) l += us
        else o += us
      }
      END {printf "%s %.2f %.2f %.2f %.2f %.2f %.2f\n", p, o, l, k, s, k / (o + l + k), s / k}'
done

echo
echo "## one trivial system call (perf bench syscall basic, 2 000 000 getppid)"
perf bench syscall basic -l 2000000 2>/dev/null | awk '/usecs\/op/ {print $1, "µs per call"}'
