#!/usr/bin/env bash
# Cache-hit benchmark: convoy (HTTP listener with `cache = { ... }`) against
# nginx `proxy_cache` (and, for reference, HAProxy 2.6's `cache`), all in
# front of the same nginx origin answering `Cache-Control: max-age=3600`
# with a 1 KiB body, all on loopback, interleaved in one run. See
# How to read the figures: bench/RESULTS.md.
#
#   bench/cache.sh [rounds]     (default 3 rounds; needs a release build)
#
# Each proxy starts with an empty cache and is warmed with one request (a
# miss, the only one the origin sees) and 100 hits; then, per proxy and
# round:
#   instr/req   callgrind instructions per cache hit over keep-alive: one
#               HTTP/1.1 connection, `h2load --h1 -n 2000 -c 1 -t 1` after
#               callgrind_control -z (not `ab -k` as in http.sh: ab speaks
#               HTTP/1.0, which HAProxy's cache does not serve); nginx runs
#               with `master_process off` here, see start_proxy
#   us/req      proxy CPU µs per hit (utime+stime of all its processes from
#               /proc/PID/stat) over `wrk -t1 -c50 -d10s` after a 2 s warm-up
#   req/s       wrk's requests/s of that run (a figure of the machine)
#   origin      requests the origin saw while this proxy ran (must be 1)
#   first/then  cache status of the first request and of one after the run
#               (convoy `X-Cache`, nginx `$upstream_cache_status`, HAProxy
#               `res.cache_hit`)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=${CONVOY_BIN:-target/release/convoy}
[ -x "$BIN" ] || cargo build --release -p convoy
for t in haproxy nginx h2load wrk curl valgrind callgrind_control; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y haproxy nginx nghttp2-client wrk curl valgrind"; exit 1; }
done

W=$(mktemp -d)
# Proxies are started inside $(...) subshells: their PIDs go to $W/pids so
# that the EXIT trap also stops them (and their children) after an error.
cleanup() {
  local p
  for p in $(cat "$W/pids" 2>/dev/null) $(jobs -p); do
    kill $(pgrep -P "$p") "$p" 2>/dev/null || true
  done
  sleep 0.3; rm -rf "$W"
}
trap cleanup EXIT
ORIGIN=18501; NGX=18502; CONVOY=18503; HAP=18504
N=2000
BODY=$(head -c 1023 /dev/zero | tr '\0' 'x')   # + "\n" = 1024 bytes

cat > "$W/origin.conf" <<NG
worker_processes 1;
daemon off;
pid $W/origin.pid;
error_log $W/origin.err;
events { worker_connections 4096; }
http {
  access_log $W/origin.log;
  keepalive_requests 1000000;
  default_type text/plain;
  server {
    listen 127.0.0.1:$ORIGIN;
    location / { add_header Cache-Control "max-age=3600"; return 200 "$BODY\n"; }
  }
}
NG
# nginx as the caching proxy: one worker (as HAProxy nbthread 1 and convoy
# workers = 1), keep-alive to the origin, cache in files under \$W (served
# from the page cache), hits marked by X-Cache-Status.
cat > "$W/nginx.conf" <<NG
user root;
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  proxy_temp_path $W/ngtmp;
  proxy_cache_path $W/ngcache levels=1:2 keys_zone=c:10m max_size=64m use_temp_path=off;
  upstream o { server 127.0.0.1:$ORIGIN; keepalive 32; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://o;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
NG
cat > "$W/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  http-reuse always
  timeout connect 3s
  timeout client 60s
  timeout server 60s
cache c
  total-max-size 64
  max-age 3600
frontend f
  bind 127.0.0.1:$HAP
  http-after-response set-header X-Cache-Status HIT if { res.cache_hit }
  default_backend b
backend b
  http-request cache-use c
  http-response cache-store c
  server o 127.0.0.1:$ORIGIN
HA
cat > "$W/convoy.toml" <<CV
[node]
workers = 1
log_format = "json"

[admin]
enabled = false

[[listeners]]
name = "web"
protocol = "http"
address = "127.0.0.1:$CONVOY"
pool = "web"
max_connections = 100000
cache = { max_bytes = 67108864 }

[pools.web]
health = { check = "none" }
[[pools.web.servers]]
address = "127.0.0.1:$ORIGIN"
CV

nginx -c "$W/origin.conf" &
sleep 0.5

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up"; exit 1; }

start_proxy() { # name valgrind? -> sets PID
  local name=$1 vg=${2:-}
  local pre=()
  [ -n "$vg" ] && pre=(valgrind --tool=callgrind --callgrind-out-file="$W/cg.$name.%p" -q)
  case $name in
    # under callgrind nginx runs as one process (`master_process off`, the
    # worker's event loop in the process we started): callgrind_control
    # cannot reach a forked worker. The request path is the same code.
    nginx)   rm -rf "$W/ngcache" "$W/ngtmp"; mkdir -p "$W/ngcache" "$W/ngtmp"
             local g=(); [ -n "$vg" ] && g=(-g "master_process off;")
             "${pre[@]}" nginx -c "$W/nginx.conf" "${g[@]}" >/dev/null 2>&1 & PID=$!; wait_port $NGX;;
    haproxy) "${pre[@]}" haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PID=$!; wait_port $HAP;;
    convoy)  CONVOY_LOG=warn "${pre[@]}" "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 & PID=$!; wait_port $CONVOY;;
  esac
  echo "$PID" >> "$W/pids"
}
port_of() { case $1 in nginx) echo $NGX;; haproxy) echo $HAP;; convoy) echo $CONVOY;; esac; }
stop_proxy() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; sed -i "/^$PID\$/d" "$W/pids"; }
tree() { echo "$1"; pgrep -P "$1" || true; }     # nginx: master + worker + cache processes
cpu_ticks() { local s=0 p; for p in $(tree "$1"); do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
origin_count() { wc -l < "$W/origin.log"; }
status_of() { # name -> cache status header of one GET
  curl -s -o /dev/null -D - "http://127.0.0.1:$(port_of "$1")/" | tr -d '\r' |
    awk -F': ' 'tolower($1)=="x-cache" || tolower($1)=="x-cache-status" {s=$2} END {print (s=="" ? "none" : s)}'
}
warm() { # name -> first request's cache status; then 100 hits
  local first; first=$(status_of "$1")
  h2load --h1 -n 100 -c 1 -t 1 "http://127.0.0.1:$(port_of "$1")/" >/dev/null 2>&1
  echo "$first"
}

instr() { # name -> "instructions_per_hit origin_requests first then"
  local o0; o0=$(origin_count)
  start_proxy "$1" vg
  sleep 1     # nginx: let the worker and cache processes start
  local first; first=$(warm "$1")
  callgrind_control -z "$PID" >/dev/null 2>&1 || { echo "callgrind_control -z $PID failed" >&2; exit 1; }
  local out; out=$(h2load --h1 -n $N -c 1 -t 1 "http://127.0.0.1:$(port_of "$1")/" 2>&1)
  callgrind_control -d "$PID" >/dev/null 2>&1 || { echo "callgrind_control -d $PID failed" >&2; exit 1; }
  sleep 0.3
  local then; then=$(status_of "$1")
  local total
  total=$(cat "$W"/cg."$1".* | awk '/^summary:/ {s+=$2} END {print s+0}')
  stop_proxy
  rm -f "$W"/cg."$1".*
  local ok; ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  [ "$ok" = "$N" ] || { echo "h2load $1: $ok of $N answered 2xx" >&2; echo "$out" >&2; exit 1; }
  echo "$(( total / N )) $(( $(origin_count) - o0 )) $first $then"
}

cpu() { # name -> "us_per_hit req_per_s origin_requests first then"
  local o0; o0=$(origin_count)
  local url="http://127.0.0.1:$(port_of "$1")/"
  start_proxy "$1"
  sleep 0.5
  local first; first=$(warm "$1")
  wrk -t1 -c50 -d2s "$url" >/dev/null 2>&1
  local t0; t0=$(cpu_ticks $PID)
  local out; out=$(wrk -t1 -c50 -d10s "$url")
  local t1; t1=$(cpu_ticks $PID)
  local then; then=$(status_of "$1")
  stop_proxy
  if echo "$out" | grep -q 'Non-2xx\|Socket errors'; then echo "wrk $1: $out" >&2; exit 1; fi
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local hz; hz=$(getconf CLK_TCK)
  awk -v d=$((t1-t0)) -v hz="$hz" -v r="$reqs" -v rps="$rps" 'BEGIN { printf "%.2f %.0f", d/hz*1e6/r, rps }'
  echo " $(( $(origin_count) - o0 )) $first $then"
}

echo "# convoy $($BIN --version | cut -d' ' -f2) vs $(nginx -v 2>&1 | cut -d' ' -f3) proxy_cache vs $(haproxy -v | head -1 | cut -d' ' -f1-3) cache, 1 KiB body, $(date -u +%F), $(nproc) cores"
echo "round proxy instr/req origin first then | us/req req/s origin first then"
for r in $(seq "$ROUNDS"); do
  for p in nginx haproxy convoy; do
    i=$(instr $p); c=$(cpu $p)
    echo "$r $p $i | $c"
  done
done
echo "# origin requests in all: $(origin_count) (one warm-up miss per proxy start: $((ROUNDS * 6)) expected)"
