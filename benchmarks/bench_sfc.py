"""Benchmark fast.py's Sparse Feature Circuits method: examples batched vs one at a time.

    python3 benchmarks/bench_sfc.py [--device cuda] [--slice 9:12] [--examples 32] [--loop-examples 4]

GPT-2-small-shaped random weights (see `random_weights`): resid SAEs of 24576
ReLU latents, attn/mlp SAEs of 32768 TopK-32 latents with layer-normalised
inputs, over the slice. `--examples` contrastive pairs of 12-token random
prompts (patch = clean with its last 3 tokens redrawn), METRIC logit_diff,
BASELINE patch, NUM_DOWN_NODES 5. Times the whole `gradient_graph` (nodes,
edges, graph) on every example in batches of `--batch-size`, and the same code
called once per example on the first `--loop-examples` of them; prints
examples per second of both and their ratio.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import calibrate_saes, random_gpt2, random_sae  # noqa: E402

from sparse_coding.algorithms.attribution_graph import GraphOptions, gradient_graph  # noqa: E402
from sparse_coding.algorithms.metrics import METRICS  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel  # noqa: E402
from sparse_coding.text.batches import TokenBatch  # noqa: E402
from sparse_coding.text.pairs import token_batch  # noqa: E402

N_TOKENS = 12


def spliced_random_gpt2(layers: range, device: str, gen: torch.Generator) -> SplicedModel:
    model = random_gpt2(device)
    saes = []
    for layer in layers:
        saes.append(random_sae(f"blocks.{layer}.hook_resid_pre", 24576, False, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_attn_out", 32768, True, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_mlp_out", 32768, True, device, gen))
    return SplicedModel(model, saes)


def random_pairs(n: int, gen: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, N_TOKENS + 1) clean and patch token rows; the last token of each is its answer."""
    clean = torch.randint(0, 50257, (n, N_TOKENS + 1), generator=gen)
    patch = clean.clone()
    patch[:, -3:] = torch.randint(0, 50257, (n, 3), generator=gen)
    return clean.to(device), patch.to(device)


def timed_graph(
    spliced: SplicedModel, batches: list[TokenBatch], options: GraphOptions, device: str
) -> float:
    start = time.perf_counter()
    gradient_graph(spliced, batches, options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    keep_freed_memory()  # as the scripts do (sparse_coding.runtime.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--slice", default="9:12")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loop-examples", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gen = torch.Generator().manual_seed(0)
    start, stop = (int(p) for p in args.slice.split(":"))
    spliced = spliced_random_gpt2(range(start, stop), args.device, gen)
    clean, patch = random_pairs(args.examples, gen, args.device)
    calibrate_saes(spliced, clean[:, :-1], clean[:, :-1])
    options = GraphOptions(METRICS["logit_diff"], baseline="patch", num_down_nodes=5, num_up_nodes=5)
    batches = [
        token_batch(clean[i : i + args.batch_size], patch[i : i + args.batch_size])
        for i in range(0, args.examples, args.batch_size)
    ]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {args.device} ({name}), slice {args.slice} ({len(spliced.sites)} sites), "
        f"{args.examples} pairs of {N_TOKENS} tokens, logit_diff, patch baseline",
        flush=True,
    )
    singles = [token_batch(clean[i : i + 1], patch[i : i + 1]) for i in range(args.loop_examples)]
    timed_graph(spliced, singles[:1], options, args.device)  # warm-up: allocator, kernels
    loop_s = sum(timed_graph(spliced, [single], options, args.device) for single in singles)
    loop_rate = args.loop_examples / loop_s
    print(
        f"one example at a time ({args.loop_examples} examples): {loop_s:.2f}s, {loop_rate:.3f} examples/s",
        flush=True,
    )
    batched_s = timed_graph(spliced, batches, options, args.device)
    batched_rate = args.examples / batched_s
    print(f"batched ({args.batch_size} per pass): {batched_s:.2f}s, {batched_rate:.3f} examples/s")
    print(f"speed-up: {batched_rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
