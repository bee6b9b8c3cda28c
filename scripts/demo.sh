#!/usr/bin/env bash
# The main job, end to end: builds release binaries, makes sure RabbitMQ and Redis are up,
# starts 2 workers and 1 reducer, generates a sample corpus (DEMO_SIZE, default 100MiB),
# runs wordcount over it, prints the top words and the throughput, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

size="${DEMO_SIZE:-100MiB}"
export CHUNKFLOW_NAMESPACE="${CHUNKFLOW_NAMESPACE:-demo}"
echo "building release binaries..." >&2
cargo build --release --quiet -p producer -p worker -p reducer
bin=target/release
work=target/demo
mkdir -p "$work"
data="$work/corpus-$size.txt"
if [ ! -s "$data" ]; then
  echo "generating $size of sample text in $data..." >&2
  "$bin/producer" generate text --size "$size" --output "$data"
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

bytes=$(stat -c %s "$data")
start=$(date +%s.%N)
job=$("$bin/producer" submit --job wordcount --wait "$data")
end=$(date +%s.%N)

"$bin/producer" result "$job" >"$work/result.tsv"
echo
echo "job $job: top 10 words (full result in $work/result.tsv)"
sort -t$'\t' -k2,2nr -k1,1 "$work/result.tsv" | head -n 10 || true
distinct=$(wc -l <"$work/result.tsv")
awk -v b="$bytes" -v s="$start" -v e="$end" -v d="$distinct" 'BEGIN {
  t = e - s; mib = b / 1048576
  printf "\n%.1f MiB, %d distinct words, %.2f s from submit to result: %.1f MiB/s end to end (2 workers, 1 reducer)\n", mib, d, t, mib / t
}'
