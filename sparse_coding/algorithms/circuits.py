"""The circuit val.py validates: where it comes from, and the model it needs.

Kept apart from `validation` (the ablation maths) because reading a circuit
is file and config handling: VALIDATION_DIMS_PINNED or a pipe.py/fast.py
graph file becomes a `Circuit`, site key -> sorted feature indices
(``{"resid_3": [331]}``), with a graph's error nodes as site keys beside it,
and `load_circuit_model` splices every SAE site of ACTS_LAYERS_SLICE (Marks et
al.'s M), checking every pin against the config and the SAEs' widths.
"""

import logging
from collections.abc import Collection
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.models.loading import load_spliced_model
from sparse_coding.nodes import parse_node_id, parse_site_key, site_key
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)

Circuit = dict[str, list[int]]  # site key ("attn_7") -> feature indices


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
) -> tuple[SplicedModel, PreTrainedTokenizerBase]:
    """MODEL_DIR with every configured SAE site of ACTS_LAYERS_SLICE spliced, checked against the circuit.

    Args:
        circuit_errors: site keys of the circuit's error nodes.
        source: where the circuit came from, named in errors.

    Raises:
        ConfigError: a pinned site has no SAE source, lies outside
            ACTS_LAYERS_SLICE, or pins an index beyond its SAE's width.
        SAELoadError: a pinned site's SAE reads another site or layer.
        SparseCodingError: the SAEs would not fit the device.
    """
    keys = {key: parse_site_key(key) for key in [*circuit, *circuit_errors]}
    unset = [
        f"{site.upper()}_SAES for {key!r}"
        for key, (site, _) in keys.items()
        if site not in config.sae_sources
    ]
    if unset:
        raise ConfigError(f"{source} pins sites whose SAE key is unset: {', '.join(unset)}")
    spliced, tokenizer = load_spliced_model(config)
    layers = config.layer_range(spliced.n_layers)
    outside = [repr(key) for key, (_, layer) in keys.items() if layer not in layers]
    if outside:
        raise ConfigError(
            f"{source} pins {', '.join(outside)}, outside ACTS_LAYERS_SLICE "
            f"{config.ACTS_LAYERS_SLICE!r} (layers {layers.start}..{layers.stop - 1}); "
            f"widen the slice or drop them"
        )
    check_circuit(spliced, circuit, source=source, circuit_errors=circuit_errors)
    return spliced, tokenizer


def check_circuit(
    spliced: SplicedModel, circuit: Circuit, *, source: str, circuit_errors: Collection[str] = ()
) -> None:
    """Every pinned site (and error node's site) is spliced and every index lies within its SAE's width."""
    missing = [repr(key) for key in [*circuit, *circuit_errors] if key not in spliced.by_key]
    if missing:
        raise ConfigError(
            f"{source} pins {', '.join(missing)}, which no spliced SAE reads; spliced: "
            f"{', '.join(spliced.by_key) or 'none'} (does an SAE read another hook?)"
        )
    widths = {key: spliced.by_key[key].sae.d_sae for key in circuit}
    bad = [
        f"{key!r} index {index} (width {widths[key]}, valid 0..{widths[key] - 1})"
        for key, dims in circuit.items()
        for index in dims
        if not 0 <= index < widths[key]
    ]
    if bad:
        raise ConfigError(f"{source} pins features beyond their SAE: {'; '.join(bad)}")
