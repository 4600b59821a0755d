"""val.py on fast.py's examples: the circuit's faithfulness with the graph's own metric.

Runs when the config names fast.py examples (PAIRS_FILE or PATCH_PROMPT) or
the circuit comes from a fast.py graph (its metadata records `metric`). The
metric is the graph's when it has one, else METRIC; the ablation is val.py's
mean ablation at the circuit's sites (the report says so), not the graph's
BASELINE, since faithfulness compares a circuit against ablating the rest.
"""

import logging
import math
from pathlib import Path
from typing import Any

from sparse_coding.algorithms.feature_means import Circuit, SiteMeans
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.algorithms.validation import pair_faithfulness
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.graphs.conventions import METRIC_TEXT, sentences
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.pipelines.fast import config_example_batches, examples_source
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def graph_metric(path: Path | None) -> str | None:
    """The METRIC a fast.py graph file was built with (its latest run), or None."""
    if path is None:
        return None
    graph = load_graph(path)
    metadata = graph.metadata if graph is not None else {}
    runs = metadata.get("runs") or [metadata]
    return runs[-1].get("metric")


def pairs_report(
    config: Config,
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    *,
    circuit: Circuit,
    circuit_errors: list[str],
    means: SiteMeans,
    graph: Path | None,
) -> dict[str, Any] | None:
    """Faithfulness on the config's fast.py examples, as report data; None when there are none to use."""
    name = graph_metric(graph)
    if name is None and config.PAIRS_FILE is None and config.PATCH_PROMPT is None:
        return None
    if name is not None and name != config.METRIC:
        logger.info("Using the graph's metric %s (METRIC is %s)", name, config.METRIC)
    batches = config_example_batches(config, tokenizer, spliced.model)
    metric = METRICS[name or config.METRIC]
    if metric.needs_patch_answer and batches[0].patch_answers is None:  # the graph's metric, not METRIC's
        raise ConfigError(
            f"the graph's metric {metric.name} compares the answer with a patch answer; set PATCH_PROMPT "
            f"or PAIRS_FILE to validate on fast.py's examples"
        )
    result = pair_faithfulness(
        spliced,
        batches,
        circuit=circuit,
        circuit_errors=circuit_errors,
        errors=config.VALIDATION_ERRORS,
        metric=metric,
        means=means,
    )
    faithfulness = result.faithfulness if math.isfinite(result.faithfulness) else None  # strict JSON
    return result._asdict() | {
        "faithfulness": faithfulness,
        "examples": examples_source(config),
        "ablation": sentences("val.py")["baseline"],
        "metric_meaning": METRIC_TEXT[metric.name],
    }


def format_pairs_report(data: dict[str, Any]) -> str:
    """The line val.py prints for `pairs_report`'s data."""
    ratio = "undefined (m(M) = m(empty))" if data["faithfulness"] is None else f"{data['faithfulness']:.3f}"
    return (
        f"On fast.py's examples ({data['examples']}, {data['n_examples']}), metric {data['metric']} "
        f"(a loss): m(M) {data['full']:.4f}, m(C) {data['circuit']:.4f}, m(empty) {data['empty']:.4f}; "
        f"faithfulness {ratio} ({data['ablation']})"
    )
