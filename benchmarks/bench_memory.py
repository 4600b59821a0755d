"""Measure the working memory of fast.py's and pipe.py's passes per SAE site, against the memory check.

    python3 benchmarks/bench_memory.py [--width 32768] [--layers 2] [--rows 8] [--positions 20]
                                       [--phase fast|contexts|val|pipe] [--sae-dtype float32]

GPT-2-small-shaped random model and OpenAI-v5-style SAEs (TopK-32, layer
norm) at resid_post / attn_out / mlp_out of the last --layers layers (pipe:
resid only). The peak of the bytes the phase holds beyond the weights comes
from PyTorch's profiler (every allocation and free of the CPU allocator, so
glibc's caching does not blur it); in units of one dense (rows, positions,
d_sae) array it is what `sparse_coding.models.memory` multiplies back.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import IdNames  # noqa: E402

from sparse_coding.models.saes import SAE, SAEConfig  # noqa: E402
from sparse_coding.models.transformer import GPT2, GPT2Config  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel  # noqa: E402

D_MODEL = 768


def peak_allocated(run) -> int:
    """The largest number of bytes `run()` held at once beyond what was allocated before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    now = peak = 0
    for event in events:
        now += event.nbytes()
        peak = max(peak, now)
    return peak


def filled(*shape: int, std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A normal tensor built in place (no temporaries that would raise the peak)."""
    out = torch.empty(*shape, dtype=torch.float32)
    out.normal_(0, std, generator=gen)
    return out if dtype == torch.float32 else out.to(dtype)


def model() -> GPT2:
    config = GPT2Config()
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in GPT2(config).named_parameters()}
    state = {name: filled(*shape, std=0.02, gen=gen, dtype=torch.float32) for name, shape in shapes.items()}
    for name in state:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            state[name].fill_(1.0)
    return GPT2.from_state_dict(config, state, "random GPT-2")


def sae(hook: str, d_sae: int, dtype: torch.dtype, gen: torch.Generator) -> SAE:
    cfg = SAEConfig(
        d_in=D_MODEL, d_sae=d_sae, hook_name=hook, activation="topk", k=32,
        normalize_activations="layer_norm", apply_b_dec_to_input=True, prepend_bos=False,
        center_writing_weights=False, neuronpedia_id=None, source=hook,
    )  # fmt: skip
    weights = {
        "W_enc": filled(D_MODEL, d_sae, std=D_MODEL**-0.5, gen=gen, dtype=dtype),
        "b_enc": torch.zeros(d_sae, dtype=dtype),
        "W_dec": filled(d_sae, D_MODEL, std=D_MODEL**-0.5, gen=gen, dtype=dtype),
        "b_dec": torch.zeros(D_MODEL, dtype=dtype),
    }
    return SAE(cfg, weights)


def run_phase(spliced: SplicedModel, phase: str, rows: int, positions: int) -> None:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (rows, positions + 1), generator=gen)
    if phase == "fast":
        from sparse_coding.algorithms.attribution_graph import GraphOptions, gradient_graph
        from sparse_coding.algorithms.metrics import METRICS
        from sparse_coding.text.batches import TokenBatch

        batch = TokenBatch(ids[:, :-1], torch.ones_like(ids[:, :-1]), answers=ids[:, -1])
        gradient_graph(spliced, [batch], GraphOptions(metric=METRICS["cross_entropy"]))
    elif phase == "contexts":
        from sparse_coding.labels.contexts import collect_contexts
        from sparse_coding.text.batches import TokenBatch

        batch = TokenBatch(ids, torch.ones_like(ids), 0)
        features = (
            None if os.environ.get("ALL_FEATURES") else {site.key: list(range(10)) for site in spliced.sites}
        )
        collect_contexts(spliced, IdNames(), [batch], features=features, per_feature=10, view=5)
    elif phase == "val":
        from sparse_coding.algorithms.feature_means import feature_means
        from sparse_coding.algorithms.validation import validate_circuit
        from sparse_coding.text.batches import TokenBatch

        batches = [TokenBatch(ids, torch.ones_like(ids), 0)]
        means = feature_means(spliced, batches, spliced.by_key)
        circuit = {spliced.sites[0].key: [0, 1, 2]}
        validate_circuit(spliced, batches, circuit=circuit, means=means)
    else:
        from sparse_coding.algorithms.ablation_graph import ablation_graph
        from sparse_coding.text.batches import TokenBatch

        batch = TokenBatch(ids, torch.ones_like(ids), 0)
        layers = [site.layer for site in spliced.sites]
        ablation_graph(spliced, batch, tokenizer=IdNames(), layers=layers, threshold_exp=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--phase", choices=("fast", "contexts", "val", "pipe"), default="fast")
    parser.add_argument("--sae-dtype", default="float32")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.sae_dtype)
    gen = torch.Generator().manual_seed(0)
    gpt2 = model()
    hooks = (
        ("hook_resid_post",) if args.phase == "pipe" else ("hook_resid_post", "hook_attn_out", "hook_mlp_out")
    )
    layers = range(12 - args.layers, 12)
    saes = [sae(f"blocks.{layer}.{hook}", args.width, dtype, gen) for layer in layers for hook in hooks]
    spliced = SplicedModel(gpt2, saes)
    grad = torch.enable_grad() if args.phase == "fast" else torch.no_grad()

    def run() -> None:
        with grad:
            run_phase(spliced, args.phase, args.rows, args.positions)

    working = peak_allocated(run)
    dense = args.rows * args.positions * args.width * dtype.itemsize
    print(
        f"phase={args.phase} width={args.width} sites={len(saes)} rows={args.rows} "
        f"positions={args.positions} dtype={args.sae_dtype}: working {working / 2**20:.0f} MiB = "
        f"{working / dense:.2f} dense (rows, positions, d_sae) arrays, "
        f"{working / len(saes) / dense:.2f} per site"
    )


if __name__ == "__main__":
    main()
