"""val.py's circuit and the settings it is validated with, known before anything loads (no torch).

The circuit is VALIDATION_DIMS_PINNED or the feature nodes of a pipe.py /
fast.py / trace.py graph file (``--from-graph``, one run's with ``--run``; a
positioned node ``resid_9.331@7`` counts as its feature at every position), as
site key -> sorted feature indices (``{"resid_3": [331]}``, ``{"tc_3": [12]}``),
with a graph's error nodes beside it. A trace.py graph's error nodes are its
transcoders' MLP error terms, which val.py keeps in every run, so they join no
circuit.

Without ``--config``, val.py validates a graph with its latest run's model,
SAEs, slice and text (the hardware keys excepted); a ``--config`` whose model
or SAE sources differ from the graph's stops it, since the feature indices
would name other features.
"""

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from sparse_coding.config import Config, config_from_dict
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.nodes import TRANSCODER_KINDS, parse_positioned_id, parse_site_key, site_key
from sparse_coding.pipelines.preflight import layers_before_loading

logger = logging.getLogger(__name__)

Circuit = dict[str, list[int]]  # site key ("attn_7") -> sorted feature indices
SOURCE_KEYS = ("MODEL_DIR", "RESID_SAES", "ATTN_SAES", "MLP_SAES", "TRANSCODERS")
HARDWARE_KEYS = ("DEVICE", "DTYPE", "SAE_DTYPE")


def circuit_from_config(config: Config) -> Circuit:
    """VALIDATION_DIMS_PINNED as site key -> sorted, distinct feature indices."""
    if not config.validation_dims:
        raise ConfigError(
            "VALIDATION_DIMS_PINNED is unset; pin the circuit to validate, e.g. "
            "{9: [331, 12], 'attn_10': [5]}, or pass --from-graph PATH"
        )
    return {site_key(*key): sorted(set(dims)) for key, dims in config.validation_dims.items()}


def circuit_from_graph(graph: Graph, path: Path, run: str | None = None) -> Circuit:
    """The feature nodes of a pipe.py/fast.py graph (of one run, if given); error and other nodes skipped."""
    circuit: Circuit = {}
    positioned = 0
    for key, feature, position in _parsed_nodes(graph, run if run is None else _known_run(graph, path, run)):
        if feature is not None:
            circuit.setdefault(key, []).append(feature)
            positioned += position is not None
    if positioned:
        logger.info(
            "%s: %d positioned feature nodes (id@position) count as their feature at every position; "
            "val.py ablates features, not positions",
            path,
            positioned,
        )
    circuit = {key: sorted(set(dims)) for key, dims in sorted(circuit.items())}
    n_features = sum(map(len, circuit.values()))
    if not n_features:
        raise GraphFileError(f"graph file {path} has no feature nodes to validate ({runs_text(graph, run)})")
    logger.info("%s (%s): %d features to validate", path, runs_text(graph, run), n_features)
    return circuit


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
    return sorted({key for key, feature, _ in _parsed_nodes(graph, run) if feature is None})


def _parsed_nodes(graph: Graph, run: str | None) -> Iterator[tuple[str, int | None, int | None]]:
    """(site key, feature (None: an error node), position) of each SAE, transcoder or error node
    of `graph` (of one run, if given)."""
    for node_id in graph.nodes.keys() if run is None else graph.run_node_ids(run):
        try:
            (site, layer, feature), position = parse_positioned_id(node_id)
        except ValueError:  # e.g. a logit node
            continue
        yield site_key(site, layer), feature, position


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
    errors = error_nodes_from_graph(stored, run)
    if transcoder_keys(circuit) and errors:
        logger.info("%s: its %d MLP error node(s) are transcoder error terms, kept in every run", graph,
                    len(errors))  # fmt: skip
        errors = []
    return circuit, errors, f"graph file {graph} ({runs_text(stored, run)})"


def transcoder_keys(keys: Iterable[str]) -> list[str]:
    """The keys of transcoder layers (``tc_3``, ``clt_3``) among circuit site keys."""
    return [key for key in keys if key.split("_", 1)[0] in TRANSCODER_KINDS]


def check_within_slice(
    config: Config, pairs: list[tuple[str, int]], layers: range | None, source: str
) -> None:
    """Every pinned layer lies within ACTS_LAYERS_SLICE's `layers` (None: not known yet, nothing to check)."""
    if layers is None:
        return
    outside = [repr(site_key(site, layer)) for site, layer in pairs if layer not in layers]
    if outside:
        raise ConfigError(
            f"{source} pins {', '.join(outside)}, outside ACTS_LAYERS_SLICE "
            f"{config.ACTS_LAYERS_SLICE!r} (layers {layers.start}..{layers.stop - 1}); "
            f"widen the slice or drop them"
        )


def check_pins_before_loading(config: Config, keys: list[str], source: str) -> None:
    """The circuit's SAE site keys against the slice, before any model or SAE loads (when decidable);
    transcoder keys are every transcoder layer's, whatever the slice."""
    pairs = [parse_site_key(key) for key in keys if key not in transcoder_keys(keys)]
    check_within_slice(config, pairs, layers_before_loading(config), source)


def config_for_graph(config: Config, path: Path, *, explicit: bool) -> Config:
    """The config a graph is validated with: its latest run's settings unless `explicit` (--config),
    which must name the graph's model and SAE sources."""
    runs = read_graph(path).runs
    recorded = runs[-1].get("config") if runs and isinstance(runs[-1].get("config"), dict) else None
    if recorded is None:
        logger.info("%s records no run settings; validating with the config's model and SAEs", path)
        return config
    if explicit:
        differ = [key for key in SOURCE_KEYS if recorded.get(key) != getattr(config, key)]
        if differ:
            named = "; ".join(
                f"{k}: graph {recorded.get(k)!r}, config {getattr(config, k)!r}" for k in differ
            )
            raise ConfigError(
                f"graph file {path} was made with other sources than the config: {named}. Its feature "
                f"indices name features of those SAEs; drop --config to validate with the graph's settings"
            )
        return config
    settings = {key: value for key, value in recorded.items() if key not in HARDWARE_KEYS}
    ours = {key: getattr(config, key) for key in HARDWARE_KEYS}
    logger.info(
        "No --config: validating with the settings of %s's latest run (model %s, slice %s)",
        path,
        recorded.get("MODEL_DIR"),
        recorded.get("ACTS_LAYERS_SLICE"),
    )
    return config_from_dict(settings | {k: v for k, v in ours.items() if v is not None})
