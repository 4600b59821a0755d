"""Benchmark fast.py's phases on GPT-2-small-shaped random weights with real-size SAEs.

    python3 benchmarks/bench_fast.py [--device cuda] [--slice 0:12] [--baseline-nodes 12]
                                      [--label-sequences 32]

Random weights: GPT2Config() defaults; resid SAEs 24576-latent ReLU on
hook_resid_pre (encoder bias calibrated so ~80 features fire per token, like
real SAEs); attn/mlp SAEs 32768-latent TopK-32 with layer-normalised inputs.
12-token prompt, NUM_DOWN_NODES 5. Prints time per phase, peak memory, pass
counts, and the edge phase against the original tool's method: per down-node,
a backward through the whole (uncut) spliced model, plus one more forward and
backward per intermediate site to subtract indirect paths. That baseline runs
on --baseline-nodes down-nodes and is extrapolated to all of them.

The labels phase collects top contexts over --label-sequences random 64-token
sequences: for the graph's feature nodes (what publishing does), for every
feature of every site (what it did before), and for as many randomly picked
features per site (the graph's features are the ones that fire on its prompt,
so some fire often; random picks fire more rarely). The bare forward over the
same tokens is the floor of any labels pass. TopK sites report how much of
their encoder they read; --width-scale multiplies every SAE's width, to see
what of the labels phase grows with it.
"""

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import IdNames, calibrate_saes, random_gpt2, random_sae  # noqa: E402

from sparse_coding.algorithms import attribution  # noqa: E402
from sparse_coding.algorithms.attribution import node_attributions  # noqa: E402
from sparse_coding.algorithms.attribution_edges import edges, upstream_sites  # noqa: E402
from sparse_coding.algorithms.attribution_graph import (  # noqa: E402
    GraphOptions,
    build_graph,
    choose_down_nodes,
    summarize,
)
from sparse_coding.algorithms.metrics import METRICS  # noqa: E402
from sparse_coding.graphs.graph_files import save_graph  # noqa: E402
from sparse_coding.labels.contexts import collect_contexts  # noqa: E402
from sparse_coding.labels.logit_lens import add_logit_effects  # noqa: E402
from sparse_coding.pipelines.publish import wanted_features  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.splicing.splice import Site, SplicedModel  # noqa: E402
from sparse_coding.text.batches import TokenBatch  # noqa: E402
from sparse_coding.text.pairs import token_batch  # noqa: E402

COUNTS = {"forward": 0, "backward": 0}


def baseline_edges(
    spliced: SplicedModel, inputs, attributions, down_nodes, n_nodes: int
) -> tuple[float, int]:
    """Original method: per down-node, uncut full forward + backward, plus a pass per intermediate site."""
    pairs = [
        (site, int(f))
        for site in spliced.sites
        if upstream_sites(spliced, site)
        for f in down_nodes[site.key]
    ]
    start = time.perf_counter()
    for site, feature in pairs[:n_nodes]:
        ups = upstream_sites(spliced, site)
        for _ in range(1 + max(0, len(ups) - 1)):  # total effect, then one pass per indirect path
            leaves = {u.key: attributions[u.key].leaves.values.clone().requires_grad_() for u in ups}
            read = {}

            def splice(s: Site, x: torch.Tensor) -> torch.Tensor:
                if s.key == site.key:
                    read["x"] = x
                code = s.code(x)  # every site is spliced: x = decode(encode(x)) + error
                x = x - code.error + code.error
                if s.key not in leaves:
                    return x
                lv = attributions[s.key].leaves
                return x + lv.decode(s, leaves[s.key]) - lv.decode(s, leaves[s.key].detach())

            with torch.enable_grad(), spliced.intervene(splice):
                logits = spliced(inputs)
                gate = torch.ones(read["x"].shape[1], 1, device=inputs.device)
                value = site.selected_feats(read["x"][0], torch.tensor([feature], device=inputs.device), gate)
                torch.autograd.grad(value.sum() + 0 * logits.sum(), list(leaves.values()), allow_unused=True)
    elapsed = time.perf_counter() - start
    return elapsed * len(pairs) / min(n_nodes, len(pairs)), len(pairs)


def label_batches(spliced: SplicedModel, n_sequences: int, gen: torch.Generator) -> list[TokenBatch]:
    """Random 64-token sequences, 8 per batch, as the labels pass reads a dataset."""
    return [
        TokenBatch(ids.to(spliced.device), torch.ones_like(ids).to(spliced.device), first)
        for first in range(0, n_sequences, 8)
        for ids in [torch.randint(0, 50257, (min(8, n_sequences - first), 64), generator=gen)]
    ]


class TopKReads(logging.Handler):
    """Reads collect_contexts' debug lines: per TopK site, the tokens that needed exact
    membership and the encoder columns read (% of a full-width encode of every token)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.exact = self.of = 0
        self.shares: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "exact TopK membership" in (message := record.getMessage()):
            exact, of = (int(w) for w in message.split(":")[1].split()[:3:2])
            self.exact, self.of = self.exact + exact, self.of + of
            self.shares.append(float(message.split("read: ")[1].split("%")[0]) / 100)

    def summary(self) -> str:
        share = sum(self.shares) / max(len(self.shares), 1)
        return (
            f"TopK sites read {share:.0%} of a full-width encode of every token "
            f"({self.exact / max(self.of, 1):.0%} of their tokens needed exact membership)"
        )


def contexts_seconds(spliced: SplicedModel, batches: list[TokenBatch], features) -> tuple[float, str]:
    """Seconds to collect top-10 contexts of `features` (None: all), and what the TopK sites read."""
    counter = TopKReads()
    logger = logging.getLogger("sparse_coding.labels.contexts")
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    start = time.perf_counter()
    collect_contexts(spliced, IdNames(), batches, features=features, per_feature=10, view=5)
    sync(str(spliced.device))
    logger.removeHandler(counter)
    return time.perf_counter() - start, counter.summary()


def forward_seconds(spliced: SplicedModel, batches: list[TokenBatch]) -> float:
    """The floor of any labels pass: the bare model's forward over the same tokens."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            spliced.run_blocks(spliced.embed(batch.input_ids), 0, spliced.n_layers, batch.attention_mask)
    sync(str(spliced.device))
    return time.perf_counter() - start


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    keep_freed_memory()  # as the scripts do (sparse_coding.runtime.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--slice", default="0:12")
    parser.add_argument("--baseline-nodes", type=int, default=12)
    parser.add_argument("--num-down-nodes", type=int, default=5)
    parser.add_argument("--label-sequences", type=int, default=32)
    parser.add_argument(
        "--width-scale",
        type=float,
        default=1.0,
        help="multiply every SAE's width (does labels scale with it?)",
    )
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    start, stop = (int(p) for p in args.slice.split(":"))

    t0 = time.perf_counter()
    model = random_gpt2(device)
    saes = []
    resid_width, topk_width = (int(args.width_scale * width) for width in (24576, 32768))
    for layer in range(start, stop):
        saes.append(random_sae(f"blocks.{layer}.hook_resid_pre", resid_width, False, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_attn_out", topk_width, True, device, gen))
        saes.append(random_sae(f"blocks.{layer}.hook_mlp_out", topk_width, True, device, gen))
    spliced = SplicedModel(model, saes)
    tokens = torch.randint(0, 50257, (1, 13), generator=gen).to(device)
    batch = token_batch(tokens)
    inputs = batch.input_ids
    calibrate_saes(spliced, inputs, torch.randint(0, 50257, (8, 64), generator=gen))  # 512 random tokens
    sync(device)
    load_s = time.perf_counter() - t0

    real_grad = torch.autograd.grad

    def counted_grad(*a, **k):
        COUNTS["backward"] += 1
        return real_grad(*a, **k)

    attribution.torch.autograd.grad = counted_grad
    model.transformer.h[0].register_forward_pre_hook(
        lambda m, a: COUNTS.__setitem__("forward", COUNTS["forward"] + 1)
    )

    t0 = time.perf_counter()
    options = GraphOptions(METRICS["cross_entropy"], num_down_nodes=args.num_down_nodes, num_up_nodes=5)
    attrs = node_attributions(spliced, batch, metric=options.metric)
    sync(device)
    nodes_s = time.perf_counter() - t0
    node_counts = dict(COUNTS)
    summaries = summarize([attrs])
    down = choose_down_nodes(summaries, options)
    n_down = sum(len(v) + 1 for k, v in down.items() if upstream_sites(spliced, spliced.by_key[k]))
    timings = {}
    for batched in (False, True):
        COUNTS.update(forward=0, backward=0)
        t0 = time.perf_counter()
        edge_sets = edges(spliced, batch, attrs, down, batched=batched)
        sync(device)
        timings[batched] = (time.perf_counter() - t0, dict(COUNTS))
    attribution.torch.autograd.grad = real_grad
    baseline_s, n_pairs = baseline_edges(spliced, inputs, attrs, down, args.baseline_nodes)

    t0 = time.perf_counter()
    graph = build_graph(spliced, summaries, edge_sets, options)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    add_logit_effects(graph, spliced, IdNames(), n_tokens=10)
    sync(device)
    logits_s = time.perf_counter() - t0
    wanted = wanted_features(graph)
    label_data = label_batches(spliced, args.label_sequences, gen)
    forward_s = forward_seconds(spliced, label_data)
    graph_contexts_s, graph_full = contexts_seconds(spliced, label_data, wanted)
    every_contexts_s, _ = contexts_seconds(spliced, label_data, None)
    picks = {
        key: torch.randperm(spliced.by_key[key].sae.d_sae, generator=gen)[: len(dims)].tolist()
        for key, dims in wanted.items()
    }
    picked_contexts_s, picked_full = contexts_seconds(spliced, label_data, picks)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_graph(graph, Path(tmp) / "g.dot", Path(tmp) / "g.svg")
    render_s = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    best = min(timings.values(), key=lambda t: t[0])[0]
    active = {k: int((a.leaves.values != 0).sum()) for k, a in list(attrs.items())[:3]}
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}), "
        f"slice {args.slice}, {len(spliced.sites)} sites (widths {resid_width} ReLU, {topk_width} TopK), "
        f"12-token prompt; active entries e.g. {active}"
    )
    print(f"load (random weights, calibration) {load_s:.2f}s")
    print(f"nodes: {nodes_s:.2f}s  ({node_counts['forward']} forward, {node_counts['backward']} backward)")
    for batched, (secs, counts) in timings.items():
        print(
            f"edges {'batched (vmap)' if batched else 'per-node    '}: {secs:.2f}s  "
            f"({counts['forward']} forward, {counts['backward']} backward) "
            f"for {n_down} down-nodes incl. error nodes"
        )
    print(
        f"edges, original method (extrapolated from {min(args.baseline_nodes, n_pairs)} of {n_pairs} "
        f"feature down-nodes): {baseline_s:.2f}s"
    )
    print(
        f"edge speed-up over original: {baseline_s / best:.1f}x; edges / nodes phase: {best / nodes_s:.2f}x"
    )
    print(
        f"graph build {build_s:.2f}s; labels/logits (all {len(graph.nodes)} nodes, one matmul per site) "
        f"{logits_s:.2f}s; save + render ({len(graph.edges)} edges) {render_s:.2f}s"
    )
    print(
        f"labels/contexts over {args.label_sequences} x 64 tokens: graph's {sum(map(len, wanted.values()))} "
        f"feature nodes at {len(wanted)} sites {graph_contexts_s:.2f}s; every feature of every site "
        f"({sum(site.sae.d_sae for site in spliced.sites)} features, {len(spliced.sites)} sites) "
        f"{every_contexts_s:.2f}s; the bare model's forward over the same tokens {forward_s:.2f}s; "
        f"for the graph's nodes, {graph_full}"
    )
    print(
        f"labels/contexts for as many randomly picked features per site (sparse, like trained ones): "
        f"{picked_contexts_s:.2f}s; {picked_full}"
    )
    print(f"peak memory: {peak:.2f} GiB ({'CUDA allocated' if device.startswith('cuda') else 'max RSS'})")


if __name__ == "__main__":
    main()
