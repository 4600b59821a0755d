r"""Validate a circuit by ablating it whole: next-token change, faithfulness, completeness.

A circuit is a set of SAE features, site key -> indices (``{"resid_3": [331]}``).
Every variant runs with the SAEs of the circuit's sites spliced, error terms
kept, and features re-read from each site's current input (as
`splice.zero_ablation` does). The metric, as in Marks et al. (2024), "Sparse
Feature Circuits" (arXiv:2403.19647), is the mean cross-entropy of the actual
next token over the N real (non-pad) positions t whose token t+1 is real too:

    m(X) = 1/N  sum_s sum_{t < len_s - 1}  -log p_X(x_{s,t+1} | x_{s,<=t})

    M        the full model (spliced = plain)
    zero     the circuit's features zeroed at every position (the "ablated" run)
    C        at the circuit's sites, every feature *not* in it mean-ablated
    M \ C    the circuit's features mean-ablated, everything else kept
    empty    every feature of the circuit's sites mean-ablated

Mean-ablating features S at a site (``x = (f * scale) @ W_dec + const + error``)
gives ``x' = x + sum_{i in S} (mean_i - f_i) * scale * W_dec[i]``, mean_i being
feature i's mean activation over every real token evaluated (BOS included).

    faithfulness = (m(C)     - m(empty)) / (m(M) - m(empty))  1: C recovers M
    completeness = (m(M \ C) - m(empty)) / (m(M) - m(empty))  0: C is complete

Completeness is the faithfulness of the complement, as in Marks et al. (who
also ablate error terms; here they are always kept). Both are NaN (JSON null)
when |m(M) - m(empty)| < MIN_METRIC_SPAN, with a warning. Also measured: CE
clean m(M) and ablated m(zero); mean KL(clean || zero) over every real
position; the next-token distribution after each sequence's last real token,
averaged over sequences.

Phases:
    1. means: a clean pass sums each circuit site's features over real tokens.
    2. evaluation: per batch, the clean forward and the four ablated ones.
    3. ratios: faithfulness and completeness from the summed metric values.

Where the circuit comes from (config pins, graph files) and the model it is
validated on are in `sparse_coding.algorithms.circuits`; validation.json and the printed
report in `sparse_coding.algorithms.validation_report`.
"""

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_coding.algorithms.circuits import Circuit, check_circuit
from sparse_coding.corpus import TokenBatch
from sparse_coding.errors import DatasetError
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import Intervention, Site, SplicedModel, zero_ablation

logger = logging.getLogger(__name__)

VARIANTS = ("circuit", "without_circuit", "empty")  # m(C), m(M \ C), m(empty)
# Below this |m(M) - m(empty)| (nats of mean CE) the ratios divide noise by
# noise (a 1e-4 change in m(C) would move faithfulness by 0.1): undefined.
MIN_METRIC_SPAN = 1e-3


class ValidationResult(NamedTuple):
    """Everything measured; probabilities are (d_vocab,) float64 on the CPU."""

    circuit: Circuit
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


# ---------------------------------------------------------------- interventions


def mean_ablation(features: dict[str, Tensor], means: dict[str, Tensor]) -> Intervention:
    """Intervention that sets chosen features to their means at every position.

    Args:
        features: site key -> (d_sae,) bool mask of the features to mean-ablate.
        means: site key -> (d_sae,) mean activation of every feature.

    ``x' = x + scale * (mean[S] @ W_dec[S] - sum of active f_i W_dec[i], i in S)``:
    the means' part is one vector, the rest needs only the active features'
    decoder rows; the site's constant term and error are unchanged.
    """

    def ablate(site: Site, x: Tensor) -> Tensor:
        chosen = features.get(site.key)
        if chosen is None or not chosen.any():
            return x
        code = site.code(x)
        scale = code.scale.to(code.feats.dtype)  # (batch, pos, 1)
        removed = _decode_active(site, code.feats * chosen * scale).to(x.dtype)
        constant = torch.where(chosen, means[site.key], 0) @ site.sae.W_dec  # (d_model,)
        return x + (scale * constant).to(x.dtype) - removed

    return ablate


def _decode_active(site: Site, values: Tensor) -> Tensor:
    """values (batch, pos, d_sae) @ W_dec, through the nonzero entries' decoder rows.

    Trained SAEs activate a few dozen features per token, so the rows cost
    far less than the dense product; when they would not (more rows than
    the dense product's memory, e.g. random SAEs), the dense product is used.
    """
    active = values != 0
    if int(active.sum()) * site.sae.d_in > values.numel():
        return values @ site.sae.W_dec
    rows, positions, feats = active.nonzero().unbind(-1)
    decoded = site.decode_rows(values[active], feats)  # (n_active, d_model)
    out = values.new_zeros(*values.shape[:-1], site.sae.d_in)
    return out.index_put_((rows, positions), decoded, accumulate=True)


def _summing_features(sums: dict[str, Tensor], real: Tensor) -> Intervention:
    """Intervention adding each site's features over real tokens into `sums`."""

    def record(site: Site, x: Tensor) -> Tensor:
        if site.key in sums:
            feats = site.code(x).feats[real]  # (n_real, d_sae)
            sums[site.key] += feats.sum(dim=0, dtype=torch.float64)
        return x

    return record


def _zero_targets(circuit: Circuit, real: Tensor) -> dict[str, Tensor]:
    """(n, 3) rows (batch row, position, feature): each circuit feature, each real token."""
    where = real.nonzero()  # (n_real, 2)
    targets = {}
    for key, dims in circuit.items():
        feats = torch.tensor(dims, dtype=torch.long, device=real.device)
        rows = where.repeat_interleave(len(feats), dim=0)
        targets[key] = torch.cat([rows, feats.repeat(len(where))[:, None]], dim=1)
    return targets


def _mean_ablations(
    spliced: SplicedModel, circuit: Circuit, means: dict[str, Tensor]
) -> dict[str, Intervention]:
    """The interventions of m(C), m(M \\ C) and m(empty), keyed as VARIANTS."""
    inside = {}
    for key, dims in circuit.items():
        inside[key] = torch.zeros(spliced.by_key[key].sae.d_sae, dtype=torch.bool, device=spliced.device)
        inside[key][dims] = True
    outside = {key: ~mask for key, mask in inside.items()}
    every = {key: torch.ones_like(mask) for key, mask in inside.items()}
    chosen = (outside, inside, every)
    return {name: mean_ablation(f, means) for name, f in zip(VARIANTS, chosen, strict=True)}


# ---------------------------------------------------------------- the passes


@torch.no_grad()
def feature_means(
    spliced: SplicedModel, batches: Iterable[TokenBatch], sites: Iterable[str]
) -> dict[str, Tensor]:
    """Each feature's mean activation (d_sae,) over the real tokens, per site key.

    Runs the blocks only up to the last of `sites`: nothing after it is needed.
    """
    saes = {key: spliced.by_key[key].sae for key in sites}
    sums = {key: sae.b_enc.new_zeros(sae.d_sae, dtype=torch.float64) for key, sae in saes.items()}
    stop = 1 + max((sae.layer for sae in saes.values()), default=-1)
    n_tokens = 0
    for batch in progress(batches, desc="Feature means", unit="batch", leave=False):
        real = batch.attention_mask.bool()
        with spliced.intervene(_summing_features(sums, real)):
            spliced.run_blocks(spliced.embed(batch.input_ids), 0, stop, batch.attention_mask)
        n_tokens += int(real.sum())
    if n_tokens == 0:
        raise DatasetError("the evaluated data has no tokens; check PROMPT or DATASET")
    return {key: (total / n_tokens).to(saes[key].W_dec.dtype) for key, total in sums.items()}


@dataclass
class _Sums:
    """Running float64 sums over batches."""

    probs_clean: Tensor  # (d_vocab,)
    probs_ablated: Tensor  # (d_vocab,)
    ce: dict[str, float] = field(default_factory=dict)  # variant -> summed CE
    kl: float = 0.0
    n_predictions: int = 0
    n_tokens: int = 0
    n_sequences: int = 0


def _log_probs(spliced: SplicedModel, batch: TokenBatch, intervention: Intervention | None = None) -> Tensor:
    """log p (batch, pos, d_vocab) in float32, under `intervention` if given."""
    if intervention is None:
        logits = spliced(batch.input_ids, batch.attention_mask)
        return F.log_softmax(logits.float(), dim=-1)
    with spliced.intervene(intervention):
        return _log_probs(spliced, batch)


def _cross_entropy_sum(log_probs: Tensor, batch: TokenBatch) -> float:
    """Sum of -log p(next token) over positions whose next token is real."""
    has_target = batch.attention_mask[:, 1:].bool()  # right padding: t is real too
    nll = -log_probs[:, :-1].gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return float(nll[has_target].sum(dtype=torch.float64))


def _last_probs(log_probs: Tensor, batch: TokenBatch) -> Tensor:
    """Sum over sequences of p(next token) after each one's last real token."""
    last = batch.attention_mask.sum(dim=1) - 1
    rows = torch.arange(len(last), device=last.device)
    return log_probs[rows, last].exp().sum(dim=0, dtype=torch.float64).cpu()


def _add(sums: _Sums, name: str, log_probs: Tensor, batch: TokenBatch) -> None:
    sums.ce[name] = sums.ce.get(name, 0.0) + _cross_entropy_sum(log_probs, batch)


def _add_batch(
    spliced: SplicedModel,
    batch: TokenBatch,
    circuit: Circuit,
    ablations: dict[str, Intervention],
    sums: _Sums,
) -> None:
    """Phase 2 for one batch: clean, zeroed and mean-ablated forwards into `sums`."""
    real = batch.attention_mask.bool()
    clean = _log_probs(spliced, batch)
    zeroed = _log_probs(spliced, batch, zero_ablation(_zero_targets(circuit, real)))
    kl = F.kl_div(zeroed, clean, log_target=True, reduction="none").sum(dim=-1)
    sums.kl += float(kl[real].sum(dtype=torch.float64))
    _add(sums, "full", clean, batch)
    _add(sums, "zero", zeroed, batch)
    sums.probs_clean += _last_probs(clean, batch)
    sums.probs_ablated += _last_probs(zeroed, batch)
    del clean, zeroed, kl  # from here on, one vocabulary-sized tensor at a time
    for name, intervention in ablations.items():
        _add(sums, name, _log_probs(spliced, batch, intervention), batch)
    sums.n_predictions += int(batch.attention_mask[:, 1:].sum())
    sums.n_tokens += int(real.sum())
    sums.n_sequences += len(real)


@torch.no_grad()
def validate_circuit(
    spliced: SplicedModel,
    batches: Iterable[TokenBatch],
    *,
    circuit: Circuit,
    means: dict[str, Tensor] | None = None,
) -> ValidationResult:
    """Ablate `circuit` whole over right-padded `batches` (see the module docstring).

    Args:
        batches: token batches, kept as token ids for both passes (8 bytes a token).
        circuit: site key -> feature indices; a site with an empty list is still
            part of m(C) and m(empty) (so ``{key: []}`` is the empty circuit).
        means: site key -> (d_sae,) means to ablate to; default: from `batches`.
    """
    check_circuit(spliced, circuit, source="circuit")
    batches = list(batches)
    start = time.perf_counter()
    if means is None:
        means = feature_means(spliced, batches, circuit)
    logger.info("Phase 1, feature means: %.1fs", time.perf_counter() - start)
    start = time.perf_counter()
    ablations = _mean_ablations(spliced, circuit, means)
    d_vocab = spliced.model.config.vocab_size
    sums = _Sums(*torch.zeros(2, d_vocab, dtype=torch.float64))
    for batch in progress(batches, desc="Validating", unit="batch"):
        _add_batch(spliced, batch, circuit, ablations, sums)
    n = len(batches)
    logger.info("Phase 2, 5 forwards x %d batches: %.1fs", n, time.perf_counter() - start)
    if sums.n_predictions == 0:
        raise DatasetError(
            "the evaluated text has no next token to predict; PROMPT or DATASET "
            "sequences need at least 2 tokens"
        )
    return _result(circuit, sums)


def _result(circuit: Circuit, sums: _Sums) -> ValidationResult:
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
        n_sequences=sums.n_sequences,
        n_predictions=sums.n_predictions,
        n_tokens=sums.n_tokens,
        ce_clean=ce["full"],
        ce_ablated=ce["zero"],
        kl=sums.kl / sums.n_tokens,
        metric=metric,
        faithfulness=ratio(metric["circuit"]),
        completeness=ratio(metric["without_circuit"]),
        probs_clean=sums.probs_clean / sums.n_sequences,
        probs_ablated=sums.probs_ablated / sums.n_sequences,
    )
