"""Graph files: the persistent ``.dot``, its ``.json`` twin, and the image.

The ``.dot`` alone reloads the graph losslessly: besides the drawing it
carries machine-readable attributes (names from the design contract where it
fixes them):

- graph: ``sc_format`` (version) and ``sc_metadata`` (JSON);
- node: ``sc_site``, ``sc_layer``, ``sc_feature`` (absent for error nodes),
  ``activation``, ``attribution``, ``hook``, ``neuronpedia_id`` (each absent
  when None) and ``sc_annotations`` (JSON: contexts, logits, explanation);
- edge: ``effect``.

Floats are written with ``repr`` so that written -> read -> written is
byte-identical. The ``.json`` (same stem) holds the same graph for programs
and is preferred on load when it agrees with the ``.dot``. Every file is
written atomically (temp file in the same folder, then ``os.replace``), and
nothing is replaced until all new files are complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparse_coding.errors import GraphFileError
from sparse_coding.graphs.dot_parser import parse_dot
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.render import RenderOptions, RenderTimeout, dot_source, image_format, render_image

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def json_path_for(dot_path: Path) -> Path:
    """The ``.json`` twin of a ``.dot`` file (same folder and stem)."""
    return Path(dot_path).with_suffix(".json")


# ---------------------------------------------------------------- .json


def graph_to_json(graph: Graph) -> str:
    """The ``.json`` text: nodes and edges in canonical order, floats exact."""
    return json_text(graph.to_dict(), indent=1) + "\n"


def graph_from_json(text: str) -> Graph:
    """Inverse of ``graph_to_json``; raises ValueError/KeyError/TypeError on bad data (inf, nan too)."""
    return Graph.from_dict(json.loads(text, parse_constant=_refuse_constant))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


# ---------------------------------------------------------------- node <-> dot


def _float(value: str | None) -> float | None:
    """A stored number; inf and nan are no effect or activation a run writes (ValueError)."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON that keeps Unicode readable but is always encodable as UTF-8.

    A lone surrogate (a broken token) is written as its ``\\udc80``-style escape,
    which reads back as itself; other values fall back to ``str``.
    """
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, default=str)
    return _SURROGATE_RE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _node_data_attrs(node: Node) -> dict[str, str]:
    attrs = {"sc_site": node.site, "sc_layer": str(node.layer)}
    if node.feature is not None:
        attrs["sc_feature"] = str(node.feature)
    for key in ("activation", "attribution"):
        if (value := getattr(node, key)) is not None:
            attrs[key] = repr(value)
    for key in ("hook", "neuronpedia_id"):
        if (value := getattr(node, key)) is not None:
            attrs[key] = value
    if annotations := node.annotations():
        attrs["sc_annotations"] = json_text(annotations)
    return attrs


def graph_to_dot(graph: Graph, options: RenderOptions | None = None) -> str:
    """The ``.dot`` text: the drawing plus every attribute needed to reload it."""
    return dot_source(
        graph,
        options=options,
        node_attrs={n.id: _node_data_attrs(n) for n in graph.nodes.values()},
        edge_attrs={key: {"effect": repr(e.effect)} for key, e in graph.edges.items()},
        graph_attrs={
            "sc_format": FORMAT_VERSION,
            "sc_metadata": json_text(graph.metadata),
        },
    )


def _node_from_dot(node_id: str, attrs: dict[str, str]) -> Node | None:
    """A graph node from its .dot attributes; None for drawing-only nodes."""
    if "sc_site" not in attrs:
        if node_id.startswith("__") or attrs.get("style") == "invis":
            return None
        return Node.from_id(
            node_id,
            activation=_float(attrs.get("activation")),
            attribution=_float(attrs.get("attribution")),
        )
    data: dict[str, Any] = {
        "id": node_id,
        "site": attrs["sc_site"],
        "layer": attrs["sc_layer"],
        "feature": attrs.get("sc_feature"),
        **{k: attrs.get(k) for k in ("activation", "attribution", "hook", "neuronpedia_id")},
    }
    if "sc_annotations" in attrs:
        data.update(json.loads(attrs["sc_annotations"]))
    return Node.from_dict(data)


def graph_from_dot(text: str) -> Graph:
    """A Graph from .dot text; nodes and edges without data (layout helpers) are skipped.

    Raises:
        ValueError, KeyError, TypeError: the text is not a graph this module reads.
    """
    parsed = parse_dot(text)
    graph = Graph(metadata=dict(json.loads(parsed.graph_attrs.get("sc_metadata", "{}"))))
    for node_id, attrs in parsed.nodes.items():
        if (node := _node_from_dot(node_id, attrs)) is not None:
            graph.add_node(node)
    for (source, target), attrs in parsed.edges.items():
        if "effect" in attrs and source in graph.nodes and target in graph.nodes:
            graph.add_edge(source, target, _float(attrs["effect"]))
    return graph


# ---------------------------------------------------------------- load


def _read_dot(dot_path: Path) -> Graph:
    try:
        return graph_from_dot(dot_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise GraphFileError(
            f"the existing graph file {dot_path} cannot be read ({e}); it was left as it is. "
            f"Move or repair it, or point the graph file setting elsewhere, and run again."
        ) from e


def _read_json(json_path: Path) -> Graph | None:
    try:
        return graph_from_json(json_path.read_text(encoding="utf-8"))
    except (
        OSError,
        UnicodeDecodeError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,  # nesting no graph of ours has
    ) as e:
        logger.warning("ignoring unreadable %s (%s); using its .dot", json_path, e)
        return None


def _same_shape(a: Graph, b: Graph) -> bool:
    return a.nodes.keys() == b.nodes.keys() and a.edges.keys() == b.edges.keys()


def load_graph(dot_path: Path) -> Graph | None:
    """Load a stored graph: the ``.json`` when it agrees with the ``.dot``, else the ``.dot``.

    Either file of the pair may be named: ``graph.json`` loads as ``graph.dot`` does.

    Returns:
        The graph, or None when neither the ``.dot`` nor its ``.json`` exists.

    Raises:
        GraphFileError: the ``.dot`` exists but cannot be read (named in the
            message), or only the ``.json`` exists and cannot be read.
    """
    dot_path = Path(dot_path)
    if dot_path.suffix == ".json":
        dot_path = dot_path.with_suffix(".dot")
    json_path = json_path_for(dot_path)
    if not dot_path.exists():
        if not json_path.exists():
            return None
        logger.warning("%s is missing; loading the graph from %s", dot_path, json_path)
        if (graph := _read_json(json_path)) is None:
            raise GraphFileError(
                f"the existing graph file {json_path} cannot be read and {dot_path} is missing"
            )
        return graph
    from_dot = _read_dot(dot_path)
    from_json = _read_json(json_path) if json_path.exists() else None
    if from_json is None:
        return from_dot
    if _same_shape(from_dot, from_json):
        return from_json
    logger.warning("%s and %s disagree (edited by hand?); using the .dot", dot_path, json_path)
    return from_dot


# ---------------------------------------------------------------- save


@contextlib.contextmanager
def _temp_files(paths: list[Path]) -> Iterator[list[Path]]:
    """One temp path beside each target; whatever is left at exit is removed."""
    temps = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _commit(temp: Path, target: Path) -> None:
    """Atomic replace; the new file keeps ordinary permissions (mkstemp makes 0600)."""
    os.chmod(temp, 0o644)
    os.replace(temp, target)


def _render_with_fallback(
    graph: Graph,
    temp_dot: Path,
    temp_image: Path,
    fmt: str,
    options: RenderOptions,
    timeout_s: float,
) -> None:
    """Render; if dot runs out of time, redraw with compact labels once."""
    try:
        render_image(temp_dot, temp_image, fmt=fmt, timeout_s=timeout_s)
    except RenderTimeout:
        if options.max_full_nodes == 0:
            raise
        logger.warning("dot timed out after %.0f s; redrawing with compact labels", timeout_s)
        compact = dataclasses.replace(
            options,
            max_full_nodes=0,
            max_label_cells=0,
            max_spline_edges=0,
            fast_layout_nodes=0,
        )
        _write_synced(temp_dot, graph_to_dot(graph, compact))
        render_image(temp_dot, temp_image, fmt=fmt, timeout_s=timeout_s)


def save_graph(
    graph: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Write the ``.dot``, its ``.json`` and the image (svg/png by extension).

    All files are written to temp files first and only then renamed over the
    old ones, so a failure part-way leaves the previous files untouched.

    Raises:
        GraphFileError: an unknown image extension (nothing written), or dot
            failed (the .dot and .json are saved, the old image is kept).
    """
    dot_path = Path(dot_path)
    options = options or RenderOptions()
    fmt = image_format(Path(image_path)) if image_path is not None else None
    if fmt is not None and shutil.which("dot") is None:
        logger.warning(
            "Graphviz 'dot' is not installed (Debian: apt-get install graphviz; macOS: brew "
            "install graphviz): writing %s and its .json without the image %s",
            dot_path,
            image_path,
        )
        fmt, image_path = None, None
    dot_text, json_text = graph_to_dot(graph, options), graph_to_json(graph)
    targets = [dot_path, json_path_for(dot_path)] + ([Path(image_path)] if image_path is not None else [])
    with _temp_files(targets) as temps:
        _write_synced(temps[0], dot_text)
        _write_synced(temps[1], json_text)
        try:
            if fmt is not None:
                _render_with_fallback(graph, temps[0], temps[2], fmt, options, timeout_s)
        except GraphFileError as e:
            # The run's data is complete and valid: keep it, keep the old image.
            _commit(temps[0], targets[0])
            _commit(temps[1], targets[1])
            raise GraphFileError(
                f"{e}; {dot_path} and its .json were saved, the image {image_path} was not updated"
            ) from e
        for temp, target in zip(temps, targets, strict=True):
            _commit(temp, target)
    logger.info(
        "saved graph (%d nodes, %d edges) to %s",
        len(graph.nodes),
        len(graph.edges),
        dot_path,
    )


def update_graph_files(
    new: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
) -> Graph:
    """Merge a new run's graph into the stored one and save; returns the merged graph.

    Raises:
        GraphFileError: the stored ``.dot`` is unreadable (it is not
            overwritten) or the files cannot be written.
    """
    merged = load_graph(dot_path)
    if merged is None:
        merged = Graph()
    merged.merge(new)
    save_graph(merged, dot_path, image_path, options=options, timeout_s=timeout_s)
    return merged
