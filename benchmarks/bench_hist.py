"""Benchmark hist.py's three phases on GPT-2-small-shaped random weights with real-size SAEs.

    python3 benchmarks/bench_hist.py [--device cuda] [--sequences 2000] [--slice 9:12]

Random weights: GPT2Config() defaults; resid SAEs 24576-latent ReLU on
hook_resid_pre (encoder bias calibrated so ~80 features fire per token);
attn/mlp SAEs 32768-latent TopK-32 with layer-normalised inputs. Random token
sequences of 64-128 tokens after BOS stand in for a dataset (no tokenizer or
network needed). Prints time per phase, tokens per second, peak memory and the
size a (kept, d_sae) activation matrix would have had.
"""

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import calibrate_saes, random_gpt2, random_sae  # noqa: E402

from sparse_coding.algorithms.thresholds import compute_thresholds  # noqa: E402
from sparse_coding.algorithms.top_percentile import top_count  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel  # noqa: E402
from sparse_coding.text.batches import TokenBatch  # noqa: E402

BOS = 50256


def random_batches(n_sequences: int, batch_size: int, max_len: int, device: str):
    """A fresh stream of the same right-padded random batches per call."""

    def stream():
        gen = torch.Generator().manual_seed(0)
        for first in range(0, n_sequences, batch_size):
            size = min(batch_size, n_sequences - first)
            lengths = torch.randint(max_len // 2, max_len + 1, (size,), generator=gen)
            ids = torch.randint(0, BOS, (size, int(lengths.max())), generator=gen)
            ids[:, 0] = BOS
            mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
            yield TokenBatch((ids * mask + BOS * (1 - mask)).to(device), mask.to(device), first)

    return stream


def main() -> None:
    keep_freed_memory()  # as the scripts do (sparse_coding.runtime.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--slice", default="9:12")
    parser.add_argument("--clusters", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    model = random_gpt2(args.device)
    start, stop = map(int, args.slice.split(":"))
    gen = torch.Generator().manual_seed(0)
    saes = [
        random_sae(f"blocks.{layer}.{hook}", d_sae, topk, args.device, gen)
        for layer in range(start, stop)
        for hook, d_sae, topk in (("hook_resid_pre", 24576, False), ("hook_attn_out", 32768, True),
                                  ("hook_mlp_out", 32768, True))
    ]  # fmt: skip
    spliced = SplicedModel(model, saes)
    batches = random_batches(args.sequences, args.batch_size, args.max_len, args.device)
    first = next(iter(batches())).input_ids
    calibrate_saes(spliced, first, centre_on=first)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = compute_thresholds(
        spliced, batches, cluster_layer=start, n_clusters=args.clusters, keeper_cluster=1, seed=0,
        percentile=99.99, n_batches=-(-args.sequences // args.batch_size),
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    n_tokens = int(result.cluster_sizes.sum())
    d_sae_total = sum(site.sae.d_sae for site in spliced.sites)
    print(f"device {args.device}; {args.sequences} sequences, {n_tokens} tokens, {len(spliced.sites)} sites")
    print(f"total {elapsed:.1f}s = {n_tokens / elapsed:.0f} tokens/s over three passes")
    print(f"kept {result.n_kept} sequences; cluster sizes {result.cluster_sizes.tolist()}")
    print(f"top values kept per feature: {top_count(result.n_kept, 99.99)}; a (kept, d_sae) float32 matrix "
          f"over all sites would be {result.n_kept * d_sae_total * 4 / 2**30:.2f} GiB")  # fmt: skip
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak CPU RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
