#!/usr/bin/env bash
# Where convoy's instructions go per HTTP/1.1 keep-alive request (or per
# TCP exchange): callgrind on a release build, one nginx origin, 2000
# requests with `ab -k -c 1` after 100 to warm up; prints the instructions
# per request and the functions with the most inclusive and self cost.
# For finding what to cut; the figures to compare with HAProxy come from
# bench/http.sh and bench/l4.sh.
#
#   bench/profile.sh [http|tcp] [top]     (default http, 25 functions)
#   LISTENER='park_after = "0s"' bench/profile.sh tcp   (extra listener lines)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-http}
TOP=${2:-25}
BIN=${CONVOY_BIN:-target/release/convoy}
cargo build --release -q -p convoy
for t in nginx ab valgrind callgrind_control callgrind_annotate; do
  command -v $t >/dev/null || { echo "missing $t: apt-get install -y nginx apache2-utils valgrind"; exit 1; }
done
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
ORIGIN=18381; CONVOY=18383
. bench/lib.sh
origin_conf "$W" $ORIGIN
proto=http
[ "$MODE" = tcp ] && proto=tcp
convoy_conf "$W/convoy.toml" "$proto" $CONVOY $ORIGIN "${LISTENER:-}"
nginx -c "$W/nginx.conf" &
sleep 0.5
CONVOY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" -q "$BIN" run -c "$W/convoy.toml" >/dev/null 2>&1 &
PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$CONVOY) 2>/dev/null && break; sleep 0.1; done
ab -k -n 100 -c 1 "http://127.0.0.1:$CONVOY/" >/dev/null 2>&1
callgrind_control -z "$PID" >/dev/null 2>&1
ab -k -n 2000 -c 1 "http://127.0.0.1:$CONVOY/" >/dev/null 2>&1
callgrind_control -d "$PID" >/dev/null 2>&1
sleep 0.5
f=$(ls -t "$W"/cg.* | head -1)
total=$(grep -h '^summary:' "$f" | awk '{print $2}')
echo "# convoy $MODE: $(( total / 2000 )) instructions per request ($(date -u +%F))"
echo "## inclusive"
callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -"$TOP" || true
echo "## self"
callgrind_annotate --threshold=100 "$f" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -"$TOP" || true
# KEEP=FILE keeps the callgrind output (for callgrind_annotate --tree=caller).
[ -n "${KEEP:-}" ] && cp "$f" "$KEEP"
kill "$PID" 2>/dev/null || true
