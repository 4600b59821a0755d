"""Benchmark the dataset passes on one process vs two ranks (torchrun): fast.py's pairs, hist.py, contexts.

    python3 benchmarks/bench_scale.py [--device cpu] [--slice 11:12] [--pairs 128] [--sequences 512]

Runs the same three workloads in three set-ups, each a fresh process group of
its own, and prints throughput, the speed-up of two ranks and peak memory per
rank:
  - 1 rank, 1 thread (the baseline);
  - 1 process, 2 threads (what one process makes of two cores);
  - 2 ranks of 1 thread each (`torchrun --nproc-per-node 2`, gloo on the CPU).
Workloads, on GPT-2-small-shaped random weights (`random_weights`: resid SAEs
of 24576 ReLU latents, attn/mlp SAEs of 32768 TopK-32 latents) over the slice:
  - fast: `gradient_graph` over `--pairs` contrastive pairs of 12 tokens
    (logit_diff, patch baseline), `--batch-size` per pass;
  - hist: `compute_thresholds` (three passes; 99.99th percentile) over
    `--sequences` random sequences of `--max-len` / 2 to `--max-len` tokens,
    batches of 16;
  - contexts: `collect_contexts` of 64 random features per site over the same
    sequences.
Each rank builds the same weights from the same seeds. Times are rank 0's,
from a barrier before a workload to its end (every pass ends in a collective);
CPU seconds are summed over the ranks and threads, so they say what the work
costs whatever else the machine runs.
With `--device cuda:0` both ranks share one GPU; `--device cuda` gives each
rank its own (LOCAL_RANK).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_hist import random_batches  # noqa: E402
from bench_sfc import random_pairs, spliced_random_gpt2  # noqa: E402
from random_weights import calibrate_saes  # noqa: E402

from sparse_coding.algorithms.attribution_graph import GraphOptions, gradient_graph  # noqa: E402
from sparse_coding.algorithms.metrics import METRICS  # noqa: E402
from sparse_coding.algorithms.thresholds import compute_thresholds  # noqa: E402
from sparse_coding.labels.contexts import collect_contexts  # noqa: E402
from sparse_coding.runtime import distributed  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.text.pairs import token_batch  # noqa: E402

SETUPS = (("1 rank x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1))


class NumberTokenizer:
    """Shows token ids as text; contexts need a tokenizer only for their vocabulary strings."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return f"<{token_id}>"


def timed(run) -> tuple[float, float]:
    """Rank 0's wall seconds for `run` and the CPU seconds every rank (every thread) spent on it."""
    distributed.all_sum(0.0)  # a barrier: every rank starts together
    start, cpu = time.perf_counter(), time.process_time()
    run()
    cpu = time.process_time() - cpu
    return time.perf_counter() - start, distributed.all_sum(cpu)


def workloads(args: argparse.Namespace, device: torch.device) -> dict:
    """Per workload: rank 0's wall seconds, the amount of work, its unit, and all ranks' CPU seconds."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    start, stop = map(int, args.slice.split(":"))
    spliced = spliced_random_gpt2(range(start, stop), str(device), gen)
    clean, patch = random_pairs(args.pairs, gen, str(device))
    calibrate_saes(spliced, clean[:, :-1], clean[:, :-1])
    options = GraphOptions(METRICS["logit_diff"], baseline="patch", num_down_nodes=5, num_up_nodes=5)
    pairs = [
        token_batch(clean[i : i + args.batch_size], patch[i : i + args.batch_size])
        for i in range(0, args.pairs, args.batch_size)
    ]
    stream = random_batches(args.sequences, 16, args.max_len, str(device))
    tokens = sum(int(batch.attention_mask.sum()) for batch in stream())
    features = {
        site.key: torch.randperm(site.sae.d_sae, generator=gen)[:64].tolist() for site in spliced.sites
    }
    runs = {
        "fast": (lambda: gradient_graph(spliced, pairs, options), args.pairs, "examples"),
        "hist": (
            lambda: compute_thresholds(
                spliced, stream, cluster_layer=start, n_clusters=8, keeper_cluster=1, seed=0, percentile=99.99
            ),
            3 * tokens,
            "tokens",
        ),
        "contexts": (
            lambda: collect_contexts(
                spliced, NumberTokenizer(), stream(), features=features, per_feature=10, view=5
            ),
            tokens,
            "tokens",
        ),
    }
    results = {}
    for name, (run, amount, unit) in runs.items():
        wall, cpu = timed(run)
        results[name] = (wall, amount, unit, cpu)
    return results


def worker(args: argparse.Namespace) -> None:
    """One set-up's process (or one rank of it): run the workloads, rank 0 writes `--out`."""
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    with distributed.session():
        device = distributed.local_device(torch.device(args.device))
        results = workloads(args, device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is in KiB)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**30
        peaks = distributed.all_gather(peak)
        if distributed.is_main():
            Path(args.out).write_text(json.dumps({"results": results, "peaks": peaks}))


def run_setup(args: argparse.Namespace, ranks: int, threads: int) -> dict:
    """Start one set-up as its own process(es); its rank 0's results."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        sizes = {"--pairs": args.pairs, "--batch-size": args.batch_size, "--sequences": args.sequences}
        sizes |= {"--max-len": args.max_len, "--slice": args.slice, "--device": args.device}
        passed = [str(word) for pair in sizes.items() for word in pair]
        passed += ["--worker", "--threads", str(threads), "--out", str(out)]
        launcher = [sys.executable]
        if ranks > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run([*launcher, __file__, *passed], env=env, check=True)
        return json.loads(out.read_text())


def report(measured: dict[str, dict]) -> None:
    """Markdown tables: throughput per set-up and the two ranks' speed-ups; CPU seconds (all ranks and
    threads: what the work costs, whatever else the machine runs); peak memory per rank."""
    names = [name for name, _, _ in SETUPS]
    print(f"| workload | {' | '.join(names)} | 2 ranks vs 1 thread | 2 ranks vs 2 threads |")
    print("|---|---|---|---|---|---|")
    for work, (_, amount, unit, _) in measured[names[0]]["results"].items():
        seconds = [measured[name]["results"][work][0] for name in names]
        rates = [amount / s for s in seconds]
        cells = [f"{rate:.1f} {unit}/s ({s:.1f} s)" for rate, s in zip(rates, seconds, strict=True)]
        speedup = rates[2] / rates[0]
        versus = f"{speedup:.2f}x (efficiency {speedup / 2:.0%}) | {rates[2] / rates[1]:.2f}x"
        print(f"| {work} ({amount} {unit}) | {' | '.join(cells)} | {versus} |")
    print(f"\n| CPU seconds, all ranks | {' | '.join(names)} | 2 ranks' CPU vs 1 rank's |")
    print("|---|---|---|---|---|")
    for work in measured[names[0]]["results"]:
        cpu = [measured[name]["results"][work][3] for name in names]
        print(f"| {work} | {' | '.join(f'{c:.1f}' for c in cpu)} | {cpu[2] / cpu[0]:.2f}x |")
    peaks = "; ".join(
        f"{name}: {', '.join(f'{p:.2f}' for p in measured[name]['peaks'])} GiB" for name in names
    )
    print(f"\npeak memory per rank (RSS; GPU memory on CUDA): {peaks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slice", default="11:12")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--max-len", type=int, default=32, help="sequences of max-len / 2 to max-len tokens")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"device {args.device}, slice {args.slice}; load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    measured = {name: run_setup(args, ranks, threads) for name, ranks, threads in SETUPS}
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    report(measured)


if __name__ == "__main__":
    main()
