#!/usr/bin/env bash
# B2 on a machine with many cores and a GPU: every (seed, arm group) in its own process,
# all sharing one --out (each arm is cached under OUT/arms/, so reruns resume), then the
# combined table from the cache. Usage: tools/run_b2_parallel.sh OUT [extra bench flags]
set -uo pipefail
out=${1:?usage: run_b2_parallel.sh OUT [flags]}; shift
flags=(--out "$out" --device auto --threads 1 "$@")
python3 tools/bench_prune_quality.py "${flags[@]}" --arms "" --no-scratch --seeds 0 >/dev/null  # write the subset once
pids=()
for seed in 0 1 2; do
  for arms in plain,linear learned,aware; do
    python3 tools/bench_prune_quality.py "${flags[@]}" --seeds "$seed" --arms "$arms" --no-scratch \
      > "$out/log-$seed-${arms/,/-}.txt" 2>&1 &
    pids+=($!)
  done
  python3 tools/bench_prune_quality.py "${flags[@]}" --seeds "$seed" --arms "" > "$out/log-$seed-scratch.txt" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
python3 tools/bench_prune_quality.py "${flags[@]}" --seeds 0,1,2
