"""Node attribution of SAE features and errors (Marks et al. 2024, "Sparse Feature Circuits").

Metric: a loss m per example (`metrics`: cross-entropy, log-prob or logit
difference of the answer at the clean input's last real position).

Nodes. Every spliced site's output is rewritten as

    x  =  sum_i v_i W_dec[i]  +  const  +  e

with v_i = f_i * scale (the feature's activation times the scale its layer-norm
SAE divided its input by; scale = 1 otherwise) and e the SAE error. Features v
and errors e are separate autograd leaves; the site passes its input's
gradient through unchanged (the identity), so one forward and one backward
over a batch of examples give grad_v m and grad_e m for every site and
example. Node attribution of a against its baseline a' (per example):

    IE(a) = sum over positions of grad_a m . (a' - a)   ~  m(a -> a') - m(clean)

so positive = the node supports the answer. Baselines (`Baseline`):
zero (a' = 0); patch (a' = the patch input's own features; the error's
baseline is whatever makes the site output the patch run's activation, so
that moving every node of a site to its baseline is the patch run there);
mean (each feature's mean over a dataset, times the position's scale; errors
to 0). IG_STEPS > 1 replaces grad_a m by its mean along the straight path
a -> a' (integrated gradients, per site, the steps run as one batch).

Phases: 1. clean (and patch) run, codes per site; 2. leaves: the entries
active in the clean run or the baseline; 3. node attributions. Edges are in
`attribution_edges`, exact effects in `attribution_exact`.
"""

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.algorithms.metrics import Metric
from sparse_coding.config.schema import Baseline
from sparse_coding.errors import ConfigError, SparseCodingError
from sparse_coding.models.saes import grouped_rows_sum
from sparse_coding.runtime.progress import progress
from sparse_coding.splicing.splice import Intervention, Site, SiteCode, SplicedModel, record_codes
from sparse_coding.text.batches import TokenBatch

logger = logging.getLogger(__name__)


@dataclass
class SiteLeaves:
    """The entries (token, feature) of one site that are active clean or at baseline, and its errors."""

    tokens: Tensor  # (nnz,) flat token index: row * n_pos + position
    features: Tensor  # (nnz,) feature index
    values: Tensor  # (nnz,) clean node value v = f * scale
    base_values: Tensor  # (nnz,) baseline node value
    error: Tensor  # (batch, pos, d_model)
    base_error: Tensor  # (batch, pos, d_model)
    const: Tensor  # (batch, pos, d_model) x - sum v W_dec - e

    @property
    def rows(self) -> Tensor:
        """(nnz,) example of each entry."""
        return self.tokens // self.const.shape[1]

    @property
    def positions(self) -> Tensor:
        """(nnz,) position of each entry."""
        return self.tokens % self.const.shape[1]

    def decode(self, site: Site, values: Tensor) -> Tensor:
        """sum_i v_i W_dec[i] per token: (..., batch, pos, d_model) for values (..., nnz)."""
        batch, n_pos, _ = self.const.shape
        lead = values.shape[:-1]  # e.g. (steps,) on an IG path
        n_lead = math.prod(lead)
        n_tokens = batch * n_pos
        tokens = (torch.arange(n_lead, device=values.device)[:, None] * n_tokens + self.tokens).flatten()
        features = self.features.repeat(n_lead)
        summed = grouped_rows_sum(site.sae.W_dec, features, values.flatten(), tokens, n_lead * n_tokens)
        return summed.to(values.dtype).reshape(*lead, batch, n_pos, -1)

    def output(self, site: Site, values: Tensor, error: Tensor) -> Tensor:
        """The site's output rebuilt from node values (..., nnz) and error (..., batch, pos, d_model)."""
        return self.decode(site, values) + self.const + error

    def path(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """Values (steps, nnz) and errors (steps, batch, pos, d_model) at a' + alpha (a - a')."""
        values = self.base_values + alphas[:, None] * (self.values - self.base_values)
        error = self.base_error + alphas[:, None, None, None] * (self.error - self.base_error)
        return values, error


@dataclass
class SiteAttribution:
    """Node attributions per example and metric gradients of one site."""

    leaves: SiteLeaves
    grad_values: Tensor  # (nnz,) grad_v m at each entry, clean point
    grad_error: Tensor  # (batch, pos, d_model) grad_e m, clean point
    feature_ie: Tensor  # (batch, d_sae) IE per example, summed over positions
    error_ie: Tensor  # (batch,)
    max_activation: Tensor  # (d_sae,) largest activation over real tokens
    last_activation: Tensor  # (batch, d_sae) activation at each example's last real position
    entry_ie: Tensor  # (nnz,) IE of each leaf entry (example, position, feature) of `leaves`
    error_entry_ie: Tensor  # (batch, pos) IE of the error at each token
    position_activation: Tensor  # (pos, d_sae) largest activation at each position over the examples


def losses(spliced: SplicedModel, batch: TokenBatch, metric: Metric, repeat: int = 1) -> Tensor:
    """The metric's loss per row (repeat * batch,) for the batch repeated `repeat` times (step-major)."""
    logits = spliced(batch.input_ids.repeat(repeat, 1), batch.attention_mask.repeat(repeat, 1))
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, batch.last.repeat(repeat)]
    patch_answers = None if batch.patch_answers is None else batch.patch_answers.repeat(repeat)
    return metric.loss(last, batch.answers.repeat(repeat), patch_answers)


def site_runs(
    spliced: SplicedModel, input_ids: Tensor, attention_mask: Tensor
) -> tuple[dict[str, SiteCode], dict[str, Tensor]]:
    """Phase 1: codes and inputs of every site in one plain forward."""
    codes: dict[str, SiteCode] = {}
    site_inputs: dict[str, Tensor] = {}
    record = record_codes(codes)

    def keep(site: Site, x: Tensor) -> Tensor:
        site_inputs[site.key] = x
        return record(site, x)

    with torch.no_grad(), spliced.intervene(keep):
        spliced(input_ids, attention_mask)
    return codes, site_inputs


def all_leaves(
    spliced: SplicedModel,
    batch: TokenBatch,
    *,
    baseline: Baseline,
    means: dict[str, Tensor] | None = None,
) -> tuple[dict[str, SiteLeaves], dict[str, SiteCode]]:
    """Phases 1-2: every site's leaves against the baseline, and the clean codes."""
    codes, inputs = site_runs(spliced, batch.input_ids, batch.attention_mask)
    patch_codes, patch_inputs = {}, {}
    if baseline == "patch":
        if batch.patch_ids is None:
            raise ConfigError("BASELINE patch needs patch inputs; set PATCH_PROMPT or PAIRS_FILE")
        patch_codes, patch_inputs = site_runs(spliced, batch.patch_ids, batch.attention_mask)
    if baseline == "mean" and (means is None or not set(codes) <= set(means)):
        raise ConfigError("BASELINE mean needs feature means of every spliced site")
    real = batch.attention_mask[..., None].bool()
    leaves = {}
    for key, code in codes.items():
        site = spliced.by_key[key]
        if baseline == "patch":
            base_values = patch_codes[key].values
        elif baseline == "mean":
            base_values = means[key].to(code.feats.dtype) * code.scale.to(code.feats.dtype)
        else:
            base_values = torch.zeros_like(code.feats)
        leaves[key] = site_leaves(site, inputs[key], code, real, base_values * real, patch_inputs.get(key))
    return leaves, codes


def site_leaves(
    site: Site, x: Tensor, code: SiteCode, real: Tensor, base_values: Tensor, base_x: Tensor | None
) -> SiteLeaves:
    """One site's leaves: entries active clean or at baseline, over real tokens only.

    Args:
        real: (batch, pos, 1) bool, the real tokens.
        base_values: (batch, pos, d_sae) baseline node values, zero at padding.
        base_x: the baseline run's site activation (patch), or None (errors go to 0).
    """
    values = code.values * real
    rows, positions, features = ((values != 0) | (base_values != 0)).nonzero(as_tuple=True)
    tokens = rows * x.shape[1] + positions
    picked = (rows, positions, features)
    leaves = SiteLeaves(
        tokens,
        features,
        values[picked].to(x.dtype),
        base_values[picked].to(x.dtype),
        code.error,
        code.error,
        x,
    )
    leaves.const = x - leaves.decode(site, leaves.values) - code.error
    if base_x is None:
        leaves.base_error = torch.zeros_like(code.error)
    else:
        # = base_x - decode(base) - const, written as a change so that base_x = x gives exactly e
        change = (base_x - x) - (leaves.decode(site, leaves.base_values) - leaves.decode(site, leaves.values))
        leaves.base_error = code.error + change
    return leaves


def node_attributions(
    spliced: SplicedModel,
    batch: TokenBatch,
    *,
    metric: Metric,
    baseline: str = "zero",
    means: dict[str, Tensor] | None = None,
    ig_steps: int = 1,
) -> dict[str, SiteAttribution]:
    """Phases 1-3: IE of every feature and error of every site, per example of `batch`."""
    leaves, codes = all_leaves(spliced, batch, baseline=baseline, means=means)
    grad_v, grad_e = _clean_gradients(spliced, batch, metric, leaves)
    if ig_steps > 1:
        ig_v, ig_e = _integrated_gradients(spliced, batch, metric, leaves, ig_steps)
    else:
        ig_v, ig_e = grad_v, grad_e
    return {
        key: _site_attribution(
            spliced.by_key[key],
            batch,
            leaves[key],
            codes[key],
            grad_v[key],
            grad_e[key],
            ig_v[key],
            ig_e[key],
        )
        for key in leaves
    }


def _clean_gradients(
    spliced: SplicedModel, batch: TokenBatch, metric: Metric, leaves: dict[str, SiteLeaves]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """grad_v m and grad_e m of every site at the clean point: one forward, one backward."""
    value_leaves = {key: lv.values.clone().requires_grad_() for key, lv in leaves.items()}
    error_leaves = {key: lv.error.clone().requires_grad_() for key, lv in leaves.items()}

    def as_leaves(site: Site, x: Tensor) -> Tensor:
        lv, v, e = leaves[site.key], value_leaves[site.key], error_leaves[site.key]
        return x + (lv.decode(site, v) - lv.decode(site, v.detach())) + (e - e.detach())

    keys = list(leaves)
    with torch.enable_grad(), spliced.intervene(as_leaves):
        m = losses(spliced, batch, metric).sum()
        grads = torch.autograd.grad(m, [value_leaves[k] for k in keys] + [error_leaves[k] for k in keys])
    check_finite(grads)
    return dict(zip(keys, grads[: len(keys)], strict=True)), dict(zip(keys, grads[len(keys) :], strict=True))


def _integrated_gradients(
    spliced: SplicedModel, batch: TokenBatch, metric: Metric, leaves: dict[str, SiteLeaves], steps: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean gradients along a' -> a, one site at a time, steps x examples as one batch (midpoint rule)."""
    alphas = path_alphas(steps, batch.input_ids.device, torch.float32)
    mean_v, mean_e = {}, {}
    for key in progress(leaves, desc="Integrated gradients", leave=False):
        lv = leaves[key]
        v, e = (t.detach().requires_grad_() for t in lv.path(alphas.to(lv.values.dtype)))
        with torch.enable_grad(), spliced.intervene(_replace_site(key, lv, v, e)):
            m = losses(spliced, batch, metric, repeat=steps).sum()
            gv, ge = torch.autograd.grad(m, [v, e])
        check_finite((gv, ge))
        mean_v[key], mean_e[key] = gv.mean(0), ge.mean(0)
    return mean_v, mean_e


def path_alphas(steps: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Points on the path: the clean point alone for 1 step, else the midpoint rule."""
    if steps == 1:
        return torch.ones(1, device=device, dtype=dtype)
    return (torch.arange(steps, device=device, dtype=dtype) + 0.5) / steps


def _replace_site(key: str, leaves: SiteLeaves, values: Tensor, error: Tensor) -> Intervention:
    """Intervention that rebuilds one site from (steps, ...) node values and errors, leaving the others."""

    def replace(site: Site, x: Tensor) -> Tensor:
        return leaves.output(site, values, error).flatten(0, 1) if site.key == key else x

    return replace


def _site_attribution(
    site: Site,
    batch: TokenBatch,
    leaves: SiteLeaves,
    code: SiteCode,
    grad_v: Tensor,
    grad_e: Tensor,
    ie_grad_v: Tensor,
    ie_grad_e: Tensor,
) -> SiteAttribution:
    """Phase 3 for one site: IE per example, grad . (a' - a) summed over positions."""
    dtype = torch.promote_types(leaves.values.dtype, torch.float32)  # sums of bf16 terms lose too much
    per_entry = (ie_grad_v * (leaves.base_values - leaves.values)).to(dtype)
    feature_ie = per_entry.new_zeros(len(batch), site.sae.d_sae).index_put(
        (leaves.rows, leaves.features), per_entry, accumulate=True
    )
    error_entry_ie = (ie_grad_e * (leaves.base_error - leaves.error)).to(dtype).sum(2)
    feats = (code.feats * batch.attention_mask[..., None]).float()
    last = feats[torch.arange(len(batch), device=feats.device), batch.last]
    by_position = feats.amax(0)
    return SiteAttribution(
        leaves,
        grad_v,
        grad_e,
        feature_ie,
        error_entry_ie.sum(1),
        by_position.amax(0),
        last,
        per_entry,
        error_entry_ie,
        by_position,
    )


def check_finite(grads) -> None:
    if not all(torch.isfinite(g).all() for g in grads):
        raise SparseCodingError(
            "Non-finite gradients in attribution; the model or an SAE overflows at this dtype. "
            "Use DTYPE/SAE_DTYPE float32, or a shorter PROMPT"
        )


@contextmanager
def timed(label: str) -> Iterator[None]:
    """Log a phase's wall time."""
    start = time.perf_counter()
    try:
        yield
    finally:
        logger.info("%s: %.2fs", label, time.perf_counter() - start)
