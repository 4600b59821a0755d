"""Running totals of fast.py's attributions over many examples, and their reduction over ranks.

`gradient_graph` folds each batch of examples into these as it goes
(`sparse_coding.sharding.run_pass`), so what it keeps grows with the sites,
not with the examples, and several ranks (torchrun) can each fold their share
in and add the totals up:

- `NodeTotals`: per site, the sum and the sum of squares over examples of
  every feature's and the error's attribution (float64 on the CPU; each
  batch's part summed on the device first), the largest activation, and the
  largest activation at an example's last position (hist.py's thresholds
  compare it). Mean and population std follow: std^2 = E[x^2] - E[x]^2.
- `EdgeTotals`: per (down site, upstream site), the summed effects over the
  union of upstream features seen (float64 on the CPU), which differ per batch.

Both reduce exactly: sums by an all-reduce, maxima by one with MAX, the
edges' columns by gathering each rank's and aligning on their union.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sparse_coding import distributed
from sparse_coding.algorithms.attribution import SiteAttribution
from sparse_coding.algorithms.attribution_edges import EdgeSet
from sparse_coding.splicing.splice import SplicedModel


@dataclass
class NodeSummary:
    """One site's node attributions over all examples."""

    mean: Tensor  # (d_sae,)
    std: Tensor  # (d_sae,) population std over examples
    error_mean: float
    error_std: float
    max_activation: Tensor  # (d_sae,)
    max_last_activation: Tensor  # (d_sae,) largest activation at an example's last real position


@dataclass
class NodeTotals:
    """Sums over the examples folded in so far; see the module docstring."""

    sums: dict[str, dict[str, np.ndarray | float]]  # site key -> "ie", "ie_sq", "error", "error_sq"
    maxima: dict[str, dict[str, Tensor]]  # site key -> "activation", "last" (d_sae,) float32, CPU
    n_examples: int = 0
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # site key -> the attributions' dtype

    @classmethod
    def empty(cls, widths: dict[str, tuple[int, torch.dtype]]) -> NodeTotals:
        """Nothing folded in yet, for sites of `widths` (site key -> (d_sae, dtype of the attributions))."""
        sums, maxima = {}, {}
        for key, (d_sae, _) in widths.items():
            sums[key] = {"ie": np.zeros(d_sae), "ie_sq": np.zeros(d_sae), "error": 0.0, "error_sq": 0.0}
            lowest = torch.full((d_sae,), float("-inf"))
            maxima[key] = {"activation": lowest, "last": lowest.clone()}
        return cls(sums, maxima, 0, {key: dtype for key, (_, dtype) in widths.items()})

    @classmethod
    def for_model(cls, spliced: SplicedModel) -> NodeTotals:
        """Nothing folded in yet, for every spliced site."""
        return cls.empty(
            {
                s.key: (s.sae.d_sae, torch.promote_types(s.sae.W_dec.dtype, torch.float32))
                for s in spliced.sites
            }
        )

    @classmethod
    def empty_like(cls, attributions: dict[str, SiteAttribution]) -> NodeTotals:
        """Nothing folded in yet, for the sites of one batch's attributions."""
        return cls.empty(
            {key: (a.feature_ie.shape[1], a.feature_ie.dtype) for key, a in attributions.items()}
        )

    def add(self, attributions: dict[str, SiteAttribution]) -> None:
        """Fold in one batch's attributions (`attribution.node_attributions`)."""
        for key, attrs in attributions.items():
            sums, maxima = self.sums[key], self.maxima[key]
            sums["ie"] += _cpu64(attrs.feature_ie.sum(0))
            sums["ie_sq"] += _cpu64(attrs.feature_ie.square().sum(0))
            errors = attrs.error_ie.detach().cpu().double()  # MPS has no float64
            sums["error"] += float(errors.sum())
            sums["error_sq"] += float(errors.square().sum())
            maxima["activation"] = torch.maximum(maxima["activation"], attrs.max_activation.float().cpu())
            maxima["last"] = torch.maximum(maxima["last"], attrs.last_activation.float().amax(0).cpu())
        self.n_examples += len(next(iter(attributions.values())).error_ie)

    def reduce(self) -> NodeTotals:
        """Every rank's totals combined (sums added, maxima of maxima), on every rank."""
        sums, n = distributed.all_sum((self.sums, self.n_examples))
        return NodeTotals(sums, distributed.all_max(self.maxima), n, self.dtypes)

    def summaries(self, device: torch.device | str) -> dict[str, NodeSummary]:
        """Per site, mean and population std over the examples, and the maxima, on `device`."""
        out = {}
        for key, sums in self.sums.items():
            n, dtype = self.n_examples, self.dtypes[key]
            mean, error_mean = sums["ie"] / n, sums["error"] / n
            std = np.sqrt(np.maximum(sums["ie_sq"] / n - mean**2, 0))
            out[key] = NodeSummary(
                torch.from_numpy(mean).to(device, dtype),
                torch.from_numpy(std).to(device, dtype),
                float(error_mean),
                float(np.sqrt(max(sums["error_sq"] / n - error_mean**2, 0.0))),
                self.maxima[key]["activation"].to(device),
                self.maxima[key]["last"].to(device),
            )
        return out


@dataclass
class EdgeTotals:
    """Per (down site, upstream site), effects summed over the examples folded in so far (None: none yet)."""

    sets: list[EdgeSet] | None = None  # effects float64 on the CPU, columns the union of upstream features

    def add(self, sets: list[EdgeSet]) -> None:
        """Fold in one batch's edge sets (`attribution_edges.edges`: the same site pairs, same order)."""
        sets = [_cpu64(s) for s in sets]
        self.sets = (
            sets if self.sets is None else [aligned_sum(pair) for pair in zip(self.sets, sets, strict=True)]
        )

    def reduce(self) -> EdgeTotals:
        """Every rank's sums aligned on the union of their columns and added, on every rank."""
        parts = [part for part in distributed.all_gather(self.sets) if part is not None]
        return EdgeTotals([aligned_sum(pair) for pair in zip(*parts, strict=True)])

    def means(self, n_examples: int, device: torch.device | str) -> list[EdgeSet]:
        """Each edge's mean over `n_examples`, in float32 on `device`."""
        return [
            EdgeSet(s.down_site, s.down_features.to(device), s.up_site, s.up_features.to(device), e)
            for s, e in ((s, (s.effects / n_examples).to(device, torch.float32)) for s in self.sets or [])
        ]


def aligned_sum(sets: tuple[EdgeSet, ...] | list[EdgeSet]) -> EdgeSet:
    """One site pair's edge sets added, over the union of their upstream features (columns)."""
    first = sets[0]
    columns = torch.cat([s.up_features for s in sets]).unique()
    total = first.effects.new_zeros(first.effects.shape[0], len(columns) + 1)
    for s in sets:
        total[:, torch.searchsorted(columns, s.up_features)] += s.effects[:, :-1]
        total[:, -1] += s.effects[:, -1]
    return EdgeSet(first.down_site, first.down_features, first.up_site, columns, total)


def _cpu64(value):
    """A tensor as float64 numpy on the CPU; an EdgeSet with its tensors on the CPU, effects float64."""
    if isinstance(value, EdgeSet):
        cpu = distributed.to_cpu
        return EdgeSet(
            value.down_site,
            cpu(value.down_features),
            value.up_site,
            cpu(value.up_features),
            cpu(value.effects).double(),
        )
    return value.detach().cpu().double().numpy()
