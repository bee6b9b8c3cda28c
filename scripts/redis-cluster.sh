#!/usr/bin/env bash
# Two throwaway Redis Clusters for the tests, on their own ports and directories
# (recipe and traps: /work/shared/CLUSTERS.md). Never touches the shared Redis on 6379.
#
#   scripts/redis-cluster.sh up     start both clusters (from empty directories) and wait
#                                   until every node says cluster_state:ok (and, for the
#                                   replicated one, every master has a connected replica)
#   scripts/redis-cluster.sh down   stop only the nodes this script started (by pid file)
#                                   and delete their directories
#   scripts/redis-cluster.sh env    print the exports the tests read
#
# Clusters (no persistence; a killed node restarts empty):
#   redis3: 3 masters, no replicas, ports 7001-7003 (bus 17001-17003)
#   redis6: 3 masters + 3 replicas, ports 7011-7016 (bus 17011-17016)
# Each node's command line is kept in $BASE/<cluster>/<port>/cmdline (one argument a line),
# so a test that kills a node restarts it the same way.
set -euo pipefail
BASE=${CHUNKFLOW_CLUSTERS_DIR:-/tmp/chunkflow-clusters}
R3_PORTS=(7001 7002 7003)
R6_PORTS=(7011 7012 7013 7014 7015 7016)
DEADLINE_S=${REDIS_CLUSTER_DEADLINE_S:-60}

die() { echo "redis-cluster.sh: $*" >&2; exit 1; }

# wait_until DESCRIPTION COMMAND...: retries COMMAND every 0.1 s until it succeeds, or dies
# after DEADLINE_S seconds.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + DEADLINE_S))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${DEADLINE_S}s waiting for $what"
    sleep 0.1
  done
}

cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }
answers() { cli "$1" ping 2>/dev/null | grep -q PONG; }
cluster_ok() { cli "$1" cluster info | grep -q 'cluster_state:ok'; }
# every master of the cluster seen from PORT has a connected replica
masters_replicated() {
  local port=$1 line
  local masters
  masters=$(cli "$port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8 {print $2}')
  [ -n "$masters" ] || return 1
  for line in $masters; do
    local p=${line%@*}; p=${p##*:}
    cli "$p" info replication | grep -q '^slave[0-9]*:.*state=online' || return 1
  done
}

start_node() {
  local dir=$1 port=$2
  mkdir -p "$dir/$port"
  local args=(
    --port "$port" --bind 127.0.0.1
    --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000
    --dir "$dir/$port" --save '' --appendonly no
    --daemonize yes --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
  )
  printf '%s\n' "${args[@]}" > "$dir/$port/cmdline"
  redis-server "${args[@]}"
}

# up_cluster NAME REPLICAS PORT...
up_cluster() {
  local name=$1 replicas=$2; shift 2
  local dir="$BASE/$name" port up=0
  for port in "$@"; do
    if answers "$port"; then up=$((up + 1)); fi
  done
  if [ "$up" -eq "$#" ] && [ -f "$dir/$1/redis.pid" ] && cluster_ok "$1"; then
    echo "redis cluster $name already up on ports $*"
    return 0
  fi
  [ "$up" -eq 0 ] || die "some of ports $* already answer: a cluster is left over (run: $0 down) or the ports are taken"
  rm -rf "$dir"   # start from empty directories: old nodes-*.conf files break `--cluster create`
  mkdir -p "$dir"
  for port in "$@"; do start_node "$dir" "$port"; done
  for port in "$@"; do wait_until "redis on port $port" answers "$port"; done
  local nodes=()
  for port in "$@"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; die "cluster $name was not created"; }
  for port in "$@"; do wait_until "cluster_state:ok on port $port" cluster_ok "$port"; done
  if [ "$replicas" -gt 0 ]; then
    wait_until "a connected replica for every master of $name" masters_replicated "$1"
  fi
  echo "redis cluster $name up on ports $*"
}

# down_cluster NAME PORT...: pid files are read BEFORE the shutdown (Redis deletes its pid file
# on exit), then each pid is waited for.
down_cluster() {
  local name=$1; shift
  local dir="$BASE/$name" port pid pids=()
  [ -d "$dir" ] || return 0
  for port in "$@"; do
    pid=$(cat "$dir/$port/redis.pid" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    pids+=("$pid")
    cli "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  local deadline=$((SECONDS + DEADLINE_S))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.05
    done
  done
  rm -rf "$dir"
}

seeds() {
  local list="" port
  for port in "$@"; do list="${list:+$list,}redis://127.0.0.1:$port"; done
  echo "$list"
}

command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
case "${1:-}" in
  up)
    up_cluster redis3 0 "${R3_PORTS[@]}"
    up_cluster redis6 1 "${R6_PORTS[@]}"
    ;;
  down)
    down_cluster redis3 "${R3_PORTS[@]}"
    down_cluster redis6 "${R6_PORTS[@]}"
    ;;
  env)
    echo "export CHUNKFLOW_TEST_REDIS_CLUSTER=$(seeds "${R3_PORTS[@]}")"
    echo "export CHUNKFLOW_TEST_REDIS_REPLICATED=$(seeds "${R6_PORTS[@]}")"
    echo "export CHUNKFLOW_CLUSTERS_DIR=$BASE"
    ;;
  *)
    echo "usage: $0 {up|down|env}" >&2
    exit 2
    ;;
esac
