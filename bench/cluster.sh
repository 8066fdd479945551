#!/usr/bin/env bash
# Cluster figures, on one machine:
#  1. detection of a killed node (kill -9) by the others, and their
#     convergence after it, over KILLS kills of one of three nodes on
#     127.0.0.1-3 (release build, default timings: probe 200 ms,
#     suspicion 300 ms); median and max, read from the nodes' JSON logs;
#  2. buckets moved on a join and a leave, for 3, 8 and 32 nodes;
#  3. cluster traffic per node with 3 and 32 nodes (agents in one process).
#
#   bench/cluster.sh [KILLS]      (default 20)
#
# How to read the figures: bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-20}
BIN=${CONVOY_BIN:-target/release/convoy}
cargo build --release -q
cargo build --release -q -p convoy-cluster --examples
EX=target/release/examples

W=$(mktemp -d)
cleanup() {
  for f in "$W"/pid.*; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
openssl rand -base64 32 > "$W/key"
free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
CPORT=$(free_port); LPORT=$(free_port)
for n in 1 2 3; do
  seeds='[]'; [ $n -ne 1 ] && seeds="[\"127.0.0.1:$CPORT\"]"
  cat > "$W/node$n.toml" <<EOF
[node]
name = "node-$n"
log_format = "json"
[admin]
address = "127.0.0.1:$((CPORT + n))"
[[listeners]]
name = "tcp"
address = "127.0.0.$n:$LPORT"
pool = "p"
[pools.p]
[[pools.p.servers]]
address = "127.0.0.1:9"
[cluster]
priority = $n
address = "127.0.0.$n:$CPORT"
seeds = $seeds
key_file = "$W/key"
EOF
done
start() { # node number
  "$BIN" run -c "$W/node$1.toml" 2>>"$W/node$1.log" >/dev/null &
  echo $! > "$W/pid.$1"
}
members() { # admin port -> converged member count of a converged node
  "$BIN" ctl --admin "127.0.0.1:$1" --json cluster 2>/dev/null | python3 -c '
import json,sys
try: v=json.load(sys.stdin)
except Exception: print(0); sys.exit()
print(sum(1 for m in v["members"] if m["state"]=="converged") if v["state"]=="converged" else 0)'
}
wait_members() { # admin port, count
  for _ in $(seq 300); do [ "$(members "$1")" = "$2" ] && return 0; sleep 0.1; done
  echo "no convergence on $2 members" >&2; exit 1
}
for n in 1 2 3; do start $n; done
wait_members $((CPORT + 1)) 3
wait_members $((CPORT + 3)) 3
: > "$W/kills"
for i in $(seq "$KILLS"); do
  sleep 1
  python3 -c 'import time;print(time.time())' >> "$W/kills"
  kill -9 "$(cat "$W/pid.3")"
  wait_members $((CPORT + 1)) 2
  wait_members $((CPORT + 2)) 2
  sleep 0.5
  start 3
  wait_members $((CPORT + 1)) 3
  wait_members $((CPORT + 3)) 3
done
echo "== detection and convergence over $KILLS kills of node-3 (3 nodes, probe 200 ms, suspicion 300 ms)"
python3 - "$W" <<'PY'
import json, sys, datetime, statistics
w = sys.argv[1]
kills = [float(l) for l in open(f"{w}/kills")]
def events(n):
    out = []
    for line in open(f"{w}/node{n}.log"):
        try: e = json.loads(line)
        except Exception: continue
        t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append((t, e))
    return out
for n in (1, 2):
    ev = events(n)
    det, conv = [], []
    for k in kills:
        left = next(t for t, e in ev if t >= k and e.get("event") == "cluster_member" and e.get("member") == "node-3" and e.get("to") == "left")
        c = next(t for t, e in ev if t >= left and e.get("event") == "cluster_converged")
        det.append((left - k) * 1000)
        conv.append((c - left) * 1000)
    print(f"node-{n}: detection ms median {statistics.median(det):.0f} max {max(det):.0f}; "
          f"convergence after detection ms median {statistics.median(conv):.0f} max {max(conv):.0f}")
PY
echo "== buckets moved on a join or a leave"
"$EX/buckets_moved"
echo "== cluster traffic per node"
"$EX/gossip_bandwidth" 3 20
"$EX/gossip_bandwidth" 32 20
