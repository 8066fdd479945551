#!/usr/bin/env bash
# The cost of scale, convoy and HAProxy 2.6 in one run:
#  1. in process (crates/convoy-http/examples/scale.rs): a pool of N
#     servers — table build time and memory, a health change's rebuild, a
#     reload's rebuild, the cost of one choice; R routes — match cost;
#  2. processes with a pool of N servers (no health checks): time from
#     start to listening, RSS once listening, and convoy's reload (`convoy
#     ctl reload`, which answers once the new config is applied);
#  3. per request with R virtual-host routes: callgrind instructions per
#     keep-alive request whose host is the last route's, against the same
#     proxy with one route (convoy `host` routes; HAProxy `use_backend ...
#     if { req.hdr(host) -i ... }` rules, the usual way to write them).
# How to read the figures: bench/RESULTS.md ("Scale").
#
#   bench/scale.sh [N] [R]      (defaults 10000 and 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
R=${2:-1000}
BIN=${CONVOY_BIN:-target/release/convoy}
. bench/lib.sh
need_tools "haproxy nginx apache2-utils valgrind" haproxy nginx ab valgrind callgrind_control
cargo build --release -q -p convoy
cargo build --release -q -p convoy-http --example scale
bench_workdir
ORIGIN=18481; HAP=18482; CONVOY=18483; ADMIN=18484

echo "== 1. in process: $N servers, $R routes"
target/release/examples/scale "$N" "$R"

# The pool: N servers on 10.0.0.0/8 addresses nobody answers (not
# connected to: no health checks, no requests).
addr() { local i=$(($1 + 1)); echo "10.$((i >> 16 & 255)).$((i >> 8 & 255)).$((i & 255)):8080"; }
{
  cat <<CV
[node]
workers = 1
log_format = "text"
[admin]
address = "127.0.0.1:$ADMIN"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:$CONVOY"
pool = "p"

[pools.p]
slow_start = "0s"
health = { check = "none" }
CV
  for i in $(seq 0 $((N - 1))); do printf '[[pools.p.servers]]\nname = "s%d"\naddress = "%s"\n' "$i" "$(addr "$i")"; done
} > "$W/convoy-pool.toml"
{
  cat <<HA
global
  nbthread 1
defaults
  mode tcp
  timeout connect 3s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:$HAP
  default_backend b
backend b
  balance roundrobin
HA
  for i in $(seq 0 $((N - 1))); do echo "  server s$i $(addr "$i")"; done
} > "$W/haproxy-pool.cfg"
sed 's/balance roundrobin/balance source\n  hash-type consistent/' "$W/haproxy-pool.cfg" > "$W/haproxy-hash.cfg"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
until_listening() { # port start_ms -> ms from start until the port accepts (60 s at most)
  for _ in $(seq 6000); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && { echo $(( $(now_ms) - $2 )); return 0; }
    sleep 0.01
  done
  echo "port $1 not up"; exit 1
}
rss_kb() { awk '/VmRSS/ {print $2}' /proc/"$1"/status; }

echo
echo "== 2. processes with a pool of $N servers"
t0=$(now_ms)
CONVOY_LOG=warn "$BIN" run -c "$W/convoy-pool.toml" >/dev/null 2>"$W/convoy.err" & PID=$!
echo $PID >> "$W/pids"
up=$(until_listening $CONVOY "$t0"); sleep 1
echo "convoy: listening after $up ms, RSS $(rss_kb $PID) KB"
t0=$(now_ms)
"$BIN" ctl --admin 127.0.0.1:$ADMIN reload >/dev/null
echo "convoy: reload of the same config applied in $(( $(now_ms) - t0 )) ms (ctl round trip included)"
t0=$(now_ms)
"$BIN" ctl --admin 127.0.0.1:$ADMIN server p s7 disable >/dev/null
echo "convoy: a server disabled (applied; a pool this large builds its tables aside) in $(( $(now_ms) - t0 )) ms (ctl round trip included)"
kill $PID; wait $PID 2>/dev/null || true
for mode in pool hash; do
  t0=$(now_ms)
  haproxy -f "$W/haproxy-$mode.cfg" -db >/dev/null 2>&1 & PID=$!
  echo $PID >> "$W/pids"
  up=$(until_listening $HAP "$t0"); sleep 1
  what="roundrobin"; [ $mode = hash ] && what="source, hash-type consistent"
  echo "haproxy ($what): listening after $up ms, RSS $(rss_kb $PID) KB"
  kill $PID; wait $PID 2>/dev/null || true
done

echo
echo "== 3. callgrind instructions per request: 1 route, and $R host routes (the request's host is the last)"
origin_conf "$W" $ORIGIN
nginx -c "$W/nginx.conf" & echo $! >> "$W/pids"
sleep 0.5
routes_convoy() { # count
  local r
  for r in $(seq 0 $(($1 - 1))); do printf '[[listeners.routes]]\nname = "r%d"\nhost = "host%d.example"\n' "$r" "$r"; done
}
routes_haproxy() { # count
  local r
  for r in $(seq 0 $(($1 - 1))); do echo "  use_backend b if { req.hdr(host),field(1,:) -i host$r.example }"; done
}
instr() { # name routes -> instructions per request
  local name=$1 n=$2 port
  if [ "$name" = convoy ]; then
    port=$CONVOY
    {
      printf '[node]\nworkers = 1\nlog_format = "text"\n[admin]\nenabled = false\n\n'
      printf '[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:%s"\npool = "o"\n' $CONVOY
      routes_convoy "$n"
      printf '\n[pools.o]\nhealth = { check = "none" }\n[[pools.o.servers]]\naddress = "127.0.0.1:%s"\n' $ORIGIN
    } > "$W/convoy-routes.toml"
    CONVOY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" -q \
      "$BIN" run -c "$W/convoy-routes.toml" >/dev/null 2>&1 & PID=$!
  else
    port=$HAP
    haproxy_http_conf "$W" $HAP $ORIGIN
    # the rules go in the frontend, before default_backend
    routes_haproxy "$n" > "$W/rules"
    sed -i "/^  default_backend b/e cat $W/rules" "$W/haproxy.cfg"
    valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" -q \
      haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PID=$!
  fi
  echo $PID >> "$W/pids"
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  local url="http://127.0.0.1:$port/" host="Host: host$(($n - 1)).example"
  ab -k -n 100 -c 1 -H "$host" "$url" >/dev/null 2>&1
  callgrind_control -z "$PID" >/dev/null 2>&1
  ab -k -n 2000 -c 1 -H "$host" "$url" > "$W/ab.out" 2>&1
  grep -q "Non-2xx" "$W/ab.out" && { echo "$name: answers not 2xx"; exit 1; }
  callgrind_control -d "$PID" >/dev/null 2>&1
  sleep 0.3
  local total
  total=$(for f in "$W"/cg.*; do grep -h '^summary:' "$f" 2>/dev/null; done | awk '{s+=$2} END {printf "%d", s}')
  kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true
  rm -f "$W"/cg.*
  echo $((total / 2000))
}
for p in convoy haproxy; do
  one=$(instr $p 1)
  many=$(instr $p "$R")
  echo "$p: 1 route $one, $R routes $many instructions per request (+$((many - one)))"
done
