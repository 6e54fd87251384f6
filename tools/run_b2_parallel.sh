#!/usr/bin/env bash
# B2 on a machine with many cores and a GPU: every (seed, arm group) in its own process,
# all sharing one --out (each arm is cached under OUT/arms/, so reruns resume), then the
# combined table from the cache. Usage: tools/run_b2_parallel.sh OUT [extra bench flags]
# The script chooses --seeds (0, 1, 2), --arms (plain+linear and learned+aware per seed, plus
# the scratch baselines) and --no-scratch itself; pass any other flag of bench_prune_quality.py.
# If any worker fails, it names their logs and exits 1 without making the table.
set -uo pipefail
out=${1:?usage: run_b2_parallel.sh OUT [flags]}; shift
flags=(--out "$out" --device auto --threads 1 "$@")
python3 tools/bench_prune_quality.py "${flags[@]}" --arms "" --no-scratch --seeds 0 >/dev/null \
  || { echo "run_b2_parallel: could not write the data subset" >&2; exit 1; }  # the subset, once
pids=()
logs=()
for seed in 0 1 2; do
  for arms in plain,linear learned,aware; do
    logs+=("$out/log-$seed-${arms/,/-}.txt")
    python3 tools/bench_prune_quality.py "${flags[@]}" --seeds "$seed" --arms "$arms" --no-scratch \
      > "${logs[-1]}" 2>&1 &
    pids+=($!)
  done
  logs+=("$out/log-$seed-scratch.txt")
  python3 tools/bench_prune_quality.py "${flags[@]}" --seeds "$seed" --arms "" > "${logs[-1]}" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${logs[$i]}")
done
if ((${#failed[@]})); then
  echo "run_b2_parallel: ${#failed[@]} worker(s) failed, see ${failed[*]}" >&2
  exit 1
fi
python3 tools/bench_prune_quality.py "${flags[@]}" --seeds 0,1,2
