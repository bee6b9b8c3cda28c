#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, for the tests of running on a cluster
# (tests/tests/rabbitmq_cluster): nodes rmq1..3@localhost, AMQP on 127.0.0.1:5681-5683,
# Erlang distribution on 127.0.0.1:25681-25683, every file under $BASE
# (/tmp/chunkflow-clusters/rmq). The recipe is /work/shared/CLUSTERS.md, section 2.
#
# usage: scripts/rabbitmq-cluster.sh up          boot the 3 nodes and cluster them (~20 s)
#        scripts/rabbitmq-cluster.sh down        stop them (by their pid files), delete $BASE
#        scripts/rabbitmq-cluster.sh env         print the export line the tests read
#        scripts/rabbitmq-cluster.sh ctl N ARGS  rabbitmqctl -n rmqN@localhost ARGS
#
# It never touches the machine's own node (rabbit@<hostname>, port 5672, run by the
# rabbitmq user): these nodes have their own HOME and so their own Erlang cookie, and the
# real scripts in /usr/lib/rabbitmq/bin are called directly, because the /usr/sbin
# wrappers `su rabbitmq`, which resets HOME and picks up the default node's cookie.
set -euo pipefail

BASE=${BASE:-/tmp/chunkflow-clusters/rmq}
NODES=(1 2 3)
RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}

# The environment of node N, then exec the RabbitMQ script $2 with the rest.
rmq() {
  local n=$1 cmd=$2
  shift 2
  local d="$BASE/node$n"
  (
    export HOME="$BASE/home" # holds .erlang.cookie for these nodes only
    export RABBITMQ_NODENAME="rmq$n@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$((5680 + n))
    export RABBITMQ_DIST_PORT=$((25680 + n))
    export RABBITMQ_MNESIA_BASE="$d/mnesia"
    export RABBITMQ_LOG_BASE="$d/log"
    export RABBITMQ_PID_FILE="$d/rabbitmq.pid"
    export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" # need not exist
    export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" # not /etc/rabbitmq/rabbitmq-env.conf
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_CRASH_DUMP="$d/erl_crash.dump"
    exec "$RMQ_BIN/$cmd" "$@"
  )
}

ctl() { # N ARGS...: rabbitmqctl aimed at node N
  local n=$1
  shift
  rmq "$n" rabbitmqctl -n "rmq$n@localhost" "$@"
}

setup() {
  mkdir -p "$BASE/home"
  if [ ! -f "$BASE/home/.erlang.cookie" ]; then
    # od, not `tr | head`: that exits 141 (SIGPIPE) under pipefail.
    od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$BASE/home/.erlang.cookie"
    chmod 400 "$BASE/home/.erlang.cookie"
  fi
  echo '[].' >"$BASE/enabled_plugins" # no plugins: no management UI
  : >"$BASE/rabbitmq-env.conf"
  for n in "${NODES[@]}"; do
    local d="$BASE/node$n"
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((5680 + n))
log.console = false
log.file.level = info
disk_free_limit.absolute = 50MB
CONF
  done
}

up() {
  # Leftovers of an earlier run (a node stopped half-way, old Mnesia files) would make the
  # join fail: start from nothing.
  down
  setup
  for n in "${NODES[@]}"; do rmq "$n" rabbitmq-server -detached; done # boot in parallel
  for n in "${NODES[@]}"; do
    # An absolute pid-file path: `wait` compares it as given.
    ctl "$n" wait --timeout 120 "$BASE/node$n/rabbitmq.pid" >/dev/null
  done
  for n in 2 3; do
    ctl "$n" stop_app >/dev/null
    ctl "$n" join_cluster rmq1@localhost >/dev/null
    ctl "$n" start_app >/dev/null
  done
  ctl 1 await_online_nodes 3 --timeout 60 >/dev/null
  echo "RabbitMQ cluster up: rmq1..3@localhost on 127.0.0.1:5681-5683 (files in $BASE)" >&2
}

down() {
  local n
  for n in "${NODES[@]}"; do
    [ -f "$BASE/node$n/rabbitmq.pid" ] || continue
    # With the pid-file argument, `stop` returns only once that OS process has exited.
    ctl "$n" stop "$BASE/node$n/rabbitmq.pid" >/dev/null 2>&1 &
  done
  wait
  # A node that did not answer `stop` (its VM half booted) is killed by its own pid.
  for n in "${NODES[@]}"; do
    local pid
    pid=$(cat "$BASE/node$n/rabbitmq.pid" 2>/dev/null) || continue
    # Only if that pid is still this node's VM (a stale pid file may name another process).
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "rmq$n@localhost"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$BASE"/node[123] "$BASE/home" "$BASE/enabled_plugins" "$BASE/rabbitmq-env.conf"
}

env_line() {
  local urls=() n
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$((5680 + n))/%2f"); done
  local IFS=,
  echo "export CHUNKFLOW_TEST_RABBITMQ_CLUSTER=${urls[*]}"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_line ;;
  ctl)
    shift
    case "${1:-}" in
      1 | 2 | 3) ctl "$@" ;;
      *)
        echo "usage: $0 ctl N ARGS... (N is 1, 2 or 3)" >&2
        exit 2
        ;;
    esac
    ;;
  *)
    echo "usage: $0 {up|down|env|ctl N ARGS...}" >&2
    exit 2
    ;;
esac
