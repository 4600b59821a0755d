#!/usr/bin/env bash
# One GPU session's checks: CUDA-vs-CPU agreement (fast.py and pipe.py), then the fast.py and pipe.py
# benchmarks (pipe.py with every edge kept, and with a threshold that leaves ~10% of first-layer features drawn),
# fast.py's 32 pairs batched vs one at a time (9:12 and 0:12), and whole-process phases on slice 0:12.
# Usage on a GPU machine, from the repo root: bash benchmarks/device_run.sh [OUT_DIR]
set -u
out=${1:-.}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 90 python3 benchmarks/check_cuda_matches_cpu.py 2>"$out/check.err" | tee "$out/check.txt"
tail -3 "$out/check.err"
timeout 200 python3 benchmarks/bench_fast.py --device cuda --slice 0:12 --baseline-nodes 30 2>"$out/fast.err" \
  | tee "$out/fast.txt"
tail -3 "$out/fast.err"
timeout 150 python3 benchmarks/bench_pipe.py --device cuda --loop-subset 40 2>"$out/pipe.err" | tee "$out/pipe.txt"
tail -3 "$out/pipe.err"
timeout 150 python3 benchmarks/bench_pipe.py --device cuda --loop-subset 40 --threshold-exp -10 \
  2>"$out/pipe_threshold.err" | tee "$out/pipe_threshold.txt"
tail -3 "$out/pipe_threshold.err"
timeout 120 python3 benchmarks/bench_sfc.py --device cuda --slice 9:12 --loop-examples 4 2>"$out/sfc.err" \
  | tee "$out/sfc.txt"
tail -3 "$out/sfc.err"
timeout 150 python3 benchmarks/bench_sfc.py --device cuda --slice 0:12 --loop-examples 4 2>"$out/sfc012.err" \
  | tee "$out/sfc012.txt"
tail -3 "$out/sfc012.err"
timeout 240 python3 benchmarks/bench_e2e.py --device cuda --slice 0:12 --runs 1 2>"$out/e2e.err" | tee "$out/e2e.txt"
tail -3 "$out/e2e.err"
