r"""Validate a circuit by ablating it whole: next-token change, loss, faithfulness, completeness.

A circuit is a set of SAE features, site key -> indices (``{"resid_3": [331, 12]}``).
Every variant below runs the model with the SAEs of the circuit's sites spliced,
SAE error terms kept, and features re-read from each site's current (possibly
already changed) input, as `splice.zero_ablation` does.

Metric (Marks et al. 2024, "Sparse Feature Circuits", arXiv:2403.19647, sec. 4):
the mean cross-entropy of the actual next token over every real (non-pad)
position t whose next token t+1 is real too, pooled over all N such positions:

    m(X) = 1/N  sum_s sum_{t < len_s - 1}  -log p_X(x_{s,t+1} | x_{s,<=t})

Variants X:

    M        the full model (spliced = plain)
    zero     the circuit's features zeroed at every position (the reported "ablated")
    C        at every site the circuit touches, every feature *not* in the circuit
             mean-ablated; the circuit's features kept
    M \ C    the circuit's features mean-ablated, everything else kept
    empty    every feature of the circuit's sites mean-ablated

Mean-ablating a feature set S at a site, with ``x = (f * scale) @ W_dec + const + error``:

    x' = x + sum_{i in S} (mean_i - f_i) * scale * W_dec[i]

where mean_i is feature i's mean activation over every real token of the
evaluated data (including BOS). Then

    faithfulness = (m(C)     - m(empty)) / (m(M) - m(empty))   1: the circuit alone recovers M
    completeness = (m(M \ C) - m(empty)) / (m(M) - m(empty))   0: the circuit is complete

(completeness is the faithfulness of the complement, as in Marks et al.; unlike
there, error terms are never ablated). Both are NaN (JSON null) when
m(M) = m(empty). Also reported: mean CE clean = m(M) and ablated = m(zero);
mean KL(clean || zero) over every real position; the next-token distribution
after each sequence's last real token, averaged over sequences (with PROMPT:
the prompt's own).

Phases:
    1. means: a clean pass over the data sums each circuit site's features over real tokens.
    2. evaluation: per batch, the clean forward and the four ablated ones, summed in float64.
    3. ratios: faithfulness and completeness from the four metric values.

``validation.json`` (`report_data`): ``circuit`` (site key -> indices),
``source`` (where the circuit came from), ``data`` (PROMPT or DATASET),
``n_sequences``, ``n_predictions`` (N), ``n_tokens`` (real tokens: means and
KL), ``ablation`` and ``baseline`` (the ablations used, in words),
``ce_clean``, ``ce_ablated``, ``kl_clean_ablated``, ``metric`` ({``full``,
``circuit``, ``without_circuit``, ``empty``}: m(M), m(C), m(M \ C),
m(empty)), ``faithfulness``, ``completeness``, ``next_token`` ({``clean_top``,
``increases``, ``decreases``, ``ablated_top``}: lists of {``token``, ``id``,
``clean``, ``ablated``, ``change``}), ``config`` (every key's value).
"""

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.corpus import TokenBatch
from sparse_coding.errors import ConfigError, DatasetError, GraphFileError
from sparse_coding.graph import Graph
from sparse_coding.graph_files import graph_from_json, load_graph
from sparse_coding.model import load_model, resolve_device, resolve_dtype
from sparse_coding.nodes import parse_node_id, parse_site_key, site_key
from sparse_coding.saes import load_sae
from sparse_coding.splice import Intervention, Site, SplicedModel, zero_ablation

logger = logging.getLogger(__name__)

Circuit = dict[str, list[int]]  # site key ("attn_7") -> feature indices
ABLATION = "the circuit's features zeroed at every position, SAE error terms kept"
BASELINE = (
    "mean ablation: each feature set to its mean activation over the real tokens "
    "evaluated, SAE error terms kept"
)
VARIANTS = ("circuit", "without_circuit", "empty")  # m(C), m(M \ C), m(empty)


class ValidationResult(NamedTuple):
    """Everything measured; probabilities are (d_vocab,) float64 on the CPU."""

    circuit: Circuit
    n_sequences: int
    n_predictions: int  # N: positions with a real next token
    n_tokens: int  # real tokens (feature means, KL)
    ce_clean: float
    ce_ablated: float
    kl: float  # mean KL(clean || zero-ablated) per real position
    metric: dict[str, float]  # "full", "circuit", "without_circuit", "empty"
    faithfulness: float
    completeness: float
    probs_clean: (
        Tensor  # next-token distribution after the last token, mean over sequences
    )
    probs_ablated: Tensor


# ---------------------------------------------------------------- the circuit


def circuit_from_config(config: Config) -> Circuit:
    """VALIDATION_DIMS_PINNED as site key -> sorted, distinct feature indices."""
    if not config.validation_dims:
        raise ConfigError(
            "VALIDATION_DIMS_PINNED is unset; pin the circuit to validate, e.g. "
            "{9: [331, 12], 'attn_10': [5]}, or pass --from-graph PATH"
        )
    return {
        site_key(*key): sorted(set(dims))
        for key, dims in config.validation_dims.items()
    }


def circuit_from_graph(graph: Graph, path: Path) -> Circuit:
    """The feature nodes of a pipe.py/fast.py graph; error and non-SAE nodes are skipped."""
    circuit: Circuit = {}
    skipped = 0
    for node_id in graph.nodes:
        try:
            site, layer, feature = parse_node_id(node_id)
        except ValueError:
            feature = None
        if feature is None:
            skipped += 1
            continue
        circuit.setdefault(site_key(site, layer), []).append(feature)
    if not circuit:
        raise GraphFileError(
            f"graph file {path} has no feature nodes ('{{site}}_{{layer}}.{{index}}') to validate"
        )
    logger.info(
        "Graph %s: %d feature nodes; %d error/other nodes skipped",
        path,
        sum(map(len, circuit.values())),
        skipped,
    )
    return {key: sorted(set(dims)) for key, dims in sorted(circuit.items())}


def circuit_and_source(config: Config, graph_path: Path | None) -> tuple[Circuit, str]:
    """The circuit of a graph file when given, else of VALIDATION_DIMS_PINNED; and its source."""
    if graph_path is None:
        return circuit_from_config(config), "VALIDATION_DIMS_PINNED"
    return circuit_from_graph(
        read_graph(graph_path), graph_path
    ), f"graph file {graph_path}"


def read_graph(path: Path) -> Graph:
    """A pipe.py/fast.py graph from its ``.json`` or ``.dot`` file."""
    if path.suffix not in (".json", ".dot"):
        raise GraphFileError(
            f"graph file {path} must end in .json or .dot (as pipe.py/fast.py write)"
        )
    if not path.is_file():
        raise GraphFileError(f"graph file {path} does not exist")
    if path.suffix == ".dot":
        return load_graph(path)
    try:
        return graph_from_json(path.read_text(encoding="utf-8"))
    except (
        OSError,
        UnicodeDecodeError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as e:
        raise GraphFileError(
            f"graph file {path} is not a readable graph JSON ({e!r})"
        ) from e


def load_circuit_model(
    config: Config, circuit: Circuit, *, source: str = "VALIDATION_DIMS_PINNED"
) -> tuple[SplicedModel, PreTrainedTokenizerBase]:
    """MODEL_DIR with exactly the circuit's SAEs spliced; bad pins raise ConfigError naming them.

    Args:
        source: where the circuit came from, for error messages.
    """
    sources = config.sae_sources
    unset = [key for key in circuit if parse_site_key(key)[0] not in sources]
    if unset:
        keys = ", ".join(
            f"{parse_site_key(k)[0].upper()}_SAES (for {k!r})" for k in unset
        )
        raise ConfigError(
            f"{source} pins features at sites without an SAE source: {keys} unset; set them"
        )
    device, dtype = resolve_device(config.DEVICE), resolve_dtype(config.DTYPE)
    model, tokenizer = load_model(config.MODEL_DIR, device, dtype)
    _check_layers(
        circuit,
        config.layer_range(model.config.n_layer),
        config.ACTS_LAYERS_SLICE,
        source,
    )
    sae_dtype = resolve_dtype(config.SAE_DTYPE, dtype)
    keys = [parse_site_key(key) for key in circuit]
    saes = [
        load_sae(sources[site], layer, device, sae_dtype)
        for site, layer in tqdm(keys, desc="Loading SAEs", leave=False)
    ]
    spliced = SplicedModel(model, saes)
    check_circuit(spliced, circuit, source=source)
    return spliced, tokenizer


def _check_layers(
    circuit: Circuit, layers: range, slice_text: str, source: str
) -> None:
    outside = [key for key in circuit if parse_site_key(key)[1] not in layers]
    if outside:
        raise ConfigError(
            f"{source} pins layers outside ACTS_LAYERS_SLICE {slice_text!r} (layers "
            f"{layers.start}..{layers.stop - 1}): {', '.join(map(repr, outside))}; widen the slice or drop them"
        )


def check_circuit(
    spliced: SplicedModel, circuit: Circuit, *, source: str = "circuit"
) -> None:
    """Every pinned site is spliced and every index lies within its SAE's width."""
    missing = [key for key in circuit if key not in spliced.by_key]
    if missing:
        raise ConfigError(
            f"{source} pins sites with no SAE spliced: {', '.join(map(repr, missing))}; "
            f"spliced sites: {', '.join(spliced.by_key) or 'none'} (does the SAE's hook read another layer?)"
        )
    bad = [
        f"{key!r} index {index} (width {spliced.by_key[key].sae.d_sae}, valid 0..{spliced.by_key[key].sae.d_sae - 1})"
        for key, dims in circuit.items()
        for index in dims
        if not 0 <= index < spliced.by_key[key].sae.d_sae
    ]
    if bad:
        raise ConfigError(
            f"{source} pins features beyond their SAE's width: {'; '.join(bad)}"
        )


# ---------------------------------------------------------------- interventions


def mean_ablation(
    features: dict[str, Tensor], means: dict[str, Tensor]
) -> Intervention:
    """Intervention that sets chosen features to their means at every position.

    Args:
        features: site key -> (n,) long feature indices to mean-ablate.
        means: site key -> (d_sae,) mean activation of every feature.

    ``x' = x + ((mean - f) * scale) @ W_dec`` over the chosen features: the
    site's constant part and error term stay as they are.
    """

    def ablate(site: Site, x: Tensor) -> Tensor:
        chosen = features.get(site.key)
        if chosen is None or len(chosen) == 0:
            return x
        code = site.code(x)
        shift = (means[site.key][chosen] - code.feats[..., chosen]) * code.scale.to(
            code.feats.dtype
        )
        return x + (shift @ site.sae.W_dec[chosen]).to(x.dtype)  # (batch, pos, d_model)

    return ablate


def _summing_features(sums: dict[str, Tensor], real: Tensor) -> Intervention:
    """Intervention adding each summed site's features over real tokens into `sums` (float64)."""

    def record(site: Site, x: Tensor) -> Tensor:
        if site.key in sums:
            sums[site.key] += site.code(x).feats[real].sum(dim=0, dtype=torch.float64)
        return x

    return record


def _zero_targets(circuit: Circuit, real: Tensor) -> dict[str, Tensor]:
    """(n, 3) rows (batch row, position, feature): every circuit feature at every real token."""
    where = real.nonzero()  # (n_real, 2)
    targets = {}
    for key, dims in circuit.items():
        feats = torch.tensor(dims, dtype=torch.long, device=real.device)
        rows = where.repeat_interleave(len(feats), dim=0)
        targets[key] = torch.cat([rows, feats.repeat(len(where))[:, None]], dim=1)
    return targets


# ---------------------------------------------------------------- the passes


@torch.no_grad()
def feature_means(
    spliced: SplicedModel, batches: Iterable[TokenBatch], sites: Iterable[str]
) -> dict[str, Tensor]:
    """Each feature's mean activation (d_sae,) over the real tokens of `batches`, per site key."""
    sums = {
        key: torch.zeros(
            spliced.by_key[key].sae.d_sae, dtype=torch.float64, device=spliced.device
        )
        for key in sites
    }
    n_tokens = 0
    for batch in tqdm(batches, desc="Feature means", leave=False):
        real = batch.attention_mask.bool()
        with spliced.intervene(_summing_features(sums, real)):
            spliced(batch.input_ids, batch.attention_mask)
        n_tokens += int(real.sum())
    if n_tokens == 0:
        raise DatasetError("the evaluated data has no tokens; check PROMPT or DATASET")
    return {
        key: (total / n_tokens).to(spliced.by_key[key].sae.W_dec.dtype)
        for key, total in sums.items()
    }


class _Sums:
    """float64 running sums over batches."""

    def __init__(self, d_vocab: int) -> None:
        self.ce = dict.fromkeys(("full", "zero", *VARIANTS), 0.0)
        self.kl = 0.0
        self.n_predictions = self.n_tokens = self.n_sequences = 0
        self.probs_clean = torch.zeros(d_vocab, dtype=torch.float64)
        self.probs_ablated = torch.zeros(d_vocab, dtype=torch.float64)


def _log_probs(
    spliced: SplicedModel, batch: TokenBatch, intervention: Intervention | None = None
) -> Tensor:
    if intervention is None:
        return F.log_softmax(
            spliced(batch.input_ids, batch.attention_mask).float(), dim=-1
        )
    with spliced.intervene(intervention):
        return _log_probs(spliced, batch)


def _cross_entropy_sum(log_probs: Tensor, batch: TokenBatch) -> float:
    """Sum of -log p(next token) over positions whose next token is real."""
    has_target = batch.attention_mask[
        :, 1:
    ].bool()  # right padding: t+1 real implies t real
    nll = -log_probs[:, :-1].gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return float(nll[has_target].sum(dtype=torch.float64))


def _last_probs(log_probs: Tensor, batch: TokenBatch) -> Tensor:
    last = batch.attention_mask.sum(dim=1) - 1
    rows = torch.arange(len(last), device=last.device)
    return log_probs[rows, last].exp().sum(dim=0, dtype=torch.float64).cpu()


def _add_batch(
    spliced: SplicedModel,
    batch: TokenBatch,
    circuit: Circuit,
    ablations: dict[str, Intervention],
    sums: _Sums,
) -> None:
    """The clean, zero-ablated and mean-ablated forwards of one batch, added into `sums`."""
    real = batch.attention_mask.bool()
    clean = _log_probs(spliced, batch)
    zeroed = _log_probs(spliced, batch, zero_ablation(_zero_targets(circuit, real)))
    kl = F.kl_div(zeroed, clean, log_target=True, reduction="none").sum(
        dim=-1
    )  # (batch, pos)
    sums.kl += float(kl[real].sum(dtype=torch.float64))
    sums.ce["full"] += _cross_entropy_sum(clean, batch)
    sums.ce["zero"] += _cross_entropy_sum(zeroed, batch)
    sums.probs_clean += _last_probs(clean, batch)
    sums.probs_ablated += _last_probs(zeroed, batch)
    del clean, zeroed, kl
    for name, intervention in ablations.items():
        sums.ce[name] += _cross_entropy_sum(
            _log_probs(spliced, batch, intervention), batch
        )
    sums.n_predictions += int(batch.attention_mask[:, 1:].sum())
    sums.n_tokens += int(real.sum())
    sums.n_sequences += len(real)


def _mean_ablations(
    spliced: SplicedModel, circuit: Circuit, means: dict[str, Tensor]
) -> dict[str, Intervention]:
    """The interventions of m(C), m(M \\ C) and m(empty)."""
    inside, outside, every = {}, {}, {}
    for key, dims in circuit.items():
        keep = torch.zeros(
            spliced.by_key[key].sae.d_sae, dtype=torch.bool, device=spliced.device
        )
        keep[dims] = True
        inside[key], outside[key], every[key] = (
            keep.nonzero()[:, 0],
            (~keep).nonzero()[:, 0],
            keep.new_ones(len(keep)).nonzero()[:, 0],
        )
    return dict(
        zip(
            VARIANTS,
            (mean_ablation(f, means) for f in (outside, inside, every)),
            strict=True,
        )
    )


@torch.no_grad()
def validate_circuit(
    spliced: SplicedModel,
    batches: Iterable[TokenBatch],
    *,
    circuit: Circuit,
    means: dict[str, Tensor] | None = None,
) -> ValidationResult:
    """Ablate `circuit` whole over `batches` (right-padded); see the module docstring.

    Args:
        batches: token batches; held as token ids for the two passes (8 bytes a token).
        circuit: site key -> feature indices; an empty list still makes the site
            part of m(C) and m(empty) (the empty circuit).
        means: site key -> (d_sae,) mean activations; default: computed from `batches`.
    """
    check_circuit(spliced, circuit)
    batches = list(batches)
    start = time.perf_counter()
    means = means if means is not None else feature_means(spliced, batches, circuit)
    logger.info(
        "Phase 1: feature means over %d batches in %.1fs",
        len(batches),
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    ablations = _mean_ablations(spliced, circuit, means)
    sums = _Sums(spliced.model.config.vocab_size)
    for batch in tqdm(batches, desc="Validating", unit="batch"):
        _add_batch(spliced, batch, circuit, ablations, sums)
    logger.info(
        "Phase 2: 5 forwards per batch over %d batches in %.1fs",
        len(batches),
        time.perf_counter() - start,
    )
    if sums.n_predictions == 0:
        raise DatasetError(
            "the evaluated text has no next token to predict; PROMPT or DATASET needs 2+ tokens per sequence"
        )
    return _result(circuit, sums)


def _result(circuit: Circuit, sums: _Sums) -> ValidationResult:
    """Phase 3: means of the sums, faithfulness and completeness."""
    ce = {name: total / sums.n_predictions for name, total in sums.ce.items()}
    metric = {"full": ce["full"], **{name: ce[name] for name in VARIANTS}}
    span = metric["full"] - metric["empty"]
    if span == 0:
        logger.warning(
            "m(M) = m(empty): mean-ablating the circuit's sites changes nothing, so the ratios are undefined"
        )
    ratio = (
        (lambda value: (value - metric["empty"]) / span)
        if span
        else (lambda value: math.nan)
    )
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


# ---------------------------------------------------------------- the report


def next_token_changes(
    result: ValidationResult, tokenizer: PreTrainedTokenizerBase, k: int
) -> dict[str, list[dict[str, Any]]]:
    """Top-k clean tokens, largest increases and decreases, top-k ablated tokens."""
    clean, ablated = result.probs_clean, result.probs_ablated
    change = ablated - clean
    k = min(k, len(clean))
    picks = {
        "clean_top": clean.topk(k).indices,
        "increases": [i for i in change.topk(k).indices if change[i] > 0],
        "decreases": [i for i in (-change).topk(k).indices if change[i] < 0],
        "ablated_top": ablated.topk(k).indices,
    }
    return {
        name: [
            {
                "token": tokenizer.decode([int(i)]),
                "id": int(i),
                "clean": float(clean[i]),
                "ablated": float(ablated[i]),
                "change": float(change[i]),
            }
            for i in ids
        ]
        for name, ids in picks.items()
    }


def report_data(
    result: ValidationResult,
    tokenizer: PreTrainedTokenizerBase,
    *,
    logit_tokens: int,
    source: str,
    data: str,
) -> dict[str, Any]:
    """The JSON-ready report (fields in the module docstring, less ``config``)."""
    return {
        "circuit": result.circuit,
        "source": source,
        "data": data,
        "n_sequences": result.n_sequences,
        "n_predictions": result.n_predictions,
        "n_tokens": result.n_tokens,
        "ablation": ABLATION,
        "baseline": BASELINE,
        "ce_clean": result.ce_clean,
        "ce_ablated": result.ce_ablated,
        "kl_clean_ablated": result.kl,
        "metric": result.metric,
        "faithfulness": _finite_or_none(result.faithfulness),
        "completeness": _finite_or_none(result.completeness),
        "next_token": next_token_changes(result, tokenizer, logit_tokens),
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_report(data: dict[str, Any], path: Path) -> Path:
    """Write `data` as JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(
                data, file, indent=1, ensure_ascii=False, allow_nan=False, default=str
            )
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
    return path


def format_report(data: dict[str, Any]) -> str:
    """The report as researchers read it (from `report_data`'s dict)."""
    circuit = "; ".join(f"{key}.{dims}" for key, dims in data["circuit"].items())
    lines = [
        f"Circuit ({sum(map(len, data['circuit'].values()))} features, from {data['source']}): {circuit}",
        (
            f"Data: {data['data']} ({data['n_sequences']} sequences, "
            f"{data['n_tokens']} tokens, {data['n_predictions']} next-token predictions)"
        ),
        f"Ablation: {data['ablation']}",
        "",
        f"Next-token probabilities after the last token (mean over {data['n_sequences']} sequences):",
    ]
    titles = {
        "clean_top": "base (clean) top tokens",
        "increases": "largest increases",
        "decreases": "largest decreases",
        "ablated_top": "altered (ablated) top tokens",
    }
    for name, title in titles.items():
        lines.append(f"  {title}:" + ("" if data["next_token"][name] else " none"))
        lines += [
            f"    {row['token']!r:>16}  {row['clean']:.4f} -> {row['ablated']:.4f}  ({row['change']:+.4f})"
            for row in data["next_token"][name]
        ]
    metric = data["metric"]
    lines += [
        "",
        (
            f"Mean cross-entropy: clean {data['ce_clean']:.4f}, ablated "
            f"{data['ce_ablated']:.4f} ({data['ce_ablated'] - data['ce_clean']:+.4f})"
        ),
        f"Mean KL(clean || ablated) per token: {data['kl_clean_ablated']:.6f}",
        "",
        "Faithfulness and completeness (Marks et al. 2024), m = mean next-token cross-entropy;",
        f"baseline: {data['baseline']}:",
        f"  m(M)     full model                        {metric['full']:.4f}",
        f"  m(C)     circuit only (rest mean-ablated)  {metric['circuit']:.4f}",
        f"  m(M\\C)   circuit mean-ablated              {metric['without_circuit']:.4f}",
        f"  m(empty) every feature mean-ablated        {metric['empty']:.4f}",
        "  faithfulness = (m(C) - m(empty)) / (m(M) - m(empty)) = "
        + _ratio_text(data["faithfulness"], "1: the circuit alone recovers the model"),
        "  completeness = (m(M\\C) - m(empty)) / (m(M) - m(empty)) = "
        + _ratio_text(data["completeness"], "0: the circuit is complete"),
    ]
    return "\n".join(lines)


def _ratio_text(value: float | None, meaning: str) -> str:
    return (
        "undefined (m(M) = m(empty))" if value is None else f"{value:.4f}  ({meaning})"
    )
