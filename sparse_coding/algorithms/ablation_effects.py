"""What one layer's ablations did, gathered chunk by chunk (phase 4 of `ablation_graph`).

Each chunk of candidates yields dense effects: (m, d_sae) on the next
layer's features and (m, d_vocab) on the next-token log-probabilities. They
are reduced as soon as the chunk is done, so no layer keeps them all:

- `record_edges`: the edges over the threshold, the effect mass, and the
  LARGEST_KEPT largest |e| so far (`largest_values`, which sorts only the
  values that can still be among them);
- `record_logits`: each drawn candidate's most raised and lowered tokens,
  copied to the host once per chunk.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

# How many of the largest effects a result keeps, to tell a user whose
# THRESHOLD_EXP drops every edge which value would keep this many.
LARGEST_KEPT = 100


@dataclass
class LayerEffects:
    """What a layer's candidates did, candidate-major."""

    candidates: Tensor  # (n,)
    edges: list[tuple[int, int, float]]  # (candidate, target feature, e)
    logits_up: list[list[tuple[int, float]]]  # per candidate: (token id, change); [] when not drawn
    logits_down: list[list[tuple[int, float]]]
    collected: float  # sum |e| over every feature effect measured
    plotted: float  # sum |e| over the edges kept
    any_effect: bool  # some feature or log-probability changed
    largest: Tensor  # (<= LARGEST_KEPT,) the largest |e| so far, descending

    @classmethod
    def none_yet(cls, candidates: Tensor) -> "LayerEffects":
        """Before the first chunk."""
        return cls(candidates, [], [], [], 0.0, 0.0, False, torch.zeros(0, device=candidates.device))


def record_edges(
    out: LayerEffects, chunk: Tensor, feature_effects: Tensor, threshold_exp: float | None
) -> tuple[Tensor, bool]:
    """Add a chunk's edges (|e| > 2**threshold_exp, or every non-zero e) and effect mass to `out`.

    Args:
        chunk: (m,) the chunk's candidates.
        feature_effects: (m, d_sae) clean - ablated next-layer features.

    Returns:
        Which candidates kept an edge (m,), and whether any feature changed at all.
    """
    magnitude = feature_effects.abs()
    keep = magnitude > 2.0**threshold_exp if threshold_exp is not None else magnitude > 0
    collected = float(magnitude.sum())
    out.collected += collected
    out.any_effect |= collected > 0
    out.plotted += float(magnitude[keep].sum())
    out.largest = largest_values(out.largest, magnitude.float())
    cand, target = keep.nonzero(as_tuple=True)
    values = feature_effects[cand, target].tolist()
    out.edges += list(zip(chunk[cand].tolist(), target.tolist(), values, strict=True))
    has_edge = torch.zeros(len(chunk), dtype=torch.bool, device=chunk.device)
    return has_edge.index_fill_(0, cand.unique(), True), collected > 0


def largest_values(largest: Tensor, magnitude: Tensor) -> Tensor:
    """The LARGEST_KEPT largest values of `largest` (descending) and `magnitude` (m, width), descending.

    A top-k over all m x width values is slow on a CPU. Each row's
    maximum is a distinct value, so at least LARGEST_KEPT values are >= the
    LARGEST_KEPT-th largest of the row maxima and `largest`; only those are sorted.
    """
    pool = torch.cat([largest, magnitude.amax(dim=1)])
    if len(pool) >= LARGEST_KEPT:
        bound = pool.topk(LARGEST_KEPT).values[-1]
        largest, magnitude = largest[largest >= bound], magnitude[magnitude >= bound]
    seen = torch.cat([largest, magnitude.flatten()])
    return seen.topk(min(LARGEST_KEPT, len(seen))).values


def record_logits(out: LayerEffects, drawn: Tensor, logit_effects: Tensor, logit_tokens: int) -> None:
    """Add the most raised and lowered tokens of each drawn candidate to `out`; none for others.

    Args:
        drawn: (m,) bool, the chunk's candidates whose cells are wanted.
        logit_effects: (drawn ones, d_vocab) clean - ablated next-token log-probabilities.
        logit_tokens: tokens per side.
    """
    k = min(logit_tokens, logit_effects.shape[1])
    up, down = logit_effects.topk(k, dim=1), logit_effects.topk(k, dim=1, largest=False)
    up_ids, up_values, down_ids, down_values = (
        t.cpu() for t in (up.indices, up.values, down.indices, down.values)
    )
    out.any_effect |= k > 0 and bool((up_values[:, 0] > 0).any() or (down_values[:, 0] < 0).any())
    row = 0
    for is_drawn in drawn.tolist():
        if not is_drawn:
            out.logits_up.append([])
            out.logits_down.append([])
            continue
        out.logits_up.append(_cells(up_ids[row], up_values[row], raised=True))
        out.logits_down.append(_cells(down_ids[row], down_values[row], raised=False))
        row += 1


def _cells(ids: Tensor, values: Tensor, raised: bool) -> list[tuple[int, float]]:
    """(token id, change) pairs that moved the stated way."""
    pairs = zip(ids.tolist(), values.tolist(), strict=True)
    return [(i, v) for i, v in pairs if (v > 0 if raised else v < 0)]
