# Shared pieces of the bench scripts (sourced, not run): the nginx origin,
# HAProxy in front of it, and waiting for a port. How to read the figures: bench/RESULTS.md.

# origin_conf DIR PORT [LOCATION_BODY] — an nginx origin with one worker,
# keep-alive, no access log, answering `return 200 "hello\n"` unless
# LOCATION_BODY says otherwise; writes DIR/nginx.conf.
origin_conf() {
  local dir=$1 port=$2 body=${3:-'return 200 "hello\n";'}
  cat > "$dir/nginx.conf" <<NG
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  default_type text/plain;
  server { listen 127.0.0.1:$port; location / { $body } }
}
NG
}

# convoy_conf FILE PROTOCOL PORT SERVER_PORT [LISTENER_LINES] — convoy with
# one worker, no admin API, one listener of PROTOCOL ("http" or "tcp";
# plus LISTENER_LINES, such as `park_after = "20ms"`) in front of one
# server, no health checks.
convoy_conf() {
  local file=$1 proto=$2 port=$3 server=$4 extra=${5:-}
  cat > "$file" <<CV
[node]
workers = 1
log_format = "text"
[admin]
enabled = false

[[listeners]]
protocol = "$proto"
address = "127.0.0.1:$port"
pool = "o"
$extra

[pools.o]
health = { check = "none" }
[[pools.o.servers]]
address = "127.0.0.1:$server"
CV
}

# haproxy_http_conf DIR PORT ORIGIN_PORT [MAXCONN] [EXTRA_GLOBAL] [BIND_OPTS]
# — HAProxy 2.6 `mode http`, `nbthread 1`, `http-reuse always`; BIND_OPTS
# go on the `bind` line (`proto h2`, `ssl crt …`); writes DIR/haproxy.cfg.
haproxy_http_conf() {
  local dir=$1 port=$2 origin=$3 maxconn=${4:-4000} extra=${5:-} bind=${6:-}
  cat > "$dir/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn $maxconn
$extra
defaults
  mode http
  http-reuse always
  timeout connect 3s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend f
  bind 127.0.0.1:$port $bind
  default_backend b
backend b
  server o 127.0.0.1:$origin
HA
}

# haproxy_tcp_conf DIR PORT SERVER_PORT [MAXCONN] — HAProxy 2.6 `mode tcp`,
# `nbthread 1`, frontend f → backend b (one server); writes DIR/haproxy.cfg
# (append more frontends after it).
haproxy_tcp_conf() {
  local dir=$1 port=$2 server=$3 maxconn=${4:-4000}
  cat > "$dir/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn $maxconn
defaults
  mode tcp
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$port
  default_backend b
backend b
  server o 127.0.0.1:$server
HA
}

# wait_port PORT — until something listens on 127.0.0.1:PORT (10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 not up"
  exit 1
}

# tls_cert — one ECDSA P-256 self-signed certificate in $W for both
# proxies: key.pem and cert.pem (convoy), haproxy.pem (HAProxy wants both
# in one file).
tls_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
  cat "$W/cert.pem" "$W/key.pem" > "$W/haproxy.pem"
}

# http_trio_confs ORIGIN CONVOY HAP — in $W: nginx as the one origin, HAProxy
# `mode http` and convoy (`workers = 1`) in front of it, on those ports.
http_trio_confs() {
  origin_conf "$W" "$1"
  haproxy_http_conf "$W" "$3" "$1"
  convoy_conf "$W/convoy.toml" http "$2" "$1"
}

# http_trio_start CONVOY HAP — starts the three from $W's configurations
# (cleaned up with the work directory); sets CPID and HPID.
http_trio_start() {
  nginx -c "$W/nginx.conf" & echo $! >> "$W/pids"
  CONVOY_LOG=warn "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 & CPID=$!
  haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & HPID=$!
  echo "$CPID $HPID" >> "$W/pids"
  wait_port "$1"; wait_port "$2"
}

# need_tools "APT PACKAGES" TOOL... — exits with the apt-get line to run
# when a tool is missing.
need_tools() {
  local pkgs=$1 t
  shift
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y $pkgs"; exit 1; }
  done
}

# bench_workdir — sets W to a fresh directory, removed at exit after
# stopping every PID listed in $W/pids (and its children) and every
# background job of the script.
bench_workdir() {
  W=$(mktemp -d)
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p
  for p in $(cat "$W/pids" 2>/dev/null) $(jobs -p); do
    kill $(pgrep -P "$p") "$p" 2>/dev/null || true
  done
  sleep 0.3; rm -rf "$W"
}
