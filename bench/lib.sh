# Shared pieces of the bench scripts (sourced, not run): the nginx origin,
# HAProxy in front of it, and waiting for a port. See ../../shared/BENCH.md.

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

# wait_port PORT — until something listens on 127.0.0.1:PORT (10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 not up"
  exit 1
}
