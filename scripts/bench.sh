#!/usr/bin/env bash
# End-to-end throughput benchmark (not a test: it asserts nothing about time).
#
#   scripts/bench.sh [full|tiny|scaling|memory|groupby|capacity|cluster|smoke|all]
#
# full     wordcount over a generated corpus (BENCH_SIZE, default 256MiB): the local runner
#          with 1 thread (the per-core baseline) and with all cores, then the pipeline
#          (producer, 2 workers, 1 reducer, real RabbitMQ and Redis), submit to result.
#          Prints MiB/s, the ratio pipeline / 1-thread baseline, peak RSS of every process,
#          and the CPU seconds RabbitMQ and Redis spent during the pipeline run.
# tiny     small-task overhead: BENCH_TINY_CHUNKS chunks of 1 KiB (default 100000),
#          reported as chunks per second end to end.
# scaling  an I/O-bound job (an exec mapper that sleeps 50 ms per chunk) with 1, 2, 4 and
#          8 workers, reported as speed-up over 1 worker.
# memory   producer peak RSS streaming 1 GiB and 4 GiB from standard input.
# groupby  groupby over BENCH_GROUPBY_SIZE (default 100MiB) of generated transaction CSV,
#          2 workers and 1 reducer, checked against the local runner.
# capacity the figures of the README's capacity model: for wordcount over generated text and
#          groupby over generated CSV (BENCH_CAPACITY_SIZE, default 64MiB), the chunks and
#          the Redis memory the job's intermediate data takes once every chunk is committed
#          (no reducer running yet: the peak), per MiB of input.
# cluster  wordcount over BENCH_SIZE (default 256MiB) through the pipeline (2 workers, 1
#          reducer) on the machine's Redis and on a 3-master Redis Cluster, same run
#          (scripts/redis-cluster.sh starts the cluster unless it is up already).
# smoke    every mode on tiny inputs (CI runs it: it fails if a result differs from the
#          local runner's).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

mode="${1:-full}"
bin=target/release
work=target/bench
mkdir -p "$work"
echo "building release binaries..." >&2
cargo build --release --quiet -p producer -p worker -p reducer
export CHUNKFLOW_NAMESPACE="bench-$$"
export RUST_LOG=warn

pids=()
cleanup() {
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  pids=()
}
trap cleanup EXIT

now() { date +%s.%N; }
mibps() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / 1048576 / t }'; }
peak_rss_mib() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
cpu_secs() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
beam_pid() { pgrep -f 'beam.smp.*rabbit' | head -n 1; }
redis_pid() { pgrep -x redis-server | head -n 1; }

start_cluster() { # workers reducers [worker args...]
  local workers=$1 reducers=$2
  shift 2
  for ((i = 0; i < workers; i++)); do
    "$bin/worker" "$@" 2>>"$work/worker.log" &
    pids+=($!)
  done
  for ((i = 0; i < reducers; i++)); do
    "$bin/reducer" 2>>"$work/reducer.log" &
    pids+=($!)
  done
}

corpus() { # size -> path
  local path="$work/corpus-$1.txt"
  [ -s "$path" ] || "$bin/producer" generate text --size "$1" --output "$path"
  echo "$path"
}

run_full() {
  local size="${BENCH_SIZE:-256MiB}" data bytes t0 t1 local1 localn pipe
  data=$(corpus "$size")
  bytes=$(stat -c %s "$data")
  echo "== wordcount over $size of generated text ($(nproc) cores)"
  t0=$(now); "$bin/producer" submit --local -q --threads 1 --job wordcount "$data" >"$work/local1.tsv"; t1=$(now)
  local1=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  echo "local runner, 1 thread:        $(mibps "$bytes" "$local1") MiB/s"
  t0=$(now); "$bin/producer" submit --local -q --job wordcount "$data" >"$work/localn.tsv"; t1=$(now)
  localn=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  echo "local runner, all cores:       $(mibps "$bytes" "$localn") MiB/s"

  start_cluster 2 1
  local beam redis beam0 redis0
  beam=$(beam_pid); redis=$(redis_pid)
  beam0=$(cpu_secs "$beam"); redis0=$(cpu_secs "$redis")
  t0=$(now)
  "$bin/producer" submit --job wordcount --wait -q "$data" >"$work/job" &
  local producer=$!
  wait "$producer"
  "$bin/producer" result "$(cat "$work/job")" >"$work/pipeline.tsv"
  t1=$(now)
  pipe=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  echo "pipeline, 2 workers 1 reducer: $(mibps "$bytes" "$pipe") MiB/s (submit to result printed)"
  awk -v l="$local1" -v p="$pipe" 'BEGIN { printf "ratio pipeline / 1-thread baseline: %.2f\n", l / p }'
  if cmp -s "$work/local1.tsv" "$work/pipeline.tsv"; then echo "results identical: yes"; else echo "results identical: NO" >&2; exit 1; fi
  echo "CPU during the pipeline run: RabbitMQ $(awk -v a="$beam0" -v b="$(cpu_secs "$beam")" 'BEGIN { printf "%.2f", b - a }') s, Redis $(awk -v a="$redis0" -v b="$(cpu_secs "$redis")" 'BEGIN { printf "%.2f", b - a }') s"
  local pid
  for pid in "${pids[@]}"; do
    echo "peak RSS $(ps -o comm= -p "$pid"): $(peak_rss_mib "$pid") MiB"
  done
  cleanup
}

run_tiny() {
  local chunks="${BENCH_TINY_CHUNKS:-100000}" data t0 t1 secs
  data="$work/tiny-$chunks.txt"
  if [ ! -s "$data" ]; then
    awk -v n="$chunks" 'BEGIN { line = sprintf("%01023d", 0); for (i = 0; i < n; i++) print line }' >"$data"
  fi
  echo "== small-task overhead: $chunks chunks of 1 KiB"
  start_cluster 2 1 --concurrency 4 --prefetch 64
  t0=$(now)
  "$bin/producer" submit --job wordcount --wait -q --chunk-size 1KiB "$data" >/dev/null
  t1=$(now)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  awk -v n="$chunks" -v s="$secs" 'BEGIN { printf "%d chunks in %.2f s: %.0f chunks/s end to end\n", n, s, n / s }'
  cleanup
}

run_scaling() {
  local chunks="${BENCH_SCALING_CHUNKS:-64}" data base=""
  data="$work/scaling-$chunks.txt"
  [ -s "$data" ] || awk -v n="$chunks" 'BEGIN { for (i = 0; i < n; i++) printf "chunk %d of an I/O-bound job\n", i }' >"$data"
  local mapper="$PWD/$work/slow-mapper.sh"
  printf '#!/bin/sh\n# An I/O-bound mapper: waits 50 ms, then emits one key per line.\nsleep 0.05\nexec awk '"'"'{ print $1 "\\t" 1 }'"'"'\n' >"$mapper"
  chmod +x "$mapper"
  echo "== I/O-bound job (mapper sleeps 50 ms per chunk), $chunks chunks"
  local workers t0 t1 secs
  for workers in ${BENCH_SCALING_WORKERS:-1 2 4 8}; do
    start_cluster "$workers" 1 --allow-exec "slowcat=$mapper"
    t0=$(now)
    "$bin/producer" submit --job exec --mapper slowcat --wait -q --chunk-size 1 "$data" >/dev/null
    t1=$(now)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    [ -n "$base" ] || base=$secs
    awk -v w="$workers" -v s="$secs" -v b="$base" 'BEGIN { printf "%d workers: %.2f s, speed-up %.2f\n", w, s, b / s }'
    cleanup
  done
}

run_memory() {
  local size
  echo "== producer memory, streaming from standard input"
  start_cluster 2 1
  for size in ${BENCH_MEMORY_SIZES:-1GiB 4GiB}; do
    if ! command -v /usr/bin/time >/dev/null; then echo "skipped: /usr/bin/time is not installed (apt-get install time)"; break; fi
    "$bin/producer" generate text --size "$size" --seed 7 |
      /usr/bin/time -f "%M" -o "$work/producer-rss" "$bin/producer" submit --job wordcount --wait -q - >/dev/null
    awk -v s="$size" '{ printf "%s from stdin: producer peak RSS %.1f MiB\n", s, $1 / 1024 }' "$work/producer-rss"
  done
  cleanup
}

run_groupby() {
  local size="${BENCH_GROUPBY_SIZE:-100MiB}" data bytes t0 t1 secs job
  data="$work/transactions-$size.csv"
  [ -s "$data" ] || "$bin/producer" generate csv --size "$size" --output "$data"
  bytes=$(stat -c %s "$data")
  local job_flags=(--job groupby --format csv --key country,category --agg count
    --agg sum:amount --agg min:amount --agg max:amount --agg avg:amount)
  echo "== groupby over $size of transaction CSV"
  start_cluster 2 1
  t0=$(now)
  job=$("$bin/producer" submit "${job_flags[@]}" --wait -q "$data")
  "$bin/producer" result "$job" >"$work/groupby.tsv"
  t1=$(now)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  echo "pipeline, 2 workers 1 reducer: $(mibps "$bytes" "$secs") MiB/s ($secs s, submit to result printed)"
  "$bin/producer" submit --local -q "${job_flags[@]}" "$data" >"$work/groupby-local.tsv"
  if cmp -s "$work/groupby.tsv" "$work/groupby-local.tsv"; then echo "results identical to the local runner: yes"; else echo "results identical: NO" >&2; exit 1; fi
  cleanup
}

# Bytes of Redis memory the namespace's keys take (MEMORY USAGE over a SCAN).
namespace_bytes() {
  redis-cli --scan --pattern "$CHUNKFLOW_NAMESPACE:*" |
    while read -r key; do redis-cli memory usage "$key" samples 0; done |
    awk '{ total += $1 } END { print total + 0 }'
}

# Runs one job with workers only, measures its intermediate data at its peak (every chunk
# committed, nothing reduced), then lets a reducer finish it.
capacity_of() { # label input [submit flags...]
  local label=$1 data=$2 bytes job state chunks before after
  shift 2
  bytes=$(stat -c %s "$data")
  before=$(namespace_bytes)
  start_cluster 2 0
  job=$("$bin/producer" submit "$@" -q "$data")
  state=""
  for _ in $(seq 1 3000); do
    state=$("$bin/producer" status --json "$job" | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' | head -n 1)
    [ "$state" = reducing ] && break
    sleep 0.1
  done
  [ "$state" = reducing ] || { echo "$label: the map phase did not complete (state $state)" >&2; exit 1; }
  after=$(namespace_bytes)
  chunks=$("$bin/producer" status --json "$job" | sed -n 's/.*"chunks_total": *\([0-9]*\).*/\1/p' | head -n 1)
  awk -v l="$label" -v b="$bytes" -v c="$chunks" -v m="$((after - before))" 'BEGIN {
    printf "%s: %.0f MiB input, %d chunks (= map tasks), intermediate data in Redis %.1f MiB = %.3f bytes per input byte\n",
      l, b / 1048576, c, m / 1048576, m / b }'
  start_cluster 0 1
  "$bin/producer" watch "$job" >/dev/null 2>&1 || true
  cleanup
}

run_capacity() {
  local size="${BENCH_CAPACITY_SIZE:-64MiB}" text csv
  echo "== capacity figures over $size (default 4 MiB chunks, 8 partitions)"
  text=$(corpus "$size")
  capacity_of "wordcount" "$text" --job wordcount
  csv="$work/transactions-$size.csv"
  [ -s "$csv" ] || "$bin/producer" generate csv --size "$size" --output "$csv"
  capacity_of "groupby (country,category; count,sum,min,max,avg)" "$csv" --job groupby --format csv \
    --key country,category --agg count --agg sum:amount --agg min:amount --agg max:amount --agg avg:amount
}

run_cluster() {
  local size="${BENCH_SIZE:-256MiB}" data bytes seeds started=0 t0 t1 secs target
  data=$(corpus "$size")
  bytes=$(stat -c %s "$data")
  if ! redis-cli -p 7001 ping >/dev/null 2>&1; then
    bash scripts/redis-cluster.sh up >/dev/null
    started=1
  fi
  seeds=$(bash scripts/redis-cluster.sh env | sed -n 's/^export CHUNKFLOW_TEST_REDIS_CLUSTER=//p')
  "$bin/producer" submit --local -q --job wordcount "$data" >"$work/cluster-local.tsv"
  echo "== wordcount over $size, 2 workers 1 reducer: one Redis vs a 3-master Redis Cluster"
  for target in one-redis redis-cluster; do
    if [ "$target" = redis-cluster ]; then export REDIS_URL="$seeds"; else unset REDIS_URL; fi
    start_cluster 2 1
    t0=$(now)
    "$bin/producer" submit --job wordcount --wait -q "$data" >"$work/job"
    "$bin/producer" result "$(cat "$work/job")" >"$work/cluster-$target.tsv"
    t1=$(now)
    cleanup
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    echo "$target: $(mibps "$bytes" "$secs") MiB/s ($secs s, submit to result printed)"
    if cmp -s "$work/cluster-local.tsv" "$work/cluster-$target.tsv"; then echo "  result identical to the local runner: yes"; else echo "  result identical: NO" >&2; exit 1; fi
  done
  unset REDIS_URL
  if [ "$started" = 1 ]; then bash scripts/redis-cluster.sh down >/dev/null; fi
}

case "$mode" in
  full) run_full ;;
  tiny) run_tiny ;;
  scaling) run_scaling ;;
  memory) run_memory ;;
  groupby) run_groupby ;;
  capacity) run_capacity ;;
  cluster) run_cluster ;;
  all) run_full; run_tiny; run_scaling; run_memory; run_groupby ;;
  smoke)
    BENCH_SIZE=2MiB run_full
    BENCH_TINY_CHUNKS=300 run_tiny
    BENCH_MEMORY_SIZES=4MiB run_memory
    BENCH_SCALING_CHUNKS=8 BENCH_SCALING_WORKERS="1 2" run_scaling
    BENCH_GROUPBY_SIZE=1MiB run_groupby
    BENCH_CAPACITY_SIZE=1MiB run_capacity
    ;;
  *) echo "usage: $0 [full|tiny|scaling|memory|groupby|capacity|cluster|smoke|all]" >&2; exit 2 ;;
esac
