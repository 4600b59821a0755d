r"""Validate a circuit by ablating it whole: next-token change, faithfulness, completeness.

A circuit is a set of SAE features, site key -> indices (``{"resid_3": [331]}``),
optionally with error nodes (site keys whose SAE error term belongs to it).
Following Marks et al. (2024), "Sparse Feature Circuits" (arXiv:2403.19647),
M is the model with *every* spliced SAE site (val.py splices every site of
ACTS_LAYERS_SLICE), so that m(empty), and with it faithfulness, does not depend
on which sites a circuit happens to use. Features are re-read from each site's
current input (as `splice.zero_ablation` does). The metric is the mean
cross-entropy of the actual next token over the N real (non-pad) positions t
whose token t+1 is real too:

    m(X) = 1/N  sum_s sum_{t < len_s - 1}  -log p_X(x_{s,t+1} | x_{s,<=t})

    M        the full model: every site spliced (spliced = plain)
    zero     the circuit's features zeroed at every position (the "ablated" run)
    C        every feature *not* in the circuit mean-ablated, at every site
    M \ C    the circuit's features mean-ablated, everything else kept
    empty    every feature of every site mean-ablated

Mean-ablating features S at a site (``x = (f * scale) @ W_dec + const + error``)
gives ``x' = x + sum_{i in S} (mean_i - f_i) * scale * W_dec[i]``, mean_i being
feature i's mean activation over every real token evaluated (BOS included).
Error terms are kept (``errors="keep"``, Marks et al.'s default), or with
``errors="ablate"`` mean-ablated too where their features are: in C at every
site whose error node is not in the circuit, in empty at every site, in M \ C
at the circuit's error nodes (``x' = x - error + mean error``).

    faithfulness = (m(C)     - m(empty)) / (m(M) - m(empty))  1: C recovers M
    completeness = (m(M \ C) - m(empty)) / (m(M) - m(empty))  0: C is complete

Both are NaN (JSON null) when |m(M) - m(empty)| < MIN_METRIC_SPAN, with a
warning. Also measured: CE clean m(M) and ablated m(zero); mean KL(clean ||
zero) over every real position; the next-token distribution after each
sequence's last real token, averaged over sequences.

Phases (sums in float64 on the CPU, added over torchrun ranks):
    1. means: a clean pass sums every site's features and errors over real tokens (`feature_means`).
    2. evaluation: per batch, the clean forward and the four ablated ones.
    3. ratios: faithfulness and completeness from the summed metric values.

`pair_faithfulness` measures faithfulness on fast.py's examples instead, with
the graph's metric (Marks et al. 2024).

Where the circuit comes from (config pins, graph files) and the model it is
validated on are in `sparse_coding.pipelines.val`; validation.json and the printed
report in `sparse_coding.pipelines.val_report`.
"""

import logging
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_coding.algorithms.attribution import losses
from sparse_coding.algorithms.feature_means import (
    VARIANTS,
    Circuit,
    SiteMeans,
    cpu_total,
    feature_means,
    mean_ablations,
)
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.config import DEFAULTS
from sparse_coding.config.schema import ErrorMode
from sparse_coding.errors import ConfigError, DatasetError
from sparse_coding.runtime.distributed import all_sum
from sparse_coding.runtime.sharding import Sums, run_pass
from sparse_coding.splicing.splice import Intervention, SplicedModel, zero_ablation
from sparse_coding.text.batches import TokenBatch

logger = logging.getLogger(__name__)

# Below this |m(M) - m(empty)| (nats of mean CE) the ratios divide noise by
# noise (a 1e-4 change in m(C) would move faithfulness by 0.1): undefined.
MIN_METRIC_SPAN = 1e-3


class ValidationResult(NamedTuple):
    """Everything measured; probabilities are (d_vocab,) float64 on the CPU."""

    circuit: Circuit
    circuit_errors: list[str]  # site keys whose error node is in the circuit
    sites: list[str]  # every spliced site: what M splices and C, empty mean-ablate
    errors: ErrorMode  # what happens to error terms outside the circuit
    n_sequences: int
    n_predictions: int  # N: positions with a real next token
    n_tokens: int  # real tokens (feature means, KL)
    ce_clean: float
    ce_ablated: float
    kl: float  # mean KL(clean || zero-ablated) per real token
    metric: dict[str, float]  # "full", "circuit", "without_circuit", "empty"
    faithfulness: float
    completeness: float
    probs_clean: Tensor  # p(next token) after the last token, mean over sequences
    probs_ablated: Tensor


def _zero_targets(circuit: Circuit, real: Tensor) -> dict[str, Tensor]:
    """(n, 3) rows (batch row, position, feature): each circuit feature, each real token."""
    where = real.nonzero()  # (n_real, 2)
    targets = {}
    for key, dims in circuit.items():
        feats = torch.tensor(dims, dtype=torch.long, device=real.device)
        rows = where.repeat_interleave(len(feats), dim=0)
        targets[key] = torch.cat([rows, feats.repeat(len(where))[:, None]], dim=1)
    return targets


@dataclass
class _ValidationTotals:
    """Running float64 sums over batches, on the CPU."""

    probs_clean: np.ndarray  # (d_vocab,)
    probs_ablated: np.ndarray  # (d_vocab,)
    ce: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("full", "zero", *VARIANTS), 0.0))
    kl: float = 0.0
    n_predictions: int = 0
    n_tokens: int = 0
    n_sequences: int = 0

    def reduce(self) -> "_ValidationTotals":
        """Every rank's sums added (float64), on every rank."""
        return all_sum(self)


def _log_probs(spliced: SplicedModel, batch: TokenBatch, intervention: Intervention | None = None) -> Tensor:
    """log p (batch, pos, d_vocab) in float32, under `intervention` if given."""
    with spliced.intervene(intervention):
        return F.log_softmax(spliced(batch.input_ids, batch.attention_mask).float(), dim=-1)


def _cross_entropy_sum(log_probs: Tensor, batch: TokenBatch) -> float:
    """Sum of -log p(next token) over positions whose next token is real."""
    has_target = batch.attention_mask[:, 1:].bool()  # right padding: t is real too
    nll = -log_probs[:, :-1].gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return float(nll[has_target].sum())


def _last_probs(log_probs: Tensor, batch: TokenBatch) -> np.ndarray:
    """Sum over sequences of p(next token) after each one's last real token."""
    last = batch.attention_mask.sum(dim=1) - 1
    rows = torch.arange(len(last), device=last.device)
    return cpu_total(log_probs[rows, last].exp())


def _add_batch(
    spliced: SplicedModel,
    batch: TokenBatch,
    circuit: Circuit,
    ablations: dict[str, Intervention],
    sums: _ValidationTotals,
) -> None:
    """Phase 2 for one batch: clean, zeroed and mean-ablated forwards into `sums`."""
    real = batch.attention_mask.bool()
    clean = _log_probs(spliced, batch)
    zeroed = _log_probs(spliced, batch, zero_ablation(_zero_targets(circuit, real)))
    kl = F.kl_div(zeroed, clean, log_target=True, reduction="none").sum(dim=-1)
    sums.kl += float(kl[real].sum())
    sums.ce["full"] += _cross_entropy_sum(clean, batch)
    sums.ce["zero"] += _cross_entropy_sum(zeroed, batch)
    sums.probs_clean += _last_probs(clean, batch)
    sums.probs_ablated += _last_probs(zeroed, batch)
    del clean, zeroed, kl  # from here on, one vocabulary-sized tensor at a time
    for name, intervention in ablations.items():
        sums.ce[name] += _cross_entropy_sum(_log_probs(spliced, batch, intervention), batch)
    sums.n_predictions += int(batch.attention_mask[:, 1:].sum())
    sums.n_tokens += int(real.sum())
    sums.n_sequences += len(real)


@torch.no_grad()
def validate_circuit(
    spliced: SplicedModel,
    batches: Iterable[TokenBatch],
    *,
    circuit: Circuit,
    circuit_errors: Collection[str] = (),
    errors: ErrorMode = DEFAULTS.VALIDATION_ERRORS,
    means: SiteMeans | None = None,
) -> ValidationResult:
    """Ablate `circuit` whole over right-padded `batches` (see the module docstring).

    Args:
        spliced: M, the model with every SAE site that C and empty mean-ablate.
        batches: token batches, kept as token ids for both passes (8 bytes a token).
        circuit: site key -> feature indices (``{}`` is the empty circuit).
        circuit_errors: site keys whose error node is in the circuit.
        errors: "keep" (error terms never ablated) or "ablate" (mean-ablated
            outside the circuit, as its features are; see the module docstring).
        means: every site's means to ablate to; default: from `batches`.
    """
    check_circuit(spliced, circuit, source="circuit", circuit_errors=circuit_errors)
    if iter(batches) is batches:  # an iterator: kept for the second pass (a list or re-stream is read twice)
        batches = list(batches)
    start = time.perf_counter()
    if means is None:
        means = feature_means(spliced, batches, spliced.by_key)
    logger.info("Phase 1, feature means: %.1fs", time.perf_counter() - start)
    start = time.perf_counter()
    ablations = mean_ablations(spliced, circuit, circuit_errors, means, errors)
    d_vocab = spliced.model.config.vocab_size

    def add(sums: _ValidationTotals, index: int, batch: TokenBatch) -> None:
        _add_batch(spliced, batch, circuit, ablations, sums)

    sums = run_pass(
        "validation",
        batches,
        empty=lambda: _ValidationTotals(np.zeros(d_vocab), np.zeros(d_vocab)),
        add=add,
        desc="Validating",
    )
    logger.info("Phase 2, 5 forwards x %d sequences: %.1fs", sums.n_sequences, time.perf_counter() - start)
    if sums.n_predictions == 0:
        raise DatasetError(
            "the evaluated text has no next token to predict; PROMPT or DATASET "
            "sequences need at least 2 tokens"
        )
    return _result(circuit, sorted(circuit_errors), list(spliced.by_key), errors, sums)


def _result(
    circuit: Circuit, circuit_errors: list[str], sites: list[str], errors: ErrorMode, sums: _ValidationTotals
) -> ValidationResult:
    """Phase 3: means of the sums, faithfulness and completeness."""
    ce = {name: total / sums.n_predictions for name, total in sums.ce.items()}
    metric = {name: ce[name] for name in ("full", *VARIANTS)}
    span = metric["full"] - metric["empty"]
    meaningful = abs(span) >= MIN_METRIC_SPAN
    if not meaningful:
        logger.warning(
            "|m(M) - m(empty)| = %.2g nats is below %g: mean-ablating these sites barely changes the loss, "
            "so faithfulness and completeness are undefined (reported as null)",
            abs(span),
            MIN_METRIC_SPAN,
        )

    def ratio(value: float) -> float:
        return (value - metric["empty"]) / span if meaningful else math.nan

    return ValidationResult(
        circuit=circuit,
        circuit_errors=circuit_errors,
        sites=sites,
        errors=errors,
        n_sequences=sums.n_sequences,
        n_predictions=sums.n_predictions,
        n_tokens=sums.n_tokens,
        ce_clean=ce["full"],
        ce_ablated=ce["zero"],
        kl=sums.kl / sums.n_tokens,
        metric=metric,
        faithfulness=ratio(metric["circuit"]),
        completeness=ratio(metric["without_circuit"]),
        probs_clean=torch.from_numpy(sums.probs_clean / sums.n_sequences),
        probs_ablated=torch.from_numpy(sums.probs_ablated / sums.n_sequences),
    )


def check_circuit(
    spliced: SplicedModel, circuit: Circuit, *, source: str, circuit_errors: Collection[str] = ()
) -> None:
    """Every pinned site (and error node's site) is spliced and every index lies within its SAE's width."""
    missing = [repr(key) for key in [*circuit, *circuit_errors] if key not in spliced.by_key]
    if missing:
        raise ConfigError(
            f"{source} pins {', '.join(missing)}, which no spliced SAE or transcoder reads; spliced: "
            f"{', '.join(spliced.by_key) or 'none'} (does an SAE read another hook? is TRANSCODERS "
            f"the graph's set?)"
        )
    widths = {key: spliced.by_key[key].d_sae for key in circuit}
    bad = [
        f"{key!r} index {index} (width {widths[key]}, valid 0..{widths[key] - 1})"
        for key, dims in circuit.items()
        for index in dims
        if not 0 <= index < widths[key]
    ]
    if bad:
        raise ConfigError(f"{source} pins features beyond their SAE: {'; '.join(bad)}")


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
    """Faithfulness of `circuit` on fast.py's examples, with fast.py's metric.

    m is the fast.py graph's (`metrics`: a loss of each example's answer at
    its clean input's last real position), averaged over the examples; C and
    empty are the mean ablations above (`feature_means.mean_ablations`):

        faithfulness = (m(C) - m(empty)) / (m(M) - m(empty))     1: C recovers M

    NaN (JSON null) when m(M) = m(empty). Patch inputs are not used here: the
    circuit is validated on the clean inputs, as the graph's metric reads them.
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
