"""Gradient attribution of SAE features and errors (Marks et al. 2024, "Sparse Feature Circuits").

Metric: m = cross-entropy of the prompt's last token given the tokens before it.

Nodes. Every spliced site's output is rewritten as

    x  =  sum_i v_i W_dec[i]  +  const  +  e

with v_i = f_i * scale (the feature's activation times the scale its layer-norm
SAE divided its input by; scale = 1 otherwise) and e the SAE error. Features v
and errors e are separate autograd leaves; the site passes its input's
gradient through unchanged (the identity), so one forward and one backward
give grad_v m and grad_e m for every site. Node attribution (zero baseline):

    IE(a) = sum over positions of grad_a m . (0 - a)

IG_STEPS > 1 replaces grad_a m by its mean along a -> 0 (integrated gradients,
per site, the steps run as one batch).

Edges. For a down-node d at site D and an upstream node u at a site U directly
upstream of D (the nearest resid site before D and the attn/mlp sites between
them), the direct effect through the residual stream with every other site
held fixed:

    e(u -> d) = sum over positions of both ends of grad_d m . (dd/du) . (0 - u)

One "cut" forward serves every down-node: each site outputs
``sum v W_dec + const + e`` from fresh leaves and ignores its input, so a
backward from d stops at the sites directly upstream of it. Backwards for one
site's down-nodes run as one batched backward (vmap over at most
MAX_BATCHED_ROWS seeds), which measured faster than one backward per node on
both a 2-core CPU and an H100 (benchmarks/bench_fast.py); the per-node loop
remains as the low-memory path.

Phases: 1. clean run, codes per site; 2. node attributions; 3. down-nodes;
4. edges; 5. graph: top up-nodes per down-node, pruning to what reaches the
slice's last layer, fraction explained.
"""

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.errors import SparseCodingError
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import Intervention, Site, SiteCode, SplicedModel, record_codes

logger = logging.getLogger(__name__)

# Down-nodes per vmapped backward: bounds the batch's extra memory.
MAX_BATCHED_ROWS = 64


@dataclass
class SiteLeaves:
    """The active features and error of one site, as a sparse list (batch of one)."""

    positions: Tensor  # (nnz,) position of each active feature
    features: Tensor  # (nnz,) feature index
    values: Tensor  # (nnz,) node value v = f * scale
    error: Tensor  # (pos, d_model)
    const: Tensor  # (pos, d_model) x - sum v W_dec - e

    @classmethod
    def from_code(cls, site: Site, x: Tensor, code: SiteCode) -> "SiteLeaves":
        positions, features = code.feats[0].nonzero(as_tuple=True)
        values = code.values[0, positions, features].to(x.dtype)
        leaves = cls(positions, features, values, code.error[0], x[0])
        leaves.const = x[0] - leaves.decode(site, values) - code.error[0]
        return leaves

    def decode(self, site: Site, values: Tensor) -> Tensor:
        """sum_i v_i W_dec[i] per position: (..., pos, d_model) for values (..., nnz)."""
        rows = site.decode_rows(values, self.features)  # (..., nnz, d_model)
        out = rows.new_zeros(*values.shape[:-1], self.const.shape[0], rows.shape[-1])
        return out.index_add(-2, self.positions, rows)


@dataclass
class SiteAttribution:
    """Node attributions and metric gradients of one site."""

    leaves: SiteLeaves
    grad_values: Tensor  # (nnz,) grad_v m at each active (position, feature)
    grad_error: Tensor  # (pos, d_model) grad_e m
    feature_ie: Tensor  # (d_sae,) IE summed over positions
    error_ie: float
    max_activation: Tensor  # (d_sae,) largest activation over positions
    last_activation: Tensor  # (d_sae,) activation at the last position


def metric(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of `target` (batch,) from the last position's logits (batch, pos, vocab)."""
    return torch.nn.functional.cross_entropy(logits[:, -1].float(), target, reduction="none")


def split_prompt(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(inputs, target): the prompt without its last token, and that token."""
    if tokens.shape[1] < 2:
        raise SparseCodingError(
            "PROMPT has a single token (BOS included); fast.py predicts the prompt's last token "
            "from the tokens before it, so give it at least one more token"
        )
    return tokens[:, :-1], tokens[:, -1]


def clean_run(spliced: SplicedModel, inputs: Tensor) -> tuple[dict[str, SiteCode], dict[str, Tensor]]:
    """Phase 1: codes and inputs of every site in one plain forward."""
    codes: dict[str, SiteCode] = {}
    site_inputs: dict[str, Tensor] = {}
    record = record_codes(codes)

    def keep(site: Site, x: Tensor) -> Tensor:
        site_inputs[site.key] = x
        return record(site, x)

    with torch.no_grad(), spliced.intervene(keep):
        spliced(inputs)
    return codes, site_inputs


def node_attributions(
    spliced: SplicedModel, inputs: Tensor, target: Tensor, *, ig_steps: int = 1
) -> dict[str, SiteAttribution]:
    """Phases 1-2: IE of every feature and error of every site."""
    codes, site_inputs = clean_run(spliced, inputs)
    leaves = {key: SiteLeaves.from_code(spliced.by_key[key], site_inputs[key], codes[key]) for key in codes}
    value_leaves = {key: lv.values.clone().requires_grad_() for key, lv in leaves.items()}
    error_leaves = {key: lv.error.clone().requires_grad_() for key, lv in leaves.items()}

    def as_leaves(site: Site, x: Tensor) -> Tensor:
        lv, v, e = leaves[site.key], value_leaves[site.key], error_leaves[site.key]
        return x + (lv.decode(site, v) - lv.decode(site, v.detach())) + (e - e.detach())

    with torch.enable_grad(), spliced.intervene(as_leaves):
        m = metric(spliced(inputs), target).sum()
        keys = list(leaves)
        grads = torch.autograd.grad(m, [value_leaves[k] for k in keys] + [error_leaves[k] for k in keys])
    _check_finite(grads)
    grad_v, grad_e = (
        dict(zip(keys, grads[: len(keys)], strict=True)),
        dict(zip(keys, grads[len(keys) :], strict=True)),
    )
    if ig_steps > 1:
        ig_v, ig_e = _integrated_gradients(spliced, inputs, target, leaves, ig_steps)
    else:
        ig_v, ig_e = grad_v, grad_e
    return {
        key: _site_attribution(
            spliced.by_key[key], leaves[key], codes[key], grad_v[key], grad_e[key], ig_v[key], ig_e[key]
        )
        for key in keys
    }


def _site_attribution(
    site: Site,
    leaves: SiteLeaves,
    code: SiteCode,
    grad_v: Tensor,
    grad_e: Tensor,
    ie_grad_v: Tensor,
    ie_grad_e: Tensor,
) -> SiteAttribution:
    d_sae = site.sae.d_sae
    per_entry = (ie_grad_v * -leaves.values).float()
    feature_ie = torch.zeros(d_sae, device=per_entry.device).index_add(0, leaves.features, per_entry)
    error_ie = float((ie_grad_e * -leaves.error).sum())
    feats = code.feats[0].float()
    return SiteAttribution(leaves, grad_v, grad_e, feature_ie, error_ie, feats.max(0).values, feats[-1])


def _integrated_gradients(
    spliced: SplicedModel, inputs: Tensor, target: Tensor, leaves: dict[str, SiteLeaves], steps: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean gradients along a -> 0, one site at a time, the steps as a batch (midpoint rule)."""
    alphas = (torch.arange(steps, device=inputs.device) + 0.5) / steps
    batch = inputs.expand(steps, -1)
    mean_v, mean_e = {}, {}
    for key in progress(leaves, desc="Integrated gradients", leave=False):
        lv = leaves[key]
        v = (alphas[:, None] * lv.values).requires_grad_()  # (steps, nnz)
        e = (alphas[:, None, None] * lv.error).requires_grad_()  # (steps, pos, d_model)
        with torch.enable_grad(), spliced.intervene(_replace_site(key, lv, v, e)):
            m = metric(spliced(batch), target.expand(steps)).sum()
            gv, ge = torch.autograd.grad(m, [v, e])
        _check_finite((gv, ge))
        mean_v[key], mean_e[key] = gv.mean(0), ge.mean(0)
    return mean_v, mean_e


def _replace_site(key: str, leaves: SiteLeaves, values: Tensor, error: Tensor) -> Intervention:
    """Intervention that rebuilds one site from given node values and error, leaving the others."""

    def replace(site: Site, x: Tensor) -> Tensor:
        return leaves.decode(site, values) + leaves.const + error if site.key == key else x

    return replace


def _check_finite(grads) -> None:
    if not all(torch.isfinite(g).all() for g in grads):
        raise SparseCodingError(
            "Non-finite gradients in attribution; the model or an SAE overflows at this dtype. "
            "Use DTYPE/SAE_DTYPE float32, or a shorter PROMPT"
        )


def upstream_sites(spliced: SplicedModel, down: Site) -> list[Site]:
    """Sites directly upstream of `down`: the nearest resid site before it and the attn/mlp sites between."""
    before = [site for site in spliced.sites if site.order < down.order]
    resid_positions = [i for i, site in enumerate(before) if site.kind == "resid"]
    start = resid_positions[-1] if resid_positions else 0
    return before[start:]


def choose_down_nodes(
    attributions: dict[str, SiteAttribution],
    *,
    num_down_nodes: int,
    thresholds: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Phase 3: per site, the features with the largest |IE|, or those over a cached threshold."""
    chosen = {}
    for key, attr in attributions.items():
        if thresholds is not None and key in thresholds:
            over = attr.last_activation > thresholds[key].to(attr.last_activation)
            chosen[key] = over.nonzero().flatten()
        else:
            scores = attr.feature_ie.abs()
            top = scores.topk(min(num_down_nodes, int((scores > 0).sum()))).indices
            chosen[key] = top.sort().values
    return chosen


@dataclass
class EdgeSet:
    """Edges into one site's down-nodes: effects[row, col], rows = down-nodes (features, then the error)."""

    down_site: str
    down_features: Tensor  # (n,) the last row is the site's error node
    up_site: str
    up_features: Tensor  # (m,) columns; the last column is the upstream error node
    effects: Tensor  # (n + 1, m + 1)


def edges(
    spliced: SplicedModel,
    inputs: Tensor,
    attributions: dict[str, SiteAttribution],
    down_nodes: dict[str, Tensor],
    *,
    batched: bool,
) -> list[EdgeSet]:
    """Phase 4: direct effects into every down-node from its upstream sites' features and errors."""
    value_leaves = {k: a.leaves.values.clone().requires_grad_() for k, a in attributions.items()}
    error_leaves = {k: a.leaves.error.clone().requires_grad_() for k, a in attributions.items()}
    site_inputs: dict[str, Tensor] = {}

    def cut(site: Site, x: Tensor) -> Tensor:
        site_inputs[site.key] = x
        lv = attributions[site.key].leaves
        return (lv.decode(site, value_leaves[site.key]) + lv.const + error_leaves[site.key])[None]

    results = []
    with torch.enable_grad():
        with spliced.intervene(cut):
            spliced.run_blocks(spliced.embed(inputs), 0, spliced.sites[-1].order[0] + 1)
        for down in progress(
            [s for s in spliced.sites if upstream_sites(spliced, s)], desc="Edges", leave=False
        ):
            ups = upstream_sites(spliced, down)
            leaves = [value_leaves[u.key] for u in ups] + [error_leaves[u.key] for u in ups]
            rows = _down_node_grads(
                down,
                site_inputs[down.key][0],
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
    """d(sum_p grad_d m . d)/d(leaf) for each down-node; each item has a leading row per down-node.

    Feature rows read only their own encoder columns; the error row is the one
    backward through the full-width encoder.
    """
    gate = attr.leaves.values.new_zeros(x.shape[0], down.sae.d_sae).index_put(
        (attr.leaves.positions, attr.leaves.features), torch.ones_like(attr.leaves.values)
    )
    grad_dense = torch.zeros_like(gate).index_put(
        (attr.leaves.positions, attr.leaves.features), attr.grad_values
    )
    node_values = down.selected_feats(x, features, gate[:, features].to(down.sae.W_enc.dtype)).to(x.dtype)
    node_values = node_values * _scale(down, x)  # (pos, n): value = activation * scale
    n = len(features)
    seeds = torch.zeros(n, *node_values.shape, dtype=x.dtype, device=x.device)
    seeds[torch.arange(n), :, torch.arange(n)] = grad_dense[:, features].T
    feature_rows = (
        _vjps(node_values, leaves, seeds, batched=batched)
        if n
        else [leaf.new_zeros(0, *leaf.shape) for leaf in leaves]
    )
    error_row = _vjps(down.code(x).error, leaves, attr.grad_error[None], batched=False)
    return [torch.cat([f, e]) for f, e in zip(feature_rows, error_row, strict=True)]


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
    """Turn leaf gradients into effects (0 - u) summed per upstream feature and position."""
    n_up = len(ups)
    sets = []
    for i, up in enumerate(ups):
        lv = attributions[up.key].leaves
        grad_v, grad_e = rows[i], rows[n_up + i]  # (n+1, nnz), (n+1, pos, d_model)
        per_entry = grad_v * -lv.values  # (n+1, nnz)
        up_features = lv.features.unique()
        column = torch.searchsorted(up_features, lv.features)
        feature_effects = per_entry.new_zeros(len(features) + 1, len(up_features)).index_add(
            1, column, per_entry
        )
        error_effects = (grad_e * -lv.error).sum((1, 2))[:, None]
        effects = torch.cat([feature_effects, error_effects], dim=1).float()
        sets.append(EdgeSet(down.key, features, up.key, up_features, effects))
    return sets


def timed(label: str):
    """Context manager logging a phase's wall time."""
    return _Timer(label)


class _Timer:
    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> "_Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        logger.info("%s: %.2fs", self.label, self.seconds)
