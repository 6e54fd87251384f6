#!/usr/bin/env bash
# The figures this project waits for a GPU to take, in one prepared command (DEVELOPERS.md:
# "First, every session: is a GPU lent?"). About one task in eight is lent a GPU for 15 minutes of device time, starting
# the machine included, so one command of at most ~9 minutes does it all, and every figure
# lands under OUT as it is taken: a command stopped at its limit still returns what it had.
#
#   tools/gpu_runs.sh OUT                      # on the lent machine (see DEVELOPERS.md)
#   GPU_RUNS_SCALE=tiny DEVICE=cpu tools/gpu_runs.sh OUT   # the dry run tests/tools/test_gpu_runs.py makes
#
# Parts (PARTS, default "env b1 b5 b1compile", in this order; each one's failure is logged
# and the next one still runs):
#   env        the machine, the driver, torch's versions
#   b1         B1 on CUDA: ResNet-110 steps, plain / batch / row / learned (active phase),
#              batch 128 then 1024 (tools/bench_train_speed.py)
#   b5         B5 on real networks (tools/bench_real.py): the published CIFAR ResNets
#              adopted, pruned, retrofitted and fine-tuned with E = EPOCHS epochs, the arms of
#              ARMS at once on the one GPU (accuracy only: arms that share a device time nothing)
#   b1compile  B1's per-branch torch.compile arms against eager, in whatever time is left
#   b2         B2's run of record (tools/run_b2_parallel.sh; needs Fashion-MNIST under
#              .gpu/fashion-mnist): longer than one command, so not in the default parts
#
# Data: only the repository travels to the device, so DEVELOPERS.md copies the CIFAR-10 JPEG
# archive and the pretrained files into .gpu/ (ignored by git) and carries it. Knobs (env):
# DATA_TAR (.gpu/cifar10-jpeg.tar.gz) or DATA_DIR (an unpacked cifar10 folder), WEIGHTS
# (.gpu/pretrained), DEVICE (cuda), EPOCHS (10), KEEPS (0.333: keep 0.5 was taken on 2026-12-04), SEEDS (0,1,2), JOBS (14),
# ARMS (e,d,a0,a,b,c: the iterative arms a0i/ai were rejected on the CPU, BENCHMARKS.md B5; (ae) waits for
# (e), doubling the part's longest path, for a gain not told from noise on the CPU: add it when time allows),
# CRITERION (ablation) and ANNEAL_END (0.1): (b)'s step-0 ranking and anneal (empty: train's defaults),
# DEADLINE (seconds from the start after which no part starts: 540).
set -uo pipefail
out=${1:?usage: tools/gpu_runs.sh OUT}
mkdir -p "$out"
cd "$(dirname "$0")/.."
start=$(date +%s)
log="$out/gpu_runs.log"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
tiny=$([[ ${GPU_RUNS_SCALE:-full} == tiny ]] && echo 1 || echo 0)
deadline=${DEADLINE:-540}
work=${WORK:-$(mktemp -d /tmp/gpu-runs.XXXXXX)}

say() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$log"; }
left() { echo $((deadline - ($(date +%s) - start))); }
part() {  # part NAME COMMAND...: run it unless the deadline passed; log its output and exit code
  local name=$1; shift
  if (($(left) <= 0)); then say "skip $name: deadline"; return; fi
  say "start $name"
  "$@" >>"$log" 2>&1
  say "end $name (exit $?)"
}

env_part() {
  { date -u; uname -a; nvidia-smi 2>&1 | head -15
    $py -c "import torch, torchvision, onnxruntime, platform; print('python', platform.python_version(), 'torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__, 'cuda', \
torch.cuda.is_available() and torch.cuda.get_device_name(0))"; nproc; } >"$out/env.txt" 2>&1
}

b1_part() {
  if ((tiny)); then
    $py tools/bench_train_speed.py --device "$device" --model resnet20 --steps 1 --repeats 2 --warmup 1 \
      --arms plain,batch,row,learned --json "$out/b1-128.json"
    return
  fi
  $py tools/bench_train_speed.py --device "$device" --steps 20 --repeats 10 --warmup 10 \
    --arms plain,batch,row,learned --json "$out/b1-128.json"
  $py tools/bench_train_speed.py --device "$device" --batch-size 1024 --steps 5 --repeats 6 --warmup 5 \
    --arms plain,batch,row,learned --json "$out/b1-1024.json"
}

b1compile_part() {
  local budget=$(($(left) - 10))
  ((budget > 30)) || { say "b1compile: no time left"; return 0; }
  local args=(--steps 20 --repeats 6 --warmup 10)
  ((tiny)) && args=(--model resnet20 --steps 1 --repeats 1 --warmup 1)
  timeout "$budget" $py tools/bench_train_speed.py --device "$device" "${args[@]}" \
    --arms plain,batch,plain@branches,batch@branches --json "$out/b1-compile.json"
}

b5_part() {
  local data=${DATA_DIR:-}
  if [[ -z $data ]]; then
    mkdir -p "$work/data" && tar xzf "${DATA_TAR:-.gpu/cifar10-jpeg.tar.gz}" -C "$work/data" || return 1
    data=$work/data/cifar10
  fi
  local args=(--out "$work/b5" --data-dir "$data" --weights "${WEIGHTS:-.gpu/pretrained}" --device "$device"
              --image-size "${IMAGE_SIZE:-32}"
              --epochs "${EPOCHS:-10}" --keeps "${KEEPS:-0.333}" --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-14}"
              --arms "${ARMS:-e,d,a0,a,b,c}")
  # (b)'s mechanism from the CPU runs (BENCHMARKS.md B5, "The retrofit's mechanism"): ablation
  # chosen a priori (the blocks (a) removes), anneal end 0.1 on the validation slice; empty: train's defaults
  [[ -n ${CRITERION-ablation} ]] && args+=(--criterion "${CRITERION-ablation}")
  [[ -n ${ANNEAL_END-0.1} ]] && args+=(--anneal-end "${ANNEAL_END-0.1}")
  # the results so far, packed every 20 s: a command stopped at its limit still returns them
  ( while sleep 20; do tar czf "$out/.b5.tgz" -C "$work/b5" results logs 2>/dev/null && mv "$out/.b5.tgz" "$out/b5.tgz"; done ) &
  local packer=$!
  timeout "$(($(left) + 30))" $py tools/bench_real.py "${args[@]}"
  local rc=$?
  kill "$packer" 2>/dev/null
  tar czf "$out/b5.tgz" -C "$work/b5" results logs 2>/dev/null
  $py tools/bench_real.py --out "$work/b5" --report >"$out/b5-table.md" 2>&1
  return $rc
}

b2_part() {
  tools/run_b2_parallel.sh "$work/b2" --data-dir "${FASHION_DIR:-.gpu/fashion-mnist}" --train-images 20000 --epochs 15
  tar czf "$out/b2.tgz" -C "$work" b2 2>/dev/null
}

for p in ${PARTS:-env b1 b5 b1compile}; do
  part "$p" "${p}_part"
done
say "done"
