"""The circuit val.py validates: where it comes from, and the model it needs.

Kept apart from `validation` (the ablation maths) because reading a circuit
is file and config handling: VALIDATION_DIMS_PINNED or a pipe.py/fast.py
graph file becomes a `Circuit`, site key -> sorted feature indices
(``{"resid_3": [331]}``), and `load_circuit_model` splices exactly the SAEs
of its sites, checking every pin against the config and the SAEs' widths.
"""

import logging
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype
from sparse_coding.models.loading import load_saes
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


def circuit_and_source(config: Config, graph: Path | None, run: str | None = None) -> tuple[Circuit, str]:
    """The circuit of `graph` (of its run `run`, default all runs) if given, else of VALIDATION_DIMS_PINNED.

    Returns:
        The circuit and where it came from, in words (which runs, for a graph).
    """
    if graph is None:
        if run is not None:
            raise ConfigError("--run picks a run of a graph file; give the graph with --from-graph PATH")
        return circuit_from_config(config), "VALIDATION_DIMS_PINNED"
    stored = read_graph(graph)
    return circuit_from_graph(stored, graph, run), f"graph file {graph} ({runs_text(stored, run)})"


def load_circuit_model(
    config: Config, circuit: Circuit, *, source: str = "VALIDATION_DIMS_PINNED"
) -> tuple[SplicedModel, PreTrainedTokenizerBase]:
    """MODEL_DIR with exactly the circuit's SAEs spliced.

    Args:
        source: where the circuit came from, named in errors.

    Raises:
        ConfigError: a pinned site has no SAE source, lies outside
            ACTS_LAYERS_SLICE, or pins an index beyond its SAE's width.
        SAELoadError: a pinned site's SAE reads another site or layer.
        SparseCodingError: the SAEs would not fit the device.
    """
    keys = {key: parse_site_key(key) for key in circuit}
    unset = [
        f"{site.upper()}_SAES for {key!r}"
        for key, (site, _) in keys.items()
        if site not in config.sae_sources
    ]
    if unset:
        raise ConfigError(f"{source} pins sites whose SAE key is unset: {', '.join(unset)}")
    device, dtype = resolve_device(config.DEVICE), resolve_dtype(config.DTYPE)
    model, tokenizer = load_model(config.MODEL_DIR, device, dtype)
    layers = config.layer_range(model.config.n_layer)
    outside = [repr(key) for key, (_, layer) in keys.items() if layer not in layers]
    if outside:
        raise ConfigError(
            f"{source} pins {', '.join(outside)}, outside ACTS_LAYERS_SLICE "
            f"{config.ACTS_LAYERS_SLICE!r} (layers {layers.start}..{layers.stop - 1}); "
            f"widen the slice or drop them"
        )
    saes = load_saes(config, keys.values(), device, resolve_dtype(config.SAE_DTYPE, dtype))
    spliced = SplicedModel(model, saes)
    check_circuit(spliced, circuit, source=source)
    return spliced, tokenizer


def check_circuit(spliced: SplicedModel, circuit: Circuit, *, source: str) -> None:
    """Every pinned site is spliced and every index lies within its SAE's width."""
    missing = [repr(key) for key in circuit if key not in spliced.by_key]
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
