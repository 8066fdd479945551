#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the real peers the
# tests drive (redis-server, redis-tools, curl, h2load, wrk, openssl, chromium +
# chromium-driver for the dashboard's browser test, the Prometheus text
# parser; for the cluster steering tests in network namespaces: iproute2,
# nftables, bird2, python3; PostgreSQL for the postgres check's test),
# then runs every test of the workspace.
# Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v bird >/dev/null 2>&1 || need+=(bird2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The PostgreSQL check's test runs a primary and a standby.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# The metrics test reads /metrics with the Prometheus project's own
# parser (Debian's python3-prometheus-client, for /usr/bin/python3).
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test peers: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Here a missing browser fails the dashboard test instead of skipping it.
export CONVOY_REQUIRE_BROWSER=1
# As root, the steering tests build network namespaces: required, not
# skipped.
[ "$(id -u)" -eq 0 ] && export CONVOY_REQUIRE_NETNS=1

# h2spec (the HTTP/2 conformance suite) cannot be installed from Debian:
# it runs when H2SPEC names it or it is on PATH.
if [ -n "${H2SPEC:-}" ]; then
  echo "h2spec: $H2SPEC (the conformance run is part of the suite)"
elif command -v h2spec >/dev/null 2>&1; then
  echo "h2spec: $(command -v h2spec) (the conformance run is part of the suite)"
else
  echo "h2spec not found: the HTTP/2 conformance run is skipped (set H2SPEC=path to run it)"
fi

cargo test --workspace "$@"
