r"""val.py's report: validation.json and the text researchers read.

Kept apart from `validation` (the maths) because it is presentation: which
tokens to show, how to word the ablation, and the strict-JSON file.

``validation.json`` (`report_data` plus ``config``): ``circuit``, ``source``,
``data``, ``n_sequences``, ``n_predictions`` (N), ``n_tokens`` (real tokens),
``ablation``/``baseline``/``model``/``errors`` (in words: what was ablated
and what held fixed), ``sites`` (every spliced site), ``circuit_errors``, ``ce_clean``, ``ce_ablated``,
``kl_clean_ablated``, ``metric`` (``full``, ``circuit``, ``without_circuit``,
``empty``: m(M), m(C), m(M \ C), m(empty)), ``faithfulness``,
``completeness`` (null when undefined), ``next_token`` (``clean_top``,
``increases``, ``decreases``, ``ablated_top``: rows of ``token``, ``id``,
``clean``, ``ablated``, ``change`` = ablated - clean), ``pairs`` (faithfulness
on fast.py's examples with the graph's metric, `pipelines.val.pairs_report`; null when
not run), ``sign_convention`` (what each quantity's sign means,
`graphs.conventions`), ``config`` (every config key).
"""

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from sparse_coding.algorithms.validation import ValidationResult
from sparse_coding.files import storage
from sparse_coding.graphs.conventions import sentences
from sparse_coding.pipelines.circuit import transcoder_keys
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text


def next_token_changes(
    result: ValidationResult, tokenizer: Tokenizer, k: int
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

    def row(i: Tensor) -> dict[str, Any]:
        token, values = token_text(tokenizer, int(i)), (clean[i], ablated[i], change[i])
        return {"token": token, "id": int(i)} | dict(
            zip(("clean", "ablated", "change"), map(float, values), strict=True)
        )

    return {name: [row(i) for i in ids] for name, ids in picks.items()}


def report_data(
    result: ValidationResult, tokenizer: Tokenizer, *, logit_tokens: int, source: str, data: str
) -> dict[str, Any]:
    """The JSON-ready report: validation.json's fields but ``config``."""
    transcoders = bool(transcoder_keys(result.sites))
    meaning = sentences(
        "val.py", {"VALIDATION_ERRORS": result.errors, "spliced": "transcoders" if transcoders else "saes"}
    )
    spliced = (
        "every transcoder layer spliced (with its error term: the model itself)"
        if transcoders
        else "every SAE site of the slice spliced"
    )
    errors = f"; circuit error nodes: {', '.join(result.circuit_errors)}" if result.circuit_errors else ""
    return {
        "circuit": result.circuit,
        "circuit_errors": result.circuit_errors,
        "sites": result.sites,
        "source": source,
        "data": data,
        "n_sequences": result.n_sequences,
        "n_predictions": result.n_predictions,
        "n_tokens": result.n_tokens,
        "ablation": meaning["ablation"],
        "baseline": meaning["baseline"],
        "model": (
            f"M = the model with {spliced} ({len(result.sites)}: {', '.join(result.sites)}); m(C) and "
            f"m(empty) mean-ablate features at all of them"
        ),
        "errors": meaning["errors"] + errors,
        "ce_clean": result.ce_clean,
        "ce_ablated": result.ce_ablated,
        "kl_clean_ablated": result.kl,
        "metric": result.metric,
        "faithfulness": result.faithfulness if math.isfinite(result.faithfulness) else None,
        "completeness": result.completeness if math.isfinite(result.completeness) else None,
        "next_token": next_token_changes(result, tokenizer, logit_tokens),
        "sign_convention": meaning,
    }


def write_report(data: dict[str, Any], path: Path) -> Path:
    """Write `data` as strict JSON with `storage.write_atomic` (the old report survives any failure)."""
    storage.write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False))
    return path


_TITLES = {
    "clean_top": "base (clean) top tokens",
    "increases": "largest increases (more likely when ablated: the circuit suppressed them)",
    "decreases": "largest decreases (less likely when ablated: the circuit promoted them)",
    "ablated_top": "altered (ablated) top tokens",
}


def format_report(data: dict[str, Any]) -> str:
    """The report as researchers read it, from `report_data`'s dict."""
    n_features = sum(map(len, data["circuit"].values()))
    circuit = "; ".join(f"{key}.{dims}" for key, dims in data["circuit"].items())
    lines = [
        f"Circuit ({n_features} features, from {data['source']}): {circuit}",
        f"Data: {data['data']}",
        f"  {data['n_sequences']} sequence(s), {data['n_tokens']} tokens, "
        + f"{data['n_predictions']} next-token predictions",
        f"Ablation: {data['ablation']}",
        "",
        "Next-token probabilities after the last token (clean -> ablated, change = ablated - clean):",
    ]
    for name, title in _TITLES.items():
        rows = data["next_token"][name]
        lines.append(f"  {title}:" + ("" if rows else " none"))
        lines += [
            f"    {r['token']!r:>16}  {r['clean']:.4f} -> {r['ablated']:.4f}  ({r['change']:+.4f})"
            for r in rows
        ]
    return "\n".join(lines + _metric_lines(data))


def _metric_lines(data: dict[str, Any]) -> list[str]:
    m, ce_change = data["metric"], data["ce_ablated"] - data["ce_clean"]
    return [
        "",
        f"Mean cross-entropy: clean {data['ce_clean']:.4f}, "
        + f"ablated {data['ce_ablated']:.4f} ({ce_change:+.4f})",
        f"Mean KL(clean || ablated) per token: {data['kl_clean_ablated']:.6f}",
        "",
        "Faithfulness and completeness (Marks et al. 2024), m = mean next-token CE;",
        f"baseline: {data['baseline']}",
        f"{data['model']}",
        f"errors: {data['errors']}",
        f"  m(M)      full model                        {m['full']:.4f}",
        f"  m(C)      circuit only (rest mean-ablated)  {m['circuit']:.4f}",
        f"  m(M\\C)    circuit mean-ablated              {m['without_circuit']:.4f}",
        f"  m(empty)  every feature mean-ablated        {m['empty']:.4f}",
        "  faithfulness = (m(C) - m(empty)) / (m(M) - m(empty)) = "
        + _ratio_text(data["faithfulness"], "1: the circuit alone recovers the model"),
        "  completeness = (m(M\\C) - m(empty)) / (m(M) - m(empty)) = "
        + _ratio_text(data["completeness"], "0: the circuit is complete"),
    ]


def _ratio_text(value: float | None, meaning: str) -> str:
    return "undefined, m(M) ~ m(empty)" if value is None else f"{value:.4f}  ({meaning})"


def format_pairs_report(data: dict[str, Any]) -> str:
    """The line val.py prints for `pairs_report`'s data."""
    ratio = "undefined (m(M) = m(empty))" if data["faithfulness"] is None else f"{data['faithfulness']:.3f}"
    return (
        f"On fast.py's examples ({data['examples']}, {data['n_examples']}), metric {data['metric']} "
        f"({data['reported_as']}): m(M) {data['full']:.4f}, m(C) {data['circuit']:.4f}, "
        f"m(empty) {data['empty']:.4f}; "
        f"faithfulness {ratio} ({data['ablation']})"
    )
