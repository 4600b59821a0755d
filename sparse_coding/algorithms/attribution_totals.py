"""Running totals of fast.py's attributions over many examples, and their reduction over ranks.

`gradient_graph` folds each batch of examples into these as it goes
(`sparse_coding.runtime.sharding.run_pass`), so what it keeps grows with the nodes
measured, not with the examples, and several ranks (torchrun) can each fold
their share in and add the totals up:

- `NodeTotals`: per site and node (slot, `node_slots`), the sum and the sum of
  squares over examples of its attribution (float64 on the CPU; each batch's
  part summed on the device first), over the union of the slots measured so
  far; and per site the largest activation, per node position, and at an
  example's last position (hist.py's thresholds compare it). Mean and
  population std follow: std^2 = E[x^2] - E[x]^2.
- `EdgeTotals`: per (down site, upstream site), the summed effects over the
  union of upstream slots seen (float64 on the CPU), which differ per batch.

Both reduce exactly: sums by aligning each rank's slots on their union and an
all-reduce, maxima by an all-reduce with MAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution
from sparse_coding.algorithms.attribution_edges import EdgeSet
from sparse_coding.algorithms.node_slots import SUMMED, NodeLayout
from sparse_coding.runtime import distributed
from sparse_coding.splicing.splice import SplicedModel


@dataclass
class NodeSummary:
    """One site's node attributions over all examples, per slot (`node_slots`)."""

    slots: Tensor  # (n,) sorted: the nodes measured at the site (errors first)
    mean: Tensor  # (n,) mean over examples
    std: Tensor  # (n,) population std over examples
    position_activation: Tensor  # (n, d_sae) per node position (summed: n = 1, every position)
    max_last_activation: Tensor  # (d_sae,) largest activation at an example's last real position

    def mean_of(self, slots: Tensor) -> Tensor:
        """The mean of each slot, 0 for a slot never measured."""
        return _lookup(self.slots, self.mean, slots)

    def std_of(self, slots: Tensor) -> Tensor:
        return _lookup(self.slots, self.std, slots)


def _lookup(keys: Tensor, values: Tensor, wanted: Tensor) -> Tensor:
    index = torch.searchsorted(keys, wanted).clamp(max=max(len(keys) - 1, 0))
    found = keys[index] == wanted if len(keys) else torch.zeros_like(wanted, dtype=torch.bool)
    return torch.where(found, values[index] if len(keys) else 0.0, torch.zeros((), dtype=values.dtype))


@dataclass
class SlotSums:
    """One site's sums over examples per slot: `slots` sorted, float64 sums on the CPU."""

    slots: Tensor  # (n,) long
    ie: Tensor  # (n,) float64: sum of the attributions
    ie_sq: Tensor  # (n,) float64: sum of their squares

    @classmethod
    def empty(cls) -> SlotSums:
        zeros = torch.zeros(0, dtype=torch.float64)
        return cls(torch.zeros(0, dtype=torch.long), zeros, zeros.clone())

    def __add__(self, other: SlotSums) -> SlotSums:
        slots = torch.cat([self.slots, other.slots]).unique()
        sums = torch.zeros(2, len(slots), dtype=torch.float64)
        for part in (self, other):
            sums[:, torch.searchsorted(slots, part.slots)] += torch.stack([part.ie, part.ie_sq])
        return SlotSums(slots, sums[0], sums[1])


@dataclass
class NodeTotals:
    """Sums over the examples folded in so far; see the module docstring."""

    layout: NodeLayout
    sums: dict[str, SlotSums]  # site key -> per-slot sums
    maxima: dict[str, dict[str, Tensor]]  # site key -> "activation" (d_sae,), "position" (n, d_sae), "last"
    dtypes: dict[str, torch.dtype]  # site key -> the attributions' dtype
    n_examples: int = field(default=0)

    @classmethod
    def empty(cls, widths: dict[str, tuple[int, torch.dtype]], layout: NodeLayout = SUMMED) -> NodeTotals:
        """Nothing folded in yet, for sites of `widths` (site key -> (d_sae, dtype of the attributions))."""
        maxima = {
            key: {
                "activation": torch.full((d_sae,), float("-inf")),
                "position": torch.full((layout.n, d_sae), float("-inf")),
                "last": torch.full((d_sae,), float("-inf")),
            }
            for key, (d_sae, _) in widths.items()
        }
        sums = {key: SlotSums.empty() for key in widths}
        return cls(layout, sums, maxima, {key: dtype for key, (_, dtype) in widths.items()})

    @classmethod
    def for_model(cls, spliced: SplicedModel, layout: NodeLayout = SUMMED) -> NodeTotals:
        """Nothing folded in yet, for every spliced site."""
        widths = {
            s.key: (s.sae.d_sae, torch.promote_types(s.sae.W_dec.dtype, torch.float32)) for s in spliced.sites
        }
        return cls.empty(widths, layout)

    def add(self, attributions: dict[str, SiteAttribution]) -> None:
        """Fold in one batch's attributions (`attribution.node_attributions`)."""
        for key, attr in attributions.items():
            slots, table = _slot_table(attr, self.layout)  # (n,), (batch, n)
            self.sums[key] = self.sums[key] + SlotSums(
                slots.cpu(), _cpu64(table.sum(0)), _cpu64(table.square().sum(0))
            )
            maxima = self.maxima[key]
            maxima["activation"] = torch.maximum(maxima["activation"], attr.max_activation.float().cpu())
            if self.layout.positioned:
                maxima["position"] = torch.maximum(maxima["position"], attr.position_activation.float().cpu())
            maxima["last"] = torch.maximum(maxima["last"], attr.last_activation.float().amax(0).cpu())
        self.n_examples += len(next(iter(attributions.values())).error_ie)

    def reduce(self) -> NodeTotals:
        """Every rank's totals combined (slots aligned and sums added, maxima of maxima), on every rank."""
        parts = distributed.all_gather(self.sums)
        sums = {key: sum((part[key] for part in parts), SlotSums.empty()) for key in self.sums}
        n_examples = distributed.all_sum(self.n_examples)
        return NodeTotals(self.layout, sums, distributed.all_max(self.maxima), self.dtypes, n_examples)

    def summaries(self, device: torch.device | str) -> dict[str, NodeSummary]:
        """Per site and slot, mean and population std over the examples, and the maxima, on `device`."""
        out = {}
        for key, sums in self.sums.items():
            n, dtype, maxima = self.n_examples, self.dtypes[key], self.maxima[key]
            mean = sums.ie / n
            std = (sums.ie_sq / n - mean.square()).clamp(min=0).sqrt()
            positions = maxima["position"] if self.layout.positioned else maxima["activation"][None]
            out[key] = NodeSummary(
                sums.slots.to(device),
                mean.to(device, dtype),
                std.to(device, dtype),
                positions.to(device),
                maxima["last"].to(device),
            )
        return out


def _slot_table(attr: SiteAttribution, layout: NodeLayout) -> tuple[Tensor, Tensor]:
    """One batch's node attributions of a site per example and slot: (sorted slots, (batch, n) table)."""
    lv = attr.leaves
    batch, n_pos = attr.error_entry_ie.shape
    positions = torch.arange(n_pos, device=lv.tokens.device)
    examples = torch.cat([lv.rows, torch.arange(batch, device=lv.tokens.device).repeat_interleave(n_pos)])
    slots = torch.cat(
        [layout.feature_slots(lv.features, lv.positions), layout.error_slots(positions).repeat(batch)]
    )
    values = torch.cat([attr.entry_ie, attr.error_entry_ie.flatten()])
    unique, column = slots.unique(return_inverse=True)
    table = values.new_zeros(batch, len(unique)).index_put((examples, column), values, accumulate=True)
    return unique, table


@dataclass
class EdgeTotals:
    """Per (down site, upstream site), effects summed over the examples folded in so far (None: none yet)."""

    sets: list[EdgeSet] | None = None  # effects float64 on the CPU, columns the union of upstream slots

    def add(self, sets: list[EdgeSet]) -> None:
        """Fold in one batch's edge sets (`attribution_edges.edges`: the same site pairs, same order)."""
        sets = [replace(s, effects=s.effects.double()) for s in distributed.to_cpu(sets)]
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
            EdgeSet(s.down_site, s.down_slots.to(device), s.up_site, s.up_slots.to(device), e)
            for s, e in ((s, (s.effects / n_examples).to(device, torch.float32)) for s in self.sets or [])
        ]


def aligned_sum(sets: tuple[EdgeSet, ...] | list[EdgeSet]) -> EdgeSet:
    """One site pair's edge sets added, over the union of their upstream slots (columns)."""
    first = sets[0]
    columns = torch.cat([s.up_slots for s in sets]).unique()
    total = first.effects.new_zeros(first.effects.shape[0], len(columns))
    for s in sets:
        total[:, torch.searchsorted(columns, s.up_slots)] += s.effects
    return EdgeSet(first.down_site, first.down_slots, first.up_site, columns, total)


def _cpu64(value: Tensor) -> Tensor:
    return value.detach().cpu().double()  # MPS has no float64: to the CPU first
