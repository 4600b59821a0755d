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

from transformers import PreTrainedTokenizerBase

from sparse_coding.algorithms.validation import Circuit, check_circuit, validate_circuit
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.nodes import parse_node_id, parse_site_key, site_key
from sparse_coding.phases import PhaseTimer
from sparse_coding.pipelines.inputs import config_batches
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.val_report import format_report, report_data, write_report
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)


def run_val(config: Config, phases: PhaseTimer | None = None, *, from_graph: Path | None = None) -> str:
    """Validate the circuit of `from_graph` (else VALIDATION_DIMS_PINNED); returns the printed report."""
    phases = phases or PhaseTimer()
    circuit, circuit_errors, source = circuit_and_source(config, from_graph)
    spliced, tokenizer = load_circuit_model(
        config, circuit, circuit_errors=circuit_errors, source=source, phases=phases
    )
    batches = config_batches(
        config, tokenizer, device=spliced.device, context_len=spliced.model.config.n_positions
    )
    with phases.phase("compute: validation"):
        result = validate_circuit(
            spliced, batches, circuit=circuit, circuit_errors=circuit_errors, errors=config.VALIDATION_ERRORS
        )
    data = report_data(
        result,
        tokenizer,
        logit_tokens=config.LOGIT_TOKENS,
        source=source,
        data=f"DATASET {config.DATASET!r}" if config.DATASET else f"PROMPT {config.PROMPT!r}",
    )
    path = config.model_data_dir(config.MODEL_DIR) / "validation.json"
    write_report(data | {"config": config.to_metadata()}, path)
    return f"{format_report(data)}\n\nWrote {path}"


def circuit_from_config(config: Config) -> Circuit:
    """VALIDATION_DIMS_PINNED as site key -> sorted, distinct feature indices."""
    if not config.validation_dims:
        raise ConfigError(
            "VALIDATION_DIMS_PINNED is unset; pin the circuit to validate, e.g. "
            "{9: [331, 12], 'attn_10': [5]}, or pass --from-graph PATH"
        )
    pins = config.validation_dims.items()
    return {site_key(*key): sorted(set(dims)) for key, dims in pins}


def circuit_from_graph(graph: Graph, path: Path) -> Circuit:
    """The feature nodes of a pipe.py/fast.py graph; error and other nodes skipped."""
    circuit: Circuit = {}
    for node_id in graph.nodes:
        try:
            site, layer, feature = parse_node_id(node_id)
        except ValueError:  # e.g. a logit node
            continue
        if feature is not None:
            circuit.setdefault(site_key(site, layer), []).append(feature)
    n_features = sum(map(len, circuit.values()))
    if not n_features:
        raise GraphFileError(f"graph file {path} has no feature nodes to validate")
    skipped = len(graph.nodes) - n_features
    logger.info("%s: %d feature nodes, %d others skipped", path, n_features, skipped)
    return {key: sorted(dims) for key, dims in sorted(circuit.items())}


def read_graph(path: Path) -> Graph:
    """A pipe.py/fast.py graph from its ``.json`` or ``.dot`` file."""
    if path.suffix not in (".json", ".dot"):
        raise GraphFileError(f"graph file {path} must end in .json or .dot")
    graph = load_graph(path) if path.is_file() else None
    if graph is None:
        raise GraphFileError(f"graph file {path} does not exist")
    return graph


def error_nodes_from_graph(graph: Graph) -> list[str]:
    """Site keys of a graph's error nodes (``mlp_error_7`` -> ``mlp_7``): the circuit's error terms."""
    keys = set()
    for node_id in graph.nodes:
        try:
            site, layer, feature = parse_node_id(node_id)
        except ValueError:  # e.g. a logit node
            continue
        if feature is None:
            keys.add(site_key(site, layer))
    return sorted(keys)


def circuit_and_source(config: Config, graph: Path | None) -> tuple[Circuit, list[str], str]:
    """The circuit of `graph` if given (features, error nodes), else of VALIDATION_DIMS_PINNED; its source."""
    if graph is None:
        return circuit_from_config(config), [], "VALIDATION_DIMS_PINNED"
    read = read_graph(graph)
    return circuit_from_graph(read, graph), error_nodes_from_graph(read), f"graph file {graph}"


def load_circuit_model(
    config: Config,
    circuit: Circuit,
    *,
    circuit_errors: Collection[str] = (),
    source: str = "VALIDATION_DIMS_PINNED",
    phases: PhaseTimer | None = None,
) -> tuple[SplicedModel, PreTrainedTokenizerBase]:
    """MODEL_DIR with every configured SAE site of ACTS_LAYERS_SLICE spliced, checked against the circuit.

    Args:
        circuit_errors: site keys of the circuit's error nodes.
        source: where the circuit came from, named in errors.

    Raises:
        ConfigError: a pinned site has no SAE source, lies outside
            ACTS_LAYERS_SLICE, or pins an index beyond its SAE's width.
    """
    pairs = [parse_site_key(key) for key in [*circuit, *circuit_errors]]
    unset = [
        f"{site.upper()}_SAES for {site_key(site, layer)!r}"
        for site, layer in pairs
        if site not in config.sae_sources
    ]
    if unset:
        raise ConfigError(f"{source} pins sites whose SAE key is unset: {', '.join(unset)}")
    spliced, tokenizer = load_spliced_model(config, phases=phases)
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
