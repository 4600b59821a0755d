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
MAX_BATCHED_ROWS seeds; benchmarks/bench_fast.py compares it with one
backward per node); the per-node loop remains as the low-memory path.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution, path_alphas
from sparse_coding.algorithms.node_slots import SUMMED, NodeLayout
from sparse_coding.runtime.progress import progress
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.text.batches import TokenBatch

# Down-nodes per vmapped backward: bounds the batch's extra memory.
MAX_BATCHED_ROWS = 64


@dataclass
class EdgeSet:
    """Edges into one site's down-nodes: effects[row, col] from up-node `col` into down-node `row`.

    Nodes are slots (`node_slots`): errors (negative) sort before features.
    """

    down_site: str
    down_slots: Tensor  # (n,) sorted
    up_site: str
    up_slots: Tensor  # (m,) sorted
    effects: Tensor  # (n, m), summed over the batch's examples


def upstream_sites(spliced: SplicedModel, down: Site) -> list[Site]:
    """Sites directly upstream of `down`: the nearest resid site before it and the attn/mlp sites between."""
    before = [site for site in spliced.sites if site.order < down.order]
    resid_positions = [i for i, site in enumerate(before) if site.kind == "resid"]
    start = resid_positions[-1] if resid_positions else 0
    return before[start:]


def edges(
    spliced: SplicedModel,
    batch: TokenBatch,
    attributions: dict[str, SiteAttribution],
    down_nodes: dict[str, Tensor],
    *,
    batched: bool,
    ig_steps: int = 1,
    layout: NodeLayout = SUMMED,
    node_threshold: float | None = None,
) -> list[EdgeSet]:
    """Direct effects into every down-node from its upstream sites' features and errors.

    Args:
        down_nodes: per site key, the sorted slots of its down-nodes.
        node_threshold: None, or Marks et al.'s gate: a down-node's effect is
            read only at the (example, position) entries whose own |IE|
            exceeds it.
    """
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
            slots = down_nodes[down.key]
            masks = seed_masks(attributions[down.key], slots, layout, node_threshold)
            rows = _down_node_grads(
                down,
                site_inputs[down.key],
                attributions[down.key],
                slots,
                masks,
                leaves,
                layout,
                batched=batched,
            )
            results += _edge_sets(down, slots, ups, attributions, rows, layout)
    return results


def seed_masks(attr: SiteAttribution, slots: Tensor, layout: NodeLayout, threshold: float | None) -> Tensor:
    """(len(slots), batch, pos): the tokens whose value of each down-node seeds its backward.

    A slot covers its own position (every position when summed); with a
    threshold, only the entries whose own |IE| exceeds it.
    """
    lv = attr.leaves
    batch, n_pos = attr.error_entry_ie.shape
    masks = attr.error_entry_ie.new_zeros(len(slots), batch, n_pos)
    if not len(slots):
        return masks
    n_errors = int((slots < 0).sum())
    errors_on = attr.error_entry_ie.abs() > (threshold if threshold is not None else -1.0)
    masks[:n_errors] = layout.positions_mask(slots[:n_errors], n_pos)[:, None, :] * errors_on
    entry_slots = layout.feature_slots(lv.features, lv.positions)
    index = torch.searchsorted(slots, entry_slots).clamp(max=len(slots) - 1)
    hit = slots[index] == entry_slots
    if threshold is not None:
        hit &= attr.entry_ie.abs() > threshold
    masks[index[hit], lv.rows[hit], lv.positions[hit]] = 1
    return masks


def _down_node_grads(
    down: Site,
    x: Tensor,
    attr: SiteAttribution,
    slots: Tensor,
    masks: Tensor,
    leaves: list[Tensor],
    layout: NodeLayout,
    *,
    batched: bool,
) -> list[Tensor]:
    """d(sum_tokens mask . grad_d m . d)/d(leaf) for each down-node (slot); each item has a leading
    row per slot, in the slots' order (errors first).

    x is the down site's input (steps, batch, pos, d_model). Feature rows read
    only their own encoder columns, gated where the feature is on at x; error
    rows read those of every feature on at x (`Site.error_at`).
    """
    lv = attr.leaves
    n_errors = int((slots < 0).sum())
    features, column = layout.features_of(slots[n_errors:]).unique(return_inverse=True)
    tokens, on = _active_entries(down, x, lv)
    index = torch.full((down.sae.d_sae,), -1, dtype=torch.long, device=x.device)
    index[features] = torch.arange(len(features), device=x.device)
    hit = index[on] >= 0
    gate = torch.zeros(x[..., 0].numel(), len(features), dtype=down.sae.W_enc.dtype, device=x.device)
    gate[tokens[hit], index[on[hit]]] = 1
    gate = gate.view(*x.shape[:-1], len(features))
    grad_dense = lv.values.new_zeros(*x.shape[1:3], down.sae.d_sae).index_put(
        (lv.rows, lv.positions, lv.features), attr.grad_values
    )
    node_values = down.selected_feats(x, features, gate).to(x.dtype)
    node_values = node_values * down.decoder_scale(x).to(x.dtype)  # value = activation * scale
    n = len(column)
    seeds = torch.zeros(n, *node_values.shape, dtype=x.dtype, device=x.device)
    seed_values = grad_dense[..., features[column]].movedim(-1, 0) * masks[n_errors:].to(x.dtype)
    seeds[torch.arange(n), ..., column] = seed_values[:, None]
    feature_rows = _vjps(node_values, leaves, seeds, batched=batched)
    error = down.error_at(x, tokens, on)
    error_seeds = attr.grad_error[None, None] * masks[:n_errors, None, ..., None].to(x.dtype)
    error_rows = _vjps(error, leaves, error_seeds.expand(-1, *error.shape), batched=batched)
    return [torch.cat([e, f]) for e, f in zip(error_rows, feature_rows, strict=True)]


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
    """Vector-Jacobian products of `output` for each seed (rows), as vmapped backwards of at most
    MAX_BATCHED_ROWS seeds (thresholds can pick many), or a loop."""
    if not len(seeds):
        return [leaf.new_zeros(0, *leaf.shape) for leaf in leaves]
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


def _edge_sets(
    down: Site,
    slots: Tensor,
    ups: list[Site],
    attributions: dict[str, SiteAttribution],
    rows: list[Tensor],
    layout: NodeLayout,
) -> list[EdgeSet]:
    """Turn leaf gradients (mean over path steps) into effects (u' - u) summed per upstream slot."""
    n_up = len(ups)
    sets = []
    for i, up in enumerate(ups):
        lv = attributions[up.key].leaves
        grad_v, grad_e = rows[i].mean(1), rows[n_up + i].mean(1)  # (n, nnz), (n, batch, pos, d_model)
        per_entry = grad_v * (lv.base_values - lv.values)  # (n, nnz)
        per_token = (grad_e * (lv.base_error - lv.error)).sum(-1).flatten(1)  # (n, batch * pos) errors
        positions = torch.arange(lv.const.shape[1], device=slots.device).repeat(lv.const.shape[0])
        entry_slots = torch.cat(
            [layout.feature_slots(lv.features, lv.positions), layout.error_slots(positions)]
        )
        up_slots, column = entry_slots.unique(return_inverse=True)
        values = torch.cat([per_entry, per_token], dim=1)
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        effects = values.new_zeros(len(slots), len(up_slots)).index_add(1, column, values)
        sets.append(EdgeSet(down.key, slots, up.key, up_slots, effects))
    return sets
