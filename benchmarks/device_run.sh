#!/usr/bin/env bash
# A GPU session's checks, in two parts that each fit one 10-minute device call (timeouts sum to <= 540 s).
#   part 1 (run this first): CUDA-vs-CPU agreement of fast.py and pipe.py; whole-process phases
#          and peak GPU memory of fast.py and pipe.py on slice 0:12 (bench_e2e); pipe.py's batched
#          ablations against its one-feature-per-forward loop.
#   part 2: fast.py's benchmarks on 0:12, pipe.py with a threshold that leaves ~10% of first-layer
#          features drawn, and fast.py's 32 pairs batched vs one at a time (9:12 and 0:12).
#   part 3: Sparse Feature Circuits over 1,000 pairs on 0:12 (target <= 20 s); the dataset passes
#          (fast.py's 128 pairs, hist.py and contexts over 512 sequences) on one process vs two
#          torchrun ranks sharing the GPU (bench_scale, --device cuda:0), on 11:12 and 0:12; steer.py's
#          and trace.py's benchmarks where this checkout has them.
# Usage on a GPU machine, from the repo root: bash benchmarks/device_run.sh OUT_DIR 1|2|3
set -u
out=${1:-.}
part=${2:-1}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
run() {  # run NAME SECONDS COMMAND...: stdout to NAME.txt (and shown), stderr to NAME.err (tail shown)
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" "$@" 2>"$out/$name.err" | tee "$out/$name.txt"
  tail -3 "$out/$name.err"
}
if [ "$part" = 1 ]; then
  run check 80 python3 benchmarks/check_cuda_matches_cpu.py
  run e2e 300 python3 benchmarks/bench_e2e.py --device cuda --slice 0:12 --runs 3
  run pipe 150 python3 benchmarks/bench_pipe.py --device cuda --loop-subset 40
elif [ "$part" = 3 ]; then
  run sfc1000 150 python3 benchmarks/bench_sfc.py --device cuda --slice 0:12 --examples 1000 --loop-examples 2
  run scale 150 python3 benchmarks/bench_scale.py --device cuda:0 --slice 11:12
  run scale012 150 python3 benchmarks/bench_scale.py --device cuda:0 --slice 0:12
  for extra in steer trace; do  # steer.py's and trace.py's, where this checkout has them
    if [ -f "benchmarks/bench_$extra.py" ]; then run "$extra" 40 python3 "benchmarks/bench_$extra.py" --device cuda; fi
  done
else
  run fast 180 python3 benchmarks/bench_fast.py --device cuda --slice 0:12 --baseline-nodes 30
  run pipe_threshold 120 python3 benchmarks/bench_pipe.py --device cuda --loop-subset 40 --threshold-exp -10
  run sfc 100 python3 benchmarks/bench_sfc.py --device cuda --slice 9:12 --loop-examples 4
  run sfc012 140 python3 benchmarks/bench_sfc.py --device cuda --slice 0:12 --loop-examples 4
fi
