"""Benchmark steer.py: generation speed with interventions, the key/value cache, a response curve.

    python3 benchmarks/bench_steer.py [--device cuda] [--new-tokens 64] [--recompute-tokens 256]
                                       [--repeats 3] [--threads N] [--cpu-time]

Not a test. GPT-2-small-shaped random weights (GPT2Config() defaults, no
download); slice 9:12 with a 24576-latent ReLU SAE on hook_resid_pre and
32768-latent TopK-32 layer-norm SAEs on hook_attn_out and hook_mlp_out per
layer (random_weights.py, calibrated so ~80 features fire per token). Prompts
of 12 random tokens (BOS first). Printed:

1. tokens/s of greedy generation with the key/value cache, batch 1 and 8,
   --new-tokens new tokens, with the SAEs of the intervened sites alone
   spliced (as steer.py loads them): the plain model (no hooks), one intervened site
   (resid_9 set to 0: a ReLU site reads one encoder column; attn_10 set to 0:
   a TopK site encodes in full, to know the top k), and all nine sites (one
   feature set to 0 each); the ratio to plain is the cost of intervening;
2. the intervention's own work per decode step at one ReLU and one TopK site
   (the model not run), the most stable of these numbers on a shared machine;
3. --recompute-tokens tokens with the cache against recomputing the whole
   prefix every step (one full forward per token, batch 1); the tokens are
   checked equal;
4. a response curve: 32 values of resid_9's feature scaled from 0 to 2,
   8 watched features at layers 10 and 11, one batch (`response_curve`).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import calibrate_saes, random_gpt2, random_sae  # noqa: E402

from sparse_coding.algorithms.generation import Sampling, generate, left_padded  # noqa: E402
from sparse_coding.algorithms.response_curve import response_curve  # noqa: E402
from sparse_coding.algorithms.steering import site_edits, steering  # noqa: E402
from sparse_coding.config.steering import CurveSpec, FeatureEdit  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel  # noqa: E402
from sparse_coding.text.batches import TokenBatch  # noqa: E402

LAYERS = range(9, 12)
# What a timing reads: wall time, or with --cpu-time the process's CPU time, which on a machine
# shared with other jobs measures the work done rather than the waiting (use it with --threads 1).
CLOCK = [time.perf_counter]
PROMPT_TOKENS = 12


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(device: str, gen: torch.Generator) -> tuple[SplicedModel, torch.Tensor]:
    saes = []
    for layer in LAYERS:
        saes.append(random_sae(f"blocks.{layer}.hook_resid_pre", 24576, False, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_attn_out", 32768, True, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_mlp_out", 32768, True, device, gen))
    spliced = SplicedModel(random_gpt2(device), saes)
    prompts = torch.randint(0, 50257, (8, PROMPT_TOKENS), generator=gen)
    prompts[:, 0] = 50256
    calibrate_saes(spliced, prompts.to(device), torch.randint(0, 50257, (8, 64), generator=gen).to(device))
    return spliced, prompts


def firing(spliced: SplicedModel, key: str, ids: torch.Tensor) -> int:
    """The feature of site `key` with the largest activation at the prompt's last token."""
    seen = {}

    def read(site, x):
        if site.key == key:
            seen["acts"] = site.feats(x)[0, -1]
        return x

    with torch.no_grad(), spliced.intervene(read):
        spliced(ids[:1])
    return int(seen["acts"].argmax())


def timed_generation(spliced, prompts, sampling, edits, device) -> tuple[float, torch.Tensor]:
    """Seconds of one generation and its tokens."""
    at = None if edits is None else (lambda columns: steering(site_edits(edits, columns, prompts.lengths)))
    sync(device)
    start = CLOCK[0]()
    tokens = generate(spliced, prompts, sampling, intervention_at=at).tokens
    sync(device)
    return CLOCK[0]() - start, tokens


def only(spliced: SplicedModel, edits: list[FeatureEdit] | None) -> SplicedModel:
    """The model with the SAEs of `edits`' sites alone, as steer.py loads it (plain: none)."""
    keys = {edit.site_key for edit in edits or []}
    return SplicedModel(spliced.model, [site.sae for site in spliced.sites if site.key in keys])


def generation_speed(spliced, prompts, device, new_tokens, repeats) -> None:
    """Each case's fastest of `repeats` rounds; a round runs every case once (each round starting
    with the next case), so a busy machine slows them alike."""
    ids = prompts.to(device)
    cases = {
        "plain": None,
        "1 site (resid_9, ReLU)": [FeatureEdit(f"resid_9.{firing(spliced, 'resid_9', ids)}", "set", 0.0)],
        "1 site (attn_10, TopK)": [FeatureEdit(f"attn_10.{firing(spliced, 'attn_10', ids)}", "set", 0.0)],
        "9 sites": [FeatureEdit(f"{s.key}.{firing(spliced, s.key, ids)}", "set", 0.0) for s in spliced.sites],
    }
    models = {name: only(spliced, edits) for name, edits in cases.items()}
    print(
        f"generation, {new_tokens} new tokens after {PROMPT_TOKENS}, greedy, key/value cache "
        f"(fastest of {repeats} rounds):"
    )
    for batch in (1, 8):
        rows = left_padded(prompts[:batch].tolist(), 50256, device)
        best, tokens = {}, {}
        for name, edits in cases.items():  # warm-up
            timed_generation(models[name], rows, Sampling(2), edits, device)
        for round_ in range(repeats):
            names = list(cases)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotated
                edits = cases[name]
                seconds, tokens[name] = timed_generation(
                    models[name], rows, Sampling(new_tokens), edits, device
                )
                best[name] = min(best.get(name, seconds), seconds)
        for name in cases:
            changed = (tokens[name] != tokens["plain"]).float().mean()
            print(
                f"  batch {batch}, {name:<24} {batch * new_tokens / best[name]:8.1f} tokens/s  "
                f"({best[name] / best['plain']:.2f}x plain's time, {changed:.0%} of tokens changed)"
            )


def edit_cost(spliced, prompts, device, repeats) -> None:
    """The intervention's own work in one decode step (one new token per row), without the model:
    the per-step positions, the hook's edit, at one ReLU and one TopK site."""
    ids = prompts.to(device)
    print("one intervened site's work per decode step (set 0), alone:")
    for key in ("resid_9", "attn_10"):
        site, edits = spliced.by_key[key], [FeatureEdit(f"{key}.{firing(spliced, key, ids)}", "set", 0.0)]
        for batch in (1, 8):
            rows = left_padded(prompts[:batch].tolist(), 50256, device)
            columns, x = (
                rows.token_index(PROMPT_TOKENS, PROMPT_TOKENS + 1),
                torch.randn(batch, 1, 768, device=device),
            )
            best = float("inf")
            for _ in range(repeats):
                sync(device)
                start = CLOCK[0]()
                for _ in range(100):
                    steering(site_edits(edits, columns, rows.lengths))(site, x)
                sync(device)
                best = min(best, (CLOCK[0]() - start) / 100)
            print(f"  {key} ({site.sae.cfg.activation}), batch {batch}: {best * 1e3:.2f} ms")


def recompute(spliced, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by one full forward of the whole text per new token."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(spliced.model(torch.tensor([ids], device=spliced.device))[0, -1].argmax()))
    return ids[-steps:]


def cache_speedup(spliced, prompts, device, steps) -> None:
    rows = left_padded(prompts[:1].tolist(), 50256, device)
    cached_s, tokens = timed_generation(only(spliced, None), rows, Sampling(steps), None, device)
    start = CLOCK[0]()
    reference = recompute(spliced, prompts[0].tolist(), steps)
    sync(device)
    recompute_s = CLOCK[0]() - start
    assert tokens[0].tolist() == reference, "cached generation differs from recomputation"
    print(
        f"{steps} tokens, batch 1: key/value cache {cached_s:.2f} s, recomputing the prefix "
        f"{recompute_s:.2f} s: {recompute_s / cached_s:.1f}x (same tokens)"
    )


def curve_time(spliced, prompts, device, repeats) -> None:
    ids = prompts[:1].to(device)
    node = f"resid_9.{firing(spliced, 'resid_9', ids)}"
    watch = [f"{key}.{firing(spliced, key, ids)}" for key in ("resid_10", "attn_10", "mlp_10", "resid_11")]
    watch += [
        f"{key}.{firing(spliced, key, ids) + 1}" for key in ("resid_10", "attn_10", "mlp_10", "resid_11")
    ]
    spec = CurveSpec(node, "scale", 0.0, 2.0, 32, tuple(watch), None)
    batch = TokenBatch(ids, torch.ones_like(ids), 0)
    response_curve(spliced, batch, CurveSpec(node, "scale", 0.0, 2.0, 2, tuple(watch), None))  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = CLOCK[0]()
        result = response_curve(spliced, batch, spec, answer_id=0)
        sync(device)
        times.append(CLOCK[0]() - start)
    seconds = min(times)
    moved = sum(float(v.max() - v.min()) > 0 for v in result.watched.values())
    print(
        f"response curve, 32 values x 8 watched features, slice 9:12: {seconds:.2f} s (fastest of {repeats}) "
        f"({moved}/8 watched features moved)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--recompute-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timings: the fastest of this many rounds")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (on a busy machine, 1 avoids threads waiting on each other)",
    )
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time (CPU device only)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        assert args.device == "cpu", "--cpu-time measures CPU work; on a GPU use wall time"
        CLOCK[0] = time.process_time
    torch.manual_seed(0)  # the random GPT-2's initialisation
    gen = torch.Generator().manual_seed(0)
    spliced, prompts = build(args.device, gen)
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"device {args.device}, {torch.get_num_threads()} threads, timed by {clock}")
    generation_speed(spliced, prompts, args.device, args.new_tokens, args.repeats)
    edit_cost(spliced, prompts, args.device, args.repeats)
    cache_speedup(spliced, prompts, args.device, args.recompute_tokens)
    curve_time(spliced, prompts, args.device, args.repeats)


if __name__ == "__main__":
    main()
