"""Edges of the gradient graph: direct effects between SAE nodes (Marks et al. 2024).

For a down-node d at site D and an upstream node u at a site U directly
upstream of D (the nearest resid site before D and the attn/mlp sites between
them), the direct effect through the residual stream with every other site
held fixed, against u's baseline u' (see `attribution`):

    e(u -> d) = sum over positions of both ends of grad_d m . (dd/du) . (u' - u)

summed over the batch's examples (the graph divides by their number). Its
sign follows the nodes': positive = u supports the answer through d.
With IG_STEPS = S > 1 the Jacobian dd/du is integrated along the nodes' path:
every upstream node moves together along u' + alpha (u - u') (midpoints
alpha), d's gates are re-read at each step, and grad_d m is the clean
gradient. So for each down-node, sum over its upstream nodes of e(u -> d)
tends to grad_d m . (d(every upstream node at baseline) - d(clean)) as S grows.

One "cut" forward (S x examples rows) serves every down-node: each site
outputs ``sum v W_dec + const + e`` from fresh leaves and ignores its input,
so a backward from d stops at the sites directly upstream of it. Backwards
for one site's down-nodes run as one batched backward (vmap over at most
MAX_BATCHED_ROWS seeds), which measured faster than one backward per node on
both a 2-core CPU and an H100 (benchmarks/bench_fast.py); the per-node loop
remains as the low-memory path.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution
from sparse_coding.pairs import ExampleBatch
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import Site, SplicedModel

# Down-nodes per vmapped backward: bounds the batch's extra memory.
MAX_BATCHED_ROWS = 64


@dataclass
class EdgeSet:
    """Edges into one site's down-nodes: effects[row, col], rows = down-nodes (features, then the error)."""

    down_site: str
    down_features: Tensor  # (n,) the last row is the site's error node
    up_site: str
    up_features: Tensor  # (m,) columns; the last column is the upstream error node
    effects: Tensor  # (n + 1, m + 1), summed over the batch's examples

    def scaled(self, factor: float) -> "EdgeSet":
        return EdgeSet(
            self.down_site, self.down_features, self.up_site, self.up_features, self.effects * factor
        )


def upstream_sites(spliced: SplicedModel, down: Site) -> list[Site]:
    """Sites directly upstream of `down`: the nearest resid site before it and the attn/mlp sites between."""
    before = [site for site in spliced.sites if site.order < down.order]
    resid_positions = [i for i, site in enumerate(before) if site.kind == "resid"]
    start = resid_positions[-1] if resid_positions else 0
    return before[start:]


def path_alphas(steps: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Points on the path: the clean point alone for 1 step, else the midpoint rule."""
    if steps == 1:
        return torch.ones(1, device=device, dtype=dtype)
    return (torch.arange(steps, device=device, dtype=dtype) + 0.5) / steps


def edges(
    spliced: SplicedModel,
    batch: ExampleBatch,
    attributions: dict[str, SiteAttribution],
    down_nodes: dict[str, Tensor],
    *,
    batched: bool,
    ig_steps: int = 1,
) -> list[EdgeSet]:
    """Direct effects into every down-node from its upstream sites' features and errors."""
    some = next(iter(attributions.values())).leaves
    alphas = path_alphas(ig_steps, batch.input_ids.device, some.values.dtype)
    paths = {key: attr.leaves.path(alphas) for key, attr in attributions.items()}
    value_leaves = {key: v.detach().requires_grad_() for key, (v, _) in paths.items()}
    error_leaves = {key: e.detach().requires_grad_() for key, (_, e) in paths.items()}
    site_inputs: dict[str, Tensor] = {}

    def cut(site: Site, x: Tensor) -> Tensor:
        site_inputs[site.key] = x.unflatten(0, (len(alphas), -1))
        lv = attributions[site.key].leaves
        return lv.output(site, value_leaves[site.key], error_leaves[site.key]).flatten(0, 1)

    ids, mask = batch.input_ids.repeat(len(alphas), 1), batch.attention_mask.repeat(len(alphas), 1)
    results = []
    with torch.enable_grad():
        with spliced.intervene(cut):
            spliced.run_blocks(spliced.embed(ids), 0, spliced.sites[-1].order[0] + 1, mask)
        downs = [s for s in spliced.sites if upstream_sites(spliced, s)]
        for down in progress(downs, desc="Edges", leave=False):
            ups = upstream_sites(spliced, down)
            leaves = [value_leaves[u.key] for u in ups] + [error_leaves[u.key] for u in ups]
            rows = _down_node_grads(
                down,
                site_inputs[down.key],
                attributions[down.key],
                down_nodes[down.key],
                leaves,
                batched=batched,
            )
            results += _edge_sets(down, down_nodes[down.key], ups, attributions, rows)
    return results


def _down_node_grads(
    down: Site, x: Tensor, attr: SiteAttribution, features: Tensor, leaves: list[Tensor], *, batched: bool
) -> list[Tensor]:
    """d(sum grad_d m . d)/d(leaf) for each down-node; each item has a leading row per down-node.

    x is the down site's input (steps, batch, pos, d_model). Feature rows read
    only their own encoder columns, gated where the feature is on at x; the
    error row reads those of every feature on at x (`Site.error_at`).
    """
    lv = attr.leaves
    tokens, on = _active_entries(down, x, lv)
    column = torch.full((down.sae.d_sae,), -1, dtype=torch.long, device=x.device)
    column[features] = torch.arange(len(features), device=x.device)
    hit = column[on] >= 0
    gate = torch.zeros(x[..., 0].numel(), len(features), dtype=down.sae.W_enc.dtype, device=x.device)
    gate[tokens[hit], column[on[hit]]] = 1
    gate = gate.view(*x.shape[:-1], len(features))
    grad_dense = lv.values.new_zeros(*x.shape[1:3], down.sae.d_sae).index_put(
        (lv.rows, lv.positions, lv.features), attr.grad_values
    )
    node_values = down.selected_feats(x, features, gate).to(x.dtype)
    node_values = node_values * _scale(down, x)  # (steps, batch, pos, n): value = activation * scale
    n = len(features)
    seeds = torch.zeros(n, *node_values.shape, dtype=x.dtype, device=x.device)
    seeds[torch.arange(n), ..., torch.arange(n)] = grad_dense[..., features].movedim(-1, 0)[:, None]
    feature_rows = (
        _vjps(node_values, leaves, seeds, batched=batched)
        if n
        else [leaf.new_zeros(0, *leaf.shape) for leaf in leaves]
    )
    error = down.error_at(x, tokens, on)
    error_row = _vjps(error, leaves, attr.grad_error.expand_as(error)[None], batched=False)
    return [torch.cat([f, e]) for f, e in zip(feature_rows, error_row, strict=True)]


def _active_entries(down: Site, x: Tensor, leaves) -> tuple[Tensor, Tensor]:
    """(flat token, feature) of the features on at x (steps, batch, pos, d_model), token-sorted.

    At the clean point alone (one step) x is the clean run's input, whose
    active entries the leaves hold; along an IG path the gates are re-read.
    """
    if x.shape[0] == 1:
        on = leaves.values != 0
        return leaves.tokens[on], leaves.features[on]
    with torch.no_grad():
        feats = down.code(x).feats
    return feats.reshape(-1, feats.shape[-1]).nonzero(as_tuple=True)


def _vjps(output: Tensor, leaves: list[Tensor], seeds: Tensor, *, batched: bool) -> list[Tensor]:
    """Vector-Jacobian products of `output` for each seed (rows), as vmapped backwards or a loop.

    Batching multiplies the backward's memory by its rows, so at most
    MAX_BATCHED_ROWS seeds go through one backward (thresholds can pick many).
    """
    if batched:
        chunks = [
            torch.autograd.grad(
                output, leaves, chunk, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            for chunk in seeds.split(MAX_BATCHED_ROWS)
        ]
        return [
            torch.cat(
                [
                    c[i] if c[i] is not None else leaf.new_zeros(len(c_seeds), *leaf.shape)
                    for c, c_seeds in zip(chunks, seeds.split(MAX_BATCHED_ROWS), strict=True)
                ]
            )
            for i, leaf in enumerate(leaves)
        ]
    rows = [torch.autograd.grad(output, leaves, seed, retain_graph=True, allow_unused=True) for seed in seeds]
    return [
        torch.stack([row[i] if row[i] is not None else torch.zeros_like(leaf) for row in rows])
        for i, leaf in enumerate(leaves)
    ]


def _scale(site: Site, x: Tensor) -> Tensor:
    """The node-value scale of a site's input, differentiable: layer-norm std, else 1."""
    _, _, std = site.sae.normalize(site.to_sae_space(x))
    return std.to(x.dtype)


def _edge_sets(
    down: Site,
    features: Tensor,
    ups: list[Site],
    attributions: dict[str, SiteAttribution],
    rows: list[Tensor],
) -> list[EdgeSet]:
    """Turn leaf gradients (mean over path steps) into effects (u' - u) summed per upstream feature."""
    n_up = len(ups)
    sets = []
    for i, up in enumerate(ups):
        lv = attributions[up.key].leaves
        grad_v, grad_e = rows[i].mean(1), rows[n_up + i].mean(1)  # (n+1, nnz), (n+1, batch, pos, d_model)
        per_entry = grad_v * (lv.base_values - lv.values)  # (n+1, nnz)
        up_features = lv.features.unique()
        column = torch.searchsorted(up_features, lv.features)
        feature_effects = per_entry.new_zeros(len(features) + 1, len(up_features)).index_add(
            1, column, per_entry
        )
        error_effects = (grad_e * (lv.base_error - lv.error)).sum((1, 2, 3))[:, None]
        effects = torch.cat([feature_effects, error_effects], dim=1)
        effects = effects.to(torch.promote_types(effects.dtype, torch.float32))
        sets.append(EdgeSet(down.key, features, up.key, up_features, effects))
    return sets
