r"""Faithfulness of a circuit on fast.py's examples, with fast.py's metric (Marks et al. 2024).

The metric m is the fast.py graph's (`metrics`: a loss of each example's
answer at its clean input's last real position), averaged over the examples;
the ablations are val.py's (`validation`: features outside the circuit, or
all features, mean-ablated at the circuit's sites, error terms kept):

    faithfulness = (m(C) - m(empty)) / (m(M) - m(empty))     1: C recovers M

NaN (JSON null) when m(M) = m(empty). Patch inputs are not used here: the
circuit is validated on the clean inputs, as the graph's metric reads them.
Under torchrun each rank sums its share of the examples (`sparse_coding.runtime.sharding`).
"""

import math
from collections.abc import Collection, Iterable
from typing import NamedTuple

import torch

from sparse_coding.algorithms.attribution import losses
from sparse_coding.algorithms.feature_means import SiteMeans
from sparse_coding.algorithms.mean_ablation import Circuit, mean_ablations
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.config import DEFAULTS
from sparse_coding.config.schema import ErrorMode
from sparse_coding.runtime.sharding import Sums, run_pass
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import TokenBatch


class PairFaithfulness(NamedTuple):
    """m(M), m(C), m(empty) as mean losses over the examples, and the ratio."""

    metric: str
    n_examples: int
    full: float
    circuit: float
    empty: float
    faithfulness: float


@torch.no_grad()
def pair_faithfulness(
    spliced: SplicedModel,
    batches: Iterable[TokenBatch],
    *,
    circuit: Circuit,
    circuit_errors: Collection[str] = (),
    errors: ErrorMode = DEFAULTS.VALIDATION_ERRORS,
    metric: Metric,
    means: SiteMeans,
) -> PairFaithfulness:
    """Faithfulness of `circuit` over `batches` with `metric` (see the module docstring).

    C and the empty circuit are val.py's (`mean_ablation.mean_ablations`): every
    spliced site mean-ablated outside the circuit, error terms per `errors`.
    """
    ablations = mean_ablations(spliced, circuit, circuit_errors, means, errors)

    def add(sums: Sums, index: int, batch: TokenBatch) -> None:
        sums.values["full"] += float(losses(spliced, batch, metric).sum())
        for name in ("circuit", "empty"):
            with spliced.intervene(ablations[name]):
                sums.values[name] += float(losses(spliced, batch, metric).sum())
        sums.values["n_examples"] += len(batch)

    def empty() -> Sums:
        return Sums({"full": 0.0, "circuit": 0.0, "empty": 0.0, "n_examples": 0})

    totals = run_pass("pair faithfulness", batches, empty=empty, add=add, desc="Pairs", leave=False).values
    n_examples = totals["n_examples"]
    m = {name: totals[name] / n_examples for name in ("full", "circuit", "empty")}
    span = m["full"] - m["empty"]
    ratio = (m["circuit"] - m["empty"]) / span if span else math.nan
    return PairFaithfulness(metric.name, n_examples, m["full"], m["circuit"], m["empty"], ratio)
