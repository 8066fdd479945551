#!/usr/bin/env bash
# Rolling-maintenance soak, long version (the short one runs in CI):
# four servers under a steady load; one at a time drained, stopped,
# restarted and enabled again while the config is reloaded every couple
# of seconds. Prints requests, failures (target 0), and descriptor and
# memory drift between warm-up and the end.
#
# Usage: ./bench/soak.sh [SECONDS]   (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
CONVOY_SOAK_SECONDS="$secs" cargo test --release -p convoy --test soak -- --nocapture 2>&1 \
  | grep -E "^soak:|test result|panicked|failed"
