#!/usr/bin/env bash
# Steering figures, in network namespaces (root; nftables, bird2, wrk):
#  - steering = "shared" (three nodes share 10.88.0.100 and one MAC on a
#    flooding switch) and steering = "ecmp" (three nodes announce it to a
#    bird2 router with BGP and BFD; layer-4 multipath hash):
#    ROUNDS times, kill -9 one node under steady load (50 new connections
#    a second, 30 held connections sending every 200 ms), then start it
#    again under load: how long until new connections are all prompt
#    again, new connections failed, held connections broken on the other
#    nodes; a drain-stop under load (shared);
#  - HTTP throughput through the virtual address with 3 nodes and with 1
#    (wrk -c32, 5 s), everything on this one machine.
#
#   sudo bench/steering.sh [ROUNDS]      (default 20)
#
# The scenarios are the ignored tests bench_shared and bench_ecmp of
# crates/convoy/tests/{steering,ecmp}.rs (release build); the figures and
# how to read them: bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONVOY_BENCH_ROUNDS=${1:-20}
export CONVOY_REQUIRE_NETNS=1
for t in steering ecmp; do
  cargo test --release -q -p convoy --test "$t" -- --ignored --nocapture --test-threads=1 bench_ 2>&1 \
    | grep -E '^(shared|ecmp):|^  ' || true
done
