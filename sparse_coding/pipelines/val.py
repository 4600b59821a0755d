"""val.py's run: the circuit from the config or a graph file (`pipelines.circuit`), its SAEs, the report.

The model is loaded with every SAE site of ACTS_LAYERS_SLICE (Marks et al.'s
M), or, for a trace.py graph's transcoder features, with every TRANSCODERS
layer (M is then the replacement model with its error terms: the model
itself); `sparse_coding.algorithms.validation` defines the measures.
"""

import logging
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sparse_coding.algorithms.feature_means import Circuit, SiteMeans, feature_means
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.algorithms.validation import check_circuit, pair_faithfulness, validate_circuit
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.graphs.conventions import METRIC_TEXT, sentences
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.nodes import parse_site_key
from sparse_coding.pipelines.circuit import (
    check_pins_before_loading,
    check_within_slice,
    circuit_and_source,
    transcoder_keys,
)
from sparse_coding.pipelines.fast import config_example_batches, examples_source
from sparse_coding.pipelines.inputs import (
    BatchStream,
    config_batches,
    interpreted_texts,
    warn_unknown_prompts,
)
from sparse_coding.pipelines.loading import check_sources, load_spliced_model, settled
from sparse_coding.pipelines.publish import log_config_run
from sparse_coding.pipelines.resume import file_input, run_checkpoint
from sparse_coding.pipelines.val_report import format_pairs_report, format_report, report_data, write_report
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_val(
    config: Config,
    phases: PhaseTimer | None = None,
    *,
    from_graph: Path | None = None,
    run: str | None = None,
    resume: bool = False,
) -> str:
    """Validate the circuit of `from_graph` (its run `run`, default all) or VALIDATION_DIMS_PINNED;
    returns the printed report.

    Under torchrun the ranks share the passes over the data and rank 0 writes
    the report (the other ranks return ""); `resume` continues the passes of a
    killed run from their checkpoint (`sparse_coding.runtime.checkpoints`).
    """
    phases = phases or PhaseTimer()
    circuit, circuit_errors, source = circuit_and_source(config, from_graph, run)
    spliced, tokenizer = load_circuit_model(
        config, circuit, circuit_errors=circuit_errors, source=source, phases=phases
    )
    config = settled(config, spliced)
    warn_unknown_prompts(config, tokenizer)
    inputs = {"from_graph": file_input(from_graph), "run": run}
    with run_checkpoint(config, "val.py", spliced, resume=resume, inputs=inputs):
        return _validated(config, phases, spliced, tokenizer, (circuit, circuit_errors, source), from_graph)


def _validated(
    config: Config,
    phases: PhaseTimer,
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    circuit_of: tuple[Circuit, list[str], str],
    from_graph: Path | None,
) -> str:
    """The validation passes and the report (`run_val`); rank 0 writes it."""
    circuit, circuit_errors, source = circuit_of
    interpreted_texts(config)  # logs which text is explained, once
    batches = BatchStream(  # read again for each pass: memory does not grow with the dataset
        lambda: config_batches(config, tokenizer, spliced.model, interpreted_texts(config, announce=False))
    )
    with phases.phase("compute: validation"):
        means = feature_means(spliced, batches, spliced.by_key)
        result = validate_circuit(
            spliced,
            batches,
            circuit=circuit,
            circuit_errors=circuit_errors,
            errors=config.VALIDATION_ERRORS,
            means=means,
        )
        pairs = pairs_report(
            config,
            spliced,
            tokenizer,
            circuit=circuit,
            circuit_errors=circuit_errors,
            means=means,
            graph=from_graph,
        )
    data = report_data(
        result,
        tokenizer,
        logit_tokens=config.LOGIT_TOKENS,
        source=source,
        data=f"DATASET {config.DATASET!r}"
        if config.interp_source == "dataset"
        else f"PROMPT {config.PROMPT!r}",
    )
    if not distributed.is_main():
        return ""
    path = config.model_data_dir(config.MODEL_DIR) / "validation.json"
    metadata = {"pairs": pairs, "config": config.to_metadata(), "world_size": distributed.world_size()}
    write_report(data | metadata, path)
    numbers = {"faithfulness": result.faithfulness, "completeness": result.completeness, "kl": result.kl}
    timings = {f"seconds/{name}": value for name, value in phases.metadata().items()}
    log_config_run(config, script="val.py", summary=numbers | timings, files=[path], out_dir=path.parent)
    pairs_text = "" if pairs is None else f"\n{format_pairs_report(pairs)}"
    return f"{format_report(data)}{pairs_text}\n\nWrote {path}"


def load_circuit_model(
    config: Config,
    circuit: Circuit,
    *,
    circuit_errors: Collection[str] = (),
    source: str = "VALIDATION_DIMS_PINNED",
    phases: PhaseTimer | None = None,
) -> tuple[SplicedModel, Tokenizer]:
    """MODEL_DIR with every configured SAE site of ACTS_LAYERS_SLICE spliced, checked against the circuit.

    Args:
        circuit_errors: site keys of the circuit's error nodes.
        source: where the circuit came from, named in errors.

    Raises:
        ConfigError: a pinned site has no SAE source, lies outside
            ACTS_LAYERS_SLICE, or pins an index beyond its SAE's width.
    """
    if transcoder_keys(circuit):
        return load_transcoder_circuit_model(config, circuit, source=source, phases=phases)
    pairs = [parse_site_key(key) for key in [*circuit, *circuit_errors]]
    check_sources(config, pairs, source)
    check_pins_before_loading(config, [*circuit, *circuit_errors], source)
    spliced, tokenizer = load_spliced_model(config, phases=phases, script="val")
    check_within_slice(config, pairs, config.layer_range(spliced.n_layers), source)
    check_circuit(spliced, circuit, source=source, circuit_errors=circuit_errors)
    return spliced, tokenizer


def load_transcoder_circuit_model(
    config: Config, circuit: Circuit, *, source: str, phases: PhaseTimer | None = None
) -> tuple[SplicedModel, Tokenizer]:
    """MODEL_DIR with every TRANSCODERS layer spliced (M of a trace.py circuit), checked against it.

    Raises:
        ConfigError: the circuit mixes SAE and transcoder features, VALIDATION_ERRORS is not
            ``keep``, TRANSCODERS is unset, or a feature is not one of its layers' or widths'.
    """
    sae_keys = [key for key in circuit if key not in transcoder_keys(circuit)]
    if sae_keys:
        raise ConfigError(
            f"{source} mixes SAE features ({', '.join(sae_keys)}) with transcoder features "
            f"({', '.join(transcoder_keys(circuit))}); validate each kind of circuit on its own"
        )
    if config.VALIDATION_ERRORS != "keep":
        raise ConfigError(
            f"VALIDATION_ERRORS is {config.VALIDATION_ERRORS!r}, but {source} is a transcoder circuit, whose "
            f"MLP error terms val.py keeps in every run; set VALIDATION_ERRORS: keep"
        )
    spliced, tokenizer = load_spliced_model(config, pairs=[], phases=phases, script="val", transcoders=True)
    check_circuit(spliced, circuit, source=source)
    return spliced, tokenizer


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
    """Faithfulness on the config's fast.py examples, as report data; None when there are none to use.

    The metric is the graph's when it records one, else METRIC; the ablation is
    val.py's mean ablation at the circuit's sites (the report says so), not the
    graph's BASELINE, since faithfulness compares a circuit against ablating the rest.
    """
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
    sign = metric.reported_sign  # logprob: m shown as log p, the loss being -log p
    return result._asdict() | {
        "full": sign * result.full,
        "circuit": sign * result.circuit,
        "empty": sign * result.empty,
        "reported_as": "log p" if sign < 0 else "a loss",
        "faithfulness": faithfulness,
        "examples": examples_source(config),
        "ablation": sentences("val.py")["baseline"],
        "metric_meaning": METRIC_TEXT[metric.name],
    }
