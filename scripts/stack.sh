#!/usr/bin/env bash
# The docker-compose topology as local processes, for machines without a Docker engine:
# RabbitMQ and Redis as they are (started if installed but stopped), 3 workers and
# 2 reducers in the background, each serving /metrics, /healthz and /readyz.
#
#   scripts/stack.sh up        build release binaries, start the processes, wait until all
#                              five announce themselves and answer /readyz
#   scripts/stack.sh status    the live processes (producer workers) and the queues
#   scripts/stack.sh down      SIGTERM every process this script started and wait for it
#
# Then: target/release/producer submit --job wordcount --wait FILE...
#
# Settings (environment): WORKERS (3), REDUCERS (2), STACK_DIR (target/stack: pid files
# and logs), CHUNKFLOW_BIN_DIR (target/release, built here when unset), METRICS_PORT_BASE
# (9100: worker i serves on 9100+i, reducer j on 9200+j; 0 picks free ports), and every
# variable the binaries read (AMQP_URL, REDIS_URL, CHUNKFLOW_NAMESPACE, ...), as in
# docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-3}
REDUCERS=${REDUCERS:-2}
STACK_DIR=${STACK_DIR:-target/stack}
METRICS_PORT_BASE=${METRICS_PORT_BASE:-9100}
export CHUNKFLOW_GRACE_PERIOD=${CHUNKFLOW_GRACE_PERIOD:-25s}

bin_dir() {
  if [ -n "${CHUNKFLOW_BIN_DIR:-}" ]; then
    echo "$CHUNKFLOW_BIN_DIR"
  else
    cargo build --release --quiet -p producer -p worker -p reducer >&2
    echo "target/release"
  fi
}

metrics_addr() { # role index
  if [ "$METRICS_PORT_BASE" = 0 ]; then
    echo "127.0.0.1:0"
  elif [ "$1" = worker ]; then
    echo "127.0.0.1:$((METRICS_PORT_BASE + $2))"
  else
    echo "127.0.0.1:$((METRICS_PORT_BASE + 100 + $2))"
  fi
}

# Processes that announced themselves and answer /readyz (consuming, Redis reachable).
ready_count() {
  local count=0 addr
  for addr in $("$1/producer" workers --json 2>/dev/null | grep -o '"metrics_addr":"[^"]*"' | cut -d'"' -f4); do
    "$1/producer" probe "http://$addr/readyz" 2>/dev/null && count=$((count + 1))
  done
  echo "$count"
}

up() {
  source scripts/services.sh
  ensure_services
  local bin
  bin=$(bin_dir)
  mkdir -p "$STACK_DIR"
  if [ -s "$STACK_DIR/pids" ]; then
    echo "error: $STACK_DIR/pids exists: the stack is already up (scripts/stack.sh down first)" >&2
    return 1
  fi
  local role count i
  for role in worker reducer; do
    count=$WORKERS
    [ "$role" = reducer ] && count=$REDUCERS
    for ((i = 1; i <= count; i++)); do
      CHUNKFLOW_METRICS_ADDR=$(metrics_addr "$role" "$i") \
        "$bin/$role" >"$STACK_DIR/$role-$i.log" 2>&1 &
      echo "$! $role-$i" >>"$STACK_DIR/pids"
    done
  done
  local want=$((WORKERS + REDUCERS)) deadline=$((SECONDS + 60))
  until [ "$(ready_count "$bin")" -ge "$want" ]; do
    if ((SECONDS >= deadline)); then
      echo "error: not all $want processes were ready within 60 s; logs in $STACK_DIR" >&2
      down
      return 1
    fi
    sleep 0.2
  done
  echo "stack up: $WORKERS workers, $REDUCERS reducers (logs and pids in $STACK_DIR)"
  "$bin/producer" workers
}

down() {
  [ -f "$STACK_DIR/pids" ] || { echo "stack is not up ($STACK_DIR/pids missing)"; return 0; }
  local pid name
  while read -r pid name; do
    kill -TERM "$pid" 2>/dev/null || true
  done <"$STACK_DIR/pids"
  while read -r pid name; do
    # Each process finishes its task in hand (at most the grace period), then exits.
    while kill -0 "$pid" 2>/dev/null && [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]; do
      sleep 0.1
    done
  done <"$STACK_DIR/pids"
  rm -f "$STACK_DIR/pids"
  echo "stack down"
}

status() {
  local bin=${CHUNKFLOW_BIN_DIR:-target/release}
  "$bin/producer" workers
  "$bin/producer" queues
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: scripts/stack.sh up|status|down" >&2
    exit 2
    ;;
esac
