#!/usr/bin/env bash
# Times groupby over BENCH_SIZE (default 100MiB) of generated transaction CSV with release
# binaries, 2 workers and 1 reducer, from submit to succeeded; checks the result against
# `producer submit --local`; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

size="${BENCH_SIZE:-100MiB}"
export CHUNKFLOW_NAMESPACE="${CHUNKFLOW_NAMESPACE:-bench}"
echo "building release binaries..." >&2
cargo build --release --quiet -p producer -p worker -p reducer
bin=target/release
work=target/bench
mkdir -p "$work"
data="$work/transactions-$size.csv"
if [ ! -s "$data" ]; then
  echo "generating $size of transaction CSV in $data..." >&2
  "$bin/producer" generate csv --size "$size" --output "$data"
fi

pids=()
stop_services() {
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_services EXIT
for i in 1 2; do
  "$bin/worker" 2>"$work/worker-$i.log" &
  pids+=($!)
done
"$bin/reducer" 2>"$work/reducer.log" &
pids+=($!)

job_flags=(--job groupby --format csv --key country,category --agg count
  --agg sum:amount --agg min:amount --agg max:amount --agg avg:amount)
bytes=$(stat -c %s "$data")
start=$(date +%s.%N)
job=$("$bin/producer" submit "${job_flags[@]}" --wait "$data")
end=$(date +%s.%N)
"$bin/producer" result "$job" >"$work/result.tsv"
head -n 6 "$work/result.tsv"
awk -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN {
  t = e - s; mib = b / 1048576
  printf "\ngroupby over %.1f MiB of CSV: %.2f s from submit to result, %.1f MiB/s (2 workers, 1 reducer)\n", mib, t, mib / t
}'
"$bin/producer" submit --local -q "${job_flags[@]}" "$data" >"$work/local.tsv"
cmp -s "$work/result.tsv" "$work/local.tsv" && echo "result equals the local runner's" \
  || { echo "error: result differs from the local runner's" >&2; exit 1; }
