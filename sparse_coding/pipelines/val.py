"""val.py's run: the circuit from the config or a graph file, its SAEs, the report.

VALIDATION_DIMS_PINNED or a pipe.py/fast.py graph file becomes a `Circuit`
(site key -> sorted feature indices, ``{"resid_3": [331]}``), with a graph's
error nodes as site keys beside it; the model is loaded with every SAE site
of ACTS_LAYERS_SLICE (Marks et al.'s M); `validate_circuit`
(`sparse_coding.algorithms.validation`, which defines the measures) runs over
DATASET or PROMPT; the report is printed and written to
DATA_DIR/<model>/validation.json.
"""

import logging
from collections.abc import Collection
from pathlib import Path

from sparse_coding.algorithms.validation import Circuit, check_circuit, feature_means, validate_circuit
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.nodes import parse_node_id, parse_site_key, site_key
from sparse_coding.phases import PhaseTimer
from sparse_coding.pipelines.inputs import config_batches, interpreted_texts
from sparse_coding.pipelines.loading import check_sources, load_spliced_model, settled
from sparse_coding.pipelines.val_pairs import format_pairs_report, pairs_report
from sparse_coding.pipelines.val_report import format_report, report_data, write_report
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_val(
    config: Config,
    phases: PhaseTimer | None = None,
    *,
    from_graph: Path | None = None,
    run: str | None = None,
) -> str:
    """Validate the circuit of `from_graph` (its run `run`, default all) or VALIDATION_DIMS_PINNED.

    Returns:
        The printed report.
    """
    phases = phases or PhaseTimer()
    circuit, circuit_errors, source = circuit_and_source(config, from_graph, run)
    spliced, tokenizer = load_circuit_model(
        config, circuit, circuit_errors=circuit_errors, source=source, phases=phases
    )
    config = settled(config, spliced)
    batches = list(
        config_batches(
            config,
            tokenizer,
            device=spliced.device,
            context_len=spliced.model.config.n_positions,
            texts=interpreted_texts(config),
        )
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
    path = config.model_data_dir(config.MODEL_DIR) / "validation.json"
    write_report(data | {"pairs": pairs, "config": config.to_metadata()}, path)
    pairs_text = "" if pairs is None else f"\n{format_pairs_report(pairs)}"
    return f"{format_report(data)}{pairs_text}\n\nWrote {path}"


def circuit_from_config(config: Config) -> Circuit:
    """VALIDATION_DIMS_PINNED as site key -> sorted, distinct feature indices."""
    if not config.validation_dims:
        raise ConfigError(
            "VALIDATION_DIMS_PINNED is unset; pin the circuit to validate, e.g. "
            "{9: [331, 12], 'attn_10': [5]}, or pass --from-graph PATH"
        )
    pins = config.validation_dims.items()
    return {site_key(*key): sorted(set(dims)) for key, dims in pins}


def circuit_from_graph(graph: Graph, path: Path, run: str | None = None) -> Circuit:
    """The feature nodes of a pipe.py/fast.py graph (of one run, if given); error and other nodes skipped.

    Raises:
        GraphFileError: the graph has no such run, or no feature node to validate.
    """
    node_ids = graph.nodes.keys() if run is None else graph.run_node_ids(_known_run(graph, path, run))
    circuit: Circuit = {}
    for node_id in node_ids:
        try:
            site, layer, feature = parse_node_id(node_id)
        except ValueError:  # e.g. a logit node
            continue
        if feature is not None:
            circuit.setdefault(site_key(site, layer), []).append(feature)
    n_features = sum(map(len, circuit.values()))
    if not n_features:
        raise GraphFileError(f"graph file {path} has no feature nodes to validate ({runs_text(graph, run)})")
    skipped = len(node_ids) - n_features
    logger.info(
        "%s (%s): %d feature nodes, %d others skipped", path, runs_text(graph, run), n_features, skipped
    )
    return {key: sorted(dims) for key, dims in sorted(circuit.items())}


def _known_run(graph: Graph, path: Path, run: str) -> str:
    ids = [str(record.get("id")) for record in graph.runs]
    if run not in ids:
        raise GraphFileError(
            f"graph file {path} has no run {run!r}; its runs are: {', '.join(ids) or 'none'}"
        )
    return run


def runs_text(graph: Graph, run: str | None) -> str:
    """Which runs' nodes are validated, in words: 'run X' or 'all 3 runs: X, Y, Z'."""
    if run is not None:
        return f"run {run}"
    ids = [str(record.get("id")) for record in graph.runs]
    return f"all {len(ids)} runs: {', '.join(ids)}" if ids else "all its nodes"


def read_graph(path: Path) -> Graph:
    """A pipe.py/fast.py graph from its ``.json`` or ``.dot`` file."""
    if path.suffix not in (".json", ".dot"):
        raise GraphFileError(f"graph file {path} must end in .json or .dot")
    graph = load_graph(path) if path.is_file() else None
    if graph is None:
        raise GraphFileError(f"graph file {path} does not exist")
    return graph


def error_nodes_from_graph(graph: Graph, run: str | None = None) -> list[str]:
    """Site keys of a graph's error nodes (``mlp_error_7`` -> ``mlp_7``), of one run if given."""
    node_ids = graph.nodes.keys() if run is None else graph.run_node_ids(run)
    keys = set()
    for node_id in node_ids:
        try:
            site, layer, feature = parse_node_id(node_id)
        except ValueError:  # e.g. a logit node
            continue
        if feature is None:
            keys.add(site_key(site, layer))
    return sorted(keys)


def circuit_and_source(
    config: Config, graph: Path | None, run: str | None = None
) -> tuple[Circuit, list[str], str]:
    """The circuit of `graph` (of its run `run`, default all runs) if given, else of VALIDATION_DIMS_PINNED.

    Returns:
        The circuit's features, its error nodes' site keys, and where it came
        from in words (which runs, for a graph).
    """
    if graph is None:
        if run is not None:
            raise ConfigError("--run picks a run of a graph file; give the graph with --from-graph PATH")
        return circuit_from_config(config), [], "VALIDATION_DIMS_PINNED"
    stored = read_graph(graph)
    circuit = circuit_from_graph(stored, graph, run)
    return circuit, error_nodes_from_graph(stored, run), f"graph file {graph} ({runs_text(stored, run)})"


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
    pairs = [parse_site_key(key) for key in [*circuit, *circuit_errors]]
    check_sources(config, pairs, source)
    spliced, tokenizer = load_spliced_model(config, phases=phases, script="val")
    check_within_slice(config, pairs, spliced.n_layers, source)
    check_circuit(spliced, circuit, source=source, circuit_errors=circuit_errors)
    return spliced, tokenizer


def check_within_slice(config: Config, pairs: list[tuple[str, int]], n_layers: int, source: str) -> None:
    """Every pinned layer lies within ACTS_LAYERS_SLICE."""
    layers = config.layer_range(n_layers)
    outside = [repr(site_key(site, layer)) for site, layer in pairs if layer not in layers]
    if outside:
        raise ConfigError(
            f"{source} pins {', '.join(outside)}, outside ACTS_LAYERS_SLICE "
            f"{config.ACTS_LAYERS_SLICE!r} (layers {layers.start}..{layers.stop - 1}); "
            f"widen the slice or drop them"
        )
