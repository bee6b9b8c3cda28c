#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the local RabbitMQ and Redis
# (started here if installed but stopped) and against two throwaway Redis Clusters
# (scripts/redis-cluster.sh, stopped again on exit). Extra arguments go to `cargo test`.
# Ends with the chaos scenarios' summary lines and one line totalling every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
ensure_chromium
scripts/redis-cluster.sh up
trap 'scripts/redis-cluster.sh down' EXIT
eval "$(scripts/redis-cluster.sh env)"
mkdir -p target
rm -f target/chaos-report.txt
log=target/test-output.txt
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
if [ -f target/chaos-report.txt ]; then
  echo "chaos scenarios:"
  sort target/chaos-report.txt
fi
awk '/^test result:/ {
  for (i = 1; i <= NF; i++) {
    if ($(i + 1) ~ /^passed/) passed += $i
    if ($(i + 1) ~ /^failed/) failed += $i
    if ($(i + 1) ~ /^ignored/) ignored += $i
  }
} END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log" | tee target/test-summary.txt
exit "$status"
