#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the local RabbitMQ and Redis
# (started here if installed but stopped), against two throwaway Redis Clusters
# (scripts/redis-cluster.sh) and a 3-node RabbitMQ cluster of its own
# (scripts/rabbitmq-cluster.sh: booted in the background while the tests build), all
# stopped again on exit. Extra arguments go to `cargo test`. Ends with the chaos
# scenarios' summary lines and one line totalling every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
ensure_chromium
mkdir -p target
rm -f target/chaos-report.txt

# The RabbitMQ cluster takes about 20 s to boot: start it now, wait for it after the build.
# One already running (a developer's `scripts/rabbitmq-cluster.sh up`) is used and left up.
cluster_log=target/rabbitmq-cluster.log
cluster_pid=""
redis_clusters=""
# Stops what this run started, however it ends (the RabbitMQ cluster after its `up` is
# done: it may still be booting).
stop_clusters() {
  if [ -n "$cluster_pid" ]; then
    wait "$cluster_pid" 2>/dev/null || true
    scripts/rabbitmq-cluster.sh down || true
  fi
  if [ -n "$redis_clusters" ]; then scripts/redis-cluster.sh down || true; fi
}
trap stop_clusters EXIT
if port_open 5681 && port_open 5682 && port_open 5683; then
  echo "using the RabbitMQ cluster already running on 127.0.0.1:5681-5683" >&2
else
  scripts/rabbitmq-cluster.sh up >"$cluster_log" 2>&1 &
  cluster_pid=$!
fi
redis_clusters=started
scripts/redis-cluster.sh up
eval "$(scripts/redis-cluster.sh env)"

log=target/test-output.txt
status=0
cargo test --workspace --no-run "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" = 0 ] && [ -n "$cluster_pid" ]; then
  if ! wait "$cluster_pid"; then
    echo "error: the RabbitMQ cluster did not start (see $cluster_log); its tests will fail" >&2
  fi
fi
eval "$(scripts/rabbitmq-cluster.sh env)"
if [ "$status" = 0 ]; then
  cargo test --workspace "$@" 2>&1 | tee -a "$log" || status=$?
fi
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
