"""Time pipe.py's batched ablation graph against a one-feature-per-forward loop.

Not a test: run ``python3 benchmarks/bench_pipe.py [--device cuda]
[--loop-subset N]`` and quote the printed figures. The model is GPT-2 small
shaped with random weights (``GPT2Config()`` defaults, no download); each of
layers 9, 10, 11 gets a 24576-latent ReLU SAE on hook_resid_pre with random
weights and a negative encoder bias calibrated on the prompt so that about 75
features are active per token, as in real SAEs. The prompt is 12 random
tokens (BOS first). Every edge (THRESHOLD_EXP unset: every non-zero effect)
and every logit cell of the batched run is checked against the loop.

The loop runs, per candidate, one whole-model forward with a plain hook that
subtracts f_i * W_dec[i] at every position, the next layer's SAE encode and a
log-softmax, and turns them into the same graph entries (edges, a node with
its logit cells), exactly what a straightforward implementation does; both
timings include building the graph. When it would be too slow it runs on the
first --loop-subset candidates of each layer and its time is extrapolated to
all of them (printed as such).

With --threshold-exp, first-layer features that keep no edge are not drawn,
so the batched run skips their logit pass; the loop still runs everything.

With --draw DIR the loop is skipped: the batched graph (every non-zero edge
by default, ~600 nodes / ~40,000 edges) is saved as pipe.py saves it (.dot,
.json, image within the layout budget, .html viewer) and the compute, layout
and total times are printed.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

import torch
from random_weights import IdNames, random_gpt2
from torch import Tensor

from sparse_coding.algorithms.ablation_graph import ablation_graph
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import save_graph
from sparse_coding.graphs.viewer import write_viewer
from sparse_coding.models.saes import SAE, SAEConfig
from sparse_coding.nodes import feature_id
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import TokenBatch

LAYERS = [9, 10, 11]
D_SAE = 24576
ACTIVE_PER_TOKEN = 75
N_TOKENS = 12
LOGIT_TOKENS = 10  # ablation_graph's default


def _random_sae(layer: int, d_model: int, gen: torch.Generator) -> SAE:
    cfg = SAEConfig(
        d_in=d_model,
        d_sae=D_SAE,
        hook_name=f"blocks.{layer}.hook_resid_pre",
        activation="relu",
        k=None,
        normalize_activations="none",
        apply_b_dec_to_input=True,
        prepend_bos=True,
        center_writing_weights=True,
        neuronpedia_id=None,
        source=f"random-{layer}",
    )
    w_enc = torch.randn(d_model, D_SAE, generator=gen) / d_model**0.5
    w_dec = w_enc.T / w_enc.T.norm(dim=1, keepdim=True)
    weights = {
        "W_enc": w_enc,
        "b_enc": torch.zeros(D_SAE),
        "W_dec": w_dec.contiguous(),
        "b_dec": torch.zeros(d_model),
    }
    return SAE(cfg, weights)


def _calibrate(spliced: SplicedModel, ids: Tensor) -> float:
    """Set each SAE's (negative) encoder bias so ~ACTIVE_PER_TOKEN features fire per token."""
    hidden, at = spliced.embed(ids), 0
    active = []
    with torch.inference_mode():
        for site in spliced.sites:
            hidden, at = spliced.run_blocks(hidden, at, site.layer), site.layer
            pre = site.sae.pre_activations(site.to_sae_space(hidden))
            cut = pre.flatten().float().quantile(1 - ACTIVE_PER_TOKEN / D_SAE)
            site.sae.b_enc.fill_(-float(cut))
            active.append(float((site.sae.encode(site.to_sae_space(hidden)) > 0).sum(-1).float().mean()))
    return sum(active) / len(active)


def _loop_reference(model, spliced: SplicedModel, ids: Tensor, layer: int, feature: int):
    """One whole-model forward with a plain hook; next-layer features and log-probs at the end."""
    site, next_site = spliced.by_key[f"resid_{layer}"], spliced.by_key.get(f"resid_{layer + 1}")
    seen = {}

    def ablate(module, args):
        x = args[0]
        acts = site.sae.encode(site.to_sae_space(x))[..., feature : feature + 1]
        return (x - acts * site.sae.W_dec[feature], *args[1:])

    handles = [model.transformer.h[layer].register_forward_pre_hook(ablate)]
    if next_site is not None:
        handles.append(
            model.transformer.h[layer + 1].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
        )
    with torch.inference_mode():
        logits = model(ids)[0, -1]
        feats = None if next_site is None else next_site.sae.encode(next_site.to_sae_space(seen["x"]))[0, -1]
    for handle in handles:
        handle.remove()
    return feats, logits.float().log_softmax(-1)


def _clean(model, spliced: SplicedModel, ids: Tensor) -> tuple[dict[int, Tensor], Tensor]:
    """Clean last-position features of layers 10, 11 and next-token log-probs."""
    streams: dict[int, Tensor] = {}

    def keep(layer: int):
        def hook(module, args) -> None:
            streams[layer] = args[0]

        return hook

    handles = [model.transformer.h[layer].register_forward_pre_hook(keep(layer)) for layer in LAYERS[1:]]
    with torch.inference_mode():
        logp = model(ids)[0, -1].float().log_softmax(-1)
        feats = {
            layer: spliced.by_key[f"resid_{layer}"].sae.encode(
                spliced.by_key[f"resid_{layer}"].to_sae_space(x)
            )[0, -1]
            for layer, x in streams.items()
        }
    for handle in handles:
        handle.remove()
    return feats, logp


def _compare(batched: Graph, loop: Graph) -> tuple[float, float]:
    """Largest edge and logit-cell differences over the loop's candidates (drawn ones for cells)."""
    max_diff, max_logit_diff = 0.0, 0.0
    for source, node in loop.nodes.items():
        expected = {t: e.effect for (s, t), e in loop.edges.items() if s == source}
        got = {t: e.effect for (s, t), e in batched.edges.items() if s == source}
        max_diff = max(
            [max_diff, *(abs(expected.get(k, 0.0) - got.get(k, 0.0)) for k in set(expected) | set(got))]
        )
        drawn = batched.nodes.get(source)
        if drawn is not None:
            for ours, theirs in ((drawn.logits_up, node.logits_up), (drawn.logits_down, node.logits_down)):
                diffs = [abs(a - b) for (_, a), (_, b) in zip(ours, theirs, strict=False)]
                max_logit_diff = max([max_logit_diff, *diffs])
    return max_diff, max_logit_diff


def _draw(graph: Graph, out: Path, compute_s: float) -> None:
    """Save the graph's files as pipe.py does and print compute, layout and total time."""
    graph.metadata.update({"script": "pipe.py", "prompt": "random tokens", "config": {"THRESHOLD_EXP": None}})
    start = time.perf_counter()
    save_graph(graph, out / "cognition_graph.dot", out / "cognition_graph.png")
    layout_s = time.perf_counter() - start
    write_viewer(graph, out / "cognition_graph.html")
    viewer_s = time.perf_counter() - start - layout_s
    total_s = compute_s + layout_s + viewer_s
    print(
        f"drawn: {len(graph.nodes)} nodes, {len(graph.edges)} edges; compute {compute_s:.1f} s, "
        f"save + layout {layout_s:.1f} s, viewer {viewer_s:.1f} s, total {total_s:.1f} s; files in {out}"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    keep_freed_memory()  # as the scripts do (sparse_coding.runtime.allocator)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loop-subset", type=int, default=25, help="loop candidates per layer (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threshold-exp",
        type=float,
        default=None,
        help="THRESHOLD_EXP (default unset: every non-zero effect is an edge, all work done)",
    )
    parser.add_argument(
        "--draw", type=Path, default=None, help="save the graph and image here; skip the loop"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = random_gpt2("cpu")
    saes = [_random_sae(layer, model.config.n_embd, gen) for layer in LAYERS]
    model.to(device)
    spliced = SplicedModel(model, [sae.to(device) for sae in saes])
    ids = torch.randint(0, model.config.vocab_size, (1, N_TOKENS), generator=gen)
    ids[0, 0] = model.config.bos_token_id
    ids = ids.to(device)
    active = _calibrate(spliced, ids)
    batch = TokenBatch(ids, torch.ones_like(ids), 0)
    print(
        f"device {device}; GPT-2-small-shaped random model; {D_SAE}-latent random ReLU resid SAEs "
        f"at layers {LAYERS} with negative encoder bias: {active:.0f} features active per token; "
        f"{N_TOKENS}-token prompt"
    )

    ablation_graph(spliced, batch, tokenizer=IdNames(), layers=LAYERS[-1:], threshold_exp=None)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    result = ablation_graph(
        spliced, batch, tokenizer=IdNames(), layers=LAYERS, threshold_exp=args.threshold_exp
    )
    _sync(device)
    batched_s = time.perf_counter() - start
    n_cand = {layer: len(c) for layer, c in result.candidates.items()}
    total = sum(n_cand.values())
    if device.type == "cuda":
        peak = f"peak GPU memory allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        peak = f"peak process RSS {rss:.0f} MiB (model + SAEs included)"
    print(
        f"batched: {batched_s:.2f} s for {total} ablations {n_cand}, {len(result.graph.edges)} edges; {peak}"
    )

    if args.draw is not None:
        _draw(result.graph, args.draw, batched_s)
        return

    clean_feats, clean_logp = _clean(model, spliced, ids)
    cut = 0.0 if args.threshold_exp is None else 2.0**args.threshold_exp
    loop_graph, names = Graph(), IdNames()
    loop_s, done = 0.0, 0
    for layer, candidates in result.candidates.items():
        subset = candidates if args.loop_subset == 0 else candidates[: args.loop_subset]
        for feature in subset:
            _sync(device)
            start = time.perf_counter()
            # What a loop does per candidate to give the same graph: a forward, then its
            # edges and logit cells.
            feats, logp = _loop_reference(model, spliced, ids, layer, feature)
            source = feature_id("resid", layer, feature)
            if feats is not None:
                effect = (clean_feats[layer + 1] - feats).float()  # clean - ablated
                targets = (effect.abs() > cut).nonzero()[:, 0]
                for target, value in zip(targets.tolist(), effect[targets].tolist(), strict=True):
                    loop_graph.add_edge(source, feature_id("resid", layer + 1, target), value)
            change = clean_logp - logp
            up, down = change.topk(LOGIT_TOKENS), change.topk(LOGIT_TOKENS, largest=False)
            cells = [
                [(names.decode([i]), v) for i, v in zip(t.indices.tolist(), t.values.tolist(), strict=True)]
                for t in (up, down)
            ]
            loop_graph.add_node(Node.from_id(source, logits_up=cells[0], logits_down=cells[1]))
            _sync(device)
            loop_s += time.perf_counter() - start
            done += 1
    max_diff, max_logit_diff = _compare(result.graph, loop_graph)
    loop_total = loop_s / done * total
    how = "measured on all" if done == total else f"measured on {done}, extrapolated to all {total}"
    print(
        f"loop (one feature per forward): {loop_total:.2f} s "
        f"({how} candidates; {loop_s / done * 1e3:.1f} ms each)"
    )
    print(
        f"speed-up: {loop_total / batched_s:.1f}x on identical edges "
        f"(max |edge diff| {max_diff:.2e}, max |logit cell diff| {max_logit_diff:.2e} over {done} candidates)"
    )


if __name__ == "__main__":
    main()
