#!/usr/bin/env bash
# A three-node convoy cluster behind one virtual address, on one machine,
# in network namespaces (steering = "shared", the WLBS way):
#
#   sudo examples/cluster-netns/cluster.sh up     # build it and start it
#   sudo examples/cluster-netns/cluster.sh down   # remove everything
#
# What `up` builds (all inside namespaces; nothing of the host changes
# except nf_conntrack_tcp_loose, which convoy sets to 0):
#
#   convoy-ex-c   client, 10.88.1.1-20          ┐
#   convoy-ex-n1  node 1, 10.88.0.11 + VIP      │ one flooding switch
#   convoy-ex-n2  node 2, 10.88.0.12 + VIP      │ (convoy-ex-sw, bridge that
#   convoy-ex-n3  node 3, 10.88.0.13 + VIP      │ learns nothing), the nodes
#   convoy-ex-s   demo servers 10.88.2.1-3:8000 ┘ share one MAC
#
# The virtual address is 10.88.0.100 (HTTP on port 80). Needs root, ip
# (iproute2), nft (nftables), curl, openssl and a convoy binary: CONVOY,
# else `convoy` on PATH, else target/release/convoy (cargo build --release).
set -euo pipefail
P=convoy-ex
STATE=${CONVOY_EX_STATE:-${TMPDIR:-/tmp}/convoy-cluster-netns}
VIP=10.88.0.100
MAC=02:bf:0a:58:00:64
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${CONVOY:-$(command -v convoy || echo "$HERE/../../target/release/convoy")}

down() {
  for f in "$STATE"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  for ns in c n1 n2 n3 s sw; do
    if ip netns list | grep -qw "$P-$ns"; then
      for pid in $(ip netns pids "$P-$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$P-$ns"
    fi
  done
  rm -rf "$STATE"
}

up() {
  [ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)"; exit 1; }
  for t in ip nft curl openssl; do
    command -v $t >/dev/null || { echo "missing $t (apt-get install iproute2 nftables curl openssl)"; exit 1; }
  done
  [ -x "$BIN" ] || { echo "no convoy binary: cargo build --release, or set CONVOY"; exit 1; }
  if ip netns list | grep -q "^$P-"; then
    echo "already up (run: $0 down)"; exit 1
  fi
  mkdir -p "$STATE"
  trap 'echo "failed: removing everything"; down' ERR
  for ns in sw c n1 n2 n3 s; do ip netns add "$P-$ns"; ip -n "$P-$ns" link set lo up; done
  ip -n $P-sw link add br0 type bridge
  ip -n $P-sw link set br0 type bridge ageing_time 0
  ip -n $P-sw link set br0 up
  i=0
  for ns in c n1 n2 n3 s; do
    i=$((i + 1))
    ip link add eth0 netns "$P-$ns" type veth peer name "p$i" netns $P-sw
    ip -n $P-sw link set "p$i" master br0
    ip -n $P-sw link set "p$i" type bridge_slave learning off flood on
    ip -n $P-sw link set "p$i" up
  done
  for a in $(seq 1 20); do ip -n $P-c addr add "10.88.1.$a/16" dev eth0; done
  for n in 1 2 3; do
    # One MAC for the three nodes: every frame for the virtual address
    # reaches all of them (IPv6 off: its duplicate-address check would
    # fail on the shared link-local address).
    ip netns exec $P-n$n sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n $P-n$n link set eth0 address $MAC
    ip -n $P-n$n addr add "10.88.0.1$n/16" dev eth0
  done
  for a in 1 2 3; do ip -n $P-s addr add "10.88.2.$a/16" dev eth0; done
  for ns in c n1 n2 n3 s; do ip -n "$P-$ns" link set eth0 up; done

  openssl rand -base64 32 > "$STATE/cluster.key"
  chmod 600 "$STATE/cluster.key"
  ip netns exec $P-s "$BIN" demo-servers 10.88.2.1:8000 10.88.2.2:8000 10.88.2.3:8000 \
    > "$STATE/servers.log" 2>&1 &
  echo $! > "$STATE/servers.pid"
  for n in 1 2 3; do
    seeds=$(for m in 1 2 3; do if [ $m -ne $n ]; then printf '"10.88.0.1%s:7946", ' $m; fi; done)
    cat > "$STATE/node$n.toml" <<EOF
[node]
name = "node-$n"
drain_timeout = "10s"

[admin]
address = "127.0.0.1:9900"

[[listeners]]
name = "web"
protocol = "http"
address = "$VIP:80"
pool = "demo"

[pools.demo]
health = { interval = "500ms", timeout = "300ms", rise = 1, fall = 2 }

[[pools.demo.servers]]
name = "demo-1"
address = "10.88.2.1:8000"

[[pools.demo.servers]]
name = "demo-2"
address = "10.88.2.2:8000"

[[pools.demo.servers]]
name = "demo-3"
address = "10.88.2.3:8000"

[cluster]
priority = $n
address = "10.88.0.1$n:7946"
seeds = [${seeds%, }]
key_file = "$STATE/cluster.key"
steering = "shared"
vips = ["$VIP"]
interface = "eth0"
EOF
    ip netns exec $P-n$n "$BIN" run -c "$STATE/node$n.toml" > "$STATE/node$n.log" 2>&1 &
    echo $! > "$STATE/node$n.pid"
  done
  # Wait until the three have converged.
  for _ in $(seq 50); do
    ok=0
    for n in 1 2 3; do
      ip netns exec $P-n$n "$BIN" ctl --admin 127.0.0.1:9900 cluster 2>/dev/null | grep -q "rules in place" && ok=$((ok + 1))
    done
    [ $ok -eq 3 ] && break
    sleep 0.2
  done
  trap - ERR
  [ $ok -eq 3 ] || { echo "the nodes did not converge: see $STATE/node*.log"; down; exit 1; }
  cat <<EOF
Three convoy nodes share $VIP (steering = "shared"). Logs and configs: $STATE

Send traffic from the client namespace (each request names the server and
the node that carried it):
  sudo ip netns exec $P-c curl -s http://$VIP/
  for a in \$(seq 1 20); do sudo ip netns exec $P-c curl -s --interface 10.88.1.\$a http://$VIP/; done | sort | uniq -c

Watch the cluster (any node):
  sudo ip netns exec $P-n1 $BIN ctl --admin 127.0.0.1:9900 cluster

Kill a node and send traffic again: the others take its buckets in about a second.
  sudo kill -9 \$(cat $STATE/node2.pid)

Drain a node (it finishes its connections, takes no new one):
  sudo ip netns exec $P-n3 $BIN ctl --admin 127.0.0.1:9900 drainstop

Remove everything:
  sudo $0 down
EOF
}

case "${1:-}" in
  up) up ;;
  down) down; echo "removed" ;;
  *) echo "usage: $0 up|down"; exit 2 ;;
esac
