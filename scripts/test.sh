#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the local RabbitMQ and Redis
# (started here if installed but stopped). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
ensure_chromium
rm -f target/chaos-report.txt
cargo test --workspace "$@"
if [ -f target/chaos-report.txt ]; then
  echo "chaos scenarios:"
  sort target/chaos-report.txt
fi
