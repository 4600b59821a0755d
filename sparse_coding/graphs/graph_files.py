"""Graph files: the canonical ``.json``, and the ``.dot``, image and page drawn from it.

``<stem>.json`` (beside the ``.dot``) is the graph (`Graph.to_json`); the
``.dot`` (`dot_format`), the image (svg/png by extension, `drawing`) and the
page ``<image stem>.html`` (`viewer`) are drawn from it on every write and
never read back. The ``.json``::

    {"format": 3,
     "nodes": [...], "edges": [...], "metadata": {...}, "user_drawing": {...},
     "derived": {"<file name>": {"sha256": "<hash as written>", "previous": "<hash it replaced>"}}}

(nodes, edges and metadata as `Graph.to_json` writes them; ``derived`` tells
an edited derived file from a stale one, see `graph_writer`, which gives the
write order).

`update_graph_files` reads, merges and writes under the graph's lock
(``.<dot name>.lock``), so concurrent runs merge one after the other.
`load_graph` reads the ``.json`` alone, without a lock (a rename replaces it
whole). A ``.dot`` with no ``.json`` (hand-made, or the seed tool's), and the
``.dot`` of a format-1 pair, are imported once (`dot_import`). A graph file
that cannot be read is an error that names it, and it is never overwritten.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sparse_coding.errors import GraphFileError
from sparse_coding.files import storage
from sparse_coding.graphs.dot_format import FORMAT
from sparse_coding.graphs.dot_import import import_dot
from sparse_coding.graphs.graph import Graph, loads_strict, run_record
from sparse_coding.graphs.graph_writer import Stored, Targets, gc_paused, write_graph
from sparse_coding.graphs.graphviz import image_format
from sparse_coding.graphs.render import RenderOptions

logger = logging.getLogger(__name__)

_GRAPH_FILE_KEYS = "GRAPH_DOT_FILE/GRAPH_FILE (pipe.py) or GRADS_DOT_FILE/GRADS_FILE (fast.py)"


def json_path_for(dot_path: Path) -> Path:
    """The canonical ``.json`` twin of a ``.dot`` file (same folder and stem)."""
    return Path(dot_path).with_suffix(".json")


def viewer_path_for(dot_path: Path, image_path: Path | None) -> Path:
    """The interactive page beside the image (`sparse_coding.graphs.viewer`): ``<image stem>.html``."""
    return Path(image_path if image_path is not None else dot_path).with_suffix(".html")


def _lock_path(dot_path: Path) -> Path:
    return dot_path.parent / f".{dot_path.name}.lock"


def check_output_names(dot_path: Path, image_path: Path | None) -> None:
    """Refuse, before any work, graph file names that would overwrite each other (GraphFileError), or an
    image extension other than ``.svg``/``.png``."""
    dot_path, twin = Path(dot_path), json_path_for(dot_path)
    if dot_path == twin:
        raise GraphFileError(
            f"the graph file {dot_path.name} is the name of its own canonical .json; name the graph "
            f"file with .dot (set {_GRAPH_FILE_KEYS})"
        )
    page = viewer_path_for(dot_path, image_path)
    if page in (dot_path, twin):
        raise GraphFileError(
            f"the graph file {dot_path.name} is the name of its own viewer page {page.name}; name the "
            f"graph file with .dot (set {_GRAPH_FILE_KEYS})"
        )
    if image_path is None:
        return
    if Path(image_path) in (dot_path, twin):
        raise GraphFileError(
            f"the image {Path(image_path).name} would overwrite the graph file {Path(image_path).name}; "
            f"give the image and the graph file different names ({_GRAPH_FILE_KEYS})"
        )
    image_format(Path(image_path))


# ---------------------------------------------------------------- read


def _unreadable(path: Path, e: Exception) -> GraphFileError:
    return GraphFileError(
        f"the existing graph file {path} cannot be read ({e}); it was left as it is. "
        f"Move or repair it, or point {_GRAPH_FILE_KEYS} elsewhere, and run again."
    )


# What reading a damaged or foreign graph file raises (RecursionError: nesting no graph of ours has).
UNREADABLE = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _import(dot_path: Path) -> Graph:
    """The graph of a .dot that has no .json of this format (imported once, see `dot_import`)."""
    try:
        graph = import_dot(dot_path, dot_path.read_bytes().decode("utf-8"))
    except UNREADABLE as e:
        raise _unreadable(dot_path, e) from e
    if not graph.nodes:
        json_path = json_path_for(dot_path)
        beside = "differs from" if json_path.exists() else "has no"
        raise GraphFileError(
            f"{dot_path} holds no node this tool can read (node ids look like resid_3.331, or 9.331 in "
            f"graphs of the seed tool) and {beside} {json_path.name}; it was left as it is. "
            f"Move it, rename its nodes to node ids, or point {_GRAPH_FILE_KEYS} elsewhere."
        )
    return graph


def _derived_record(data: dict, fmt: int) -> dict[str, dict[str, str | None]]:
    """The header's record of derived files (format 2 recorded the .dot alone)."""
    derived = data.get("derived") or {}
    if fmt == 2:
        return {str(derived.get("dot")): {"sha256": derived.get("dot_sha256")}} if derived.get("dot") else {}
    return {str(name): dict(entry) for name, entry in derived.items() if isinstance(entry, dict)}


def read_stored(dot_path: Path) -> Stored | None:
    """The stored graph of `dot_path` (its .json, or an imported .dot); None when neither file exists,
    GraphFileError naming a graph file that exists but cannot be read."""
    json_path = json_path_for(dot_path)
    if not json_path.exists():
        if not dot_path.exists():
            return None
        logger.info("importing %s: it has no canonical %s yet", dot_path, json_path.name)
        return Stored(_import(dot_path), imported=True)
    try:
        data = loads_strict(json_path.read_bytes())
        fmt = data.get("format", 1) if isinstance(data, dict) else None
        if fmt not in (1, 2, FORMAT):
            raise ValueError(f"format {fmt!r}; this version reads formats 1 to {FORMAT}")
        if fmt == 1 and dot_path.exists():  # older pairs: the .dot was renamed first, so it is never stale
            return Stored(_import(dot_path), legacy=True)
        return Stored(Graph.from_dict(data), _derived_record(data, fmt), legacy=fmt != FORMAT)
    except UNREADABLE as e:
        raise _unreadable(json_path, e) from e


def load_graph(dot_path: Path) -> Graph | None:
    """Load a stored graph (its ``.json``, or an imported ``.dot``); either file of the pair may be named.
    None when neither file exists; raises as `read_stored`."""
    dot_path = Path(dot_path)
    if dot_path.suffix == ".json":
        dot_path = dot_path.with_suffix(".dot")
    stored = read_stored(dot_path)
    return None if stored is None else stored.graph


# ---------------------------------------------------------------- save, update


def _targets(dot_path: Path, image_path: Path | None) -> Targets:
    """The files to write; without Graphviz (a warning) no image, and the page named after the .dot."""
    if image_path is not None and shutil.which("dot") is None:
        logger.warning(
            "Graphviz 'dot' is not installed (Debian: apt-get install graphviz; macOS: brew "
            "install graphviz): writing %s and its .json without the image %s",
            dot_path,
            image_path,
        )
        image_path = None
    return Targets(json_path_for(dot_path), dot_path, image_path, viewer_path_for(dot_path, image_path))


def save_graph(
    graph: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Write the graph as it is: its ``.json``, the ``.dot``, the image (svg/png by extension) and the page.

    Raises:
        GraphFileError: colliding names, an unknown image extension or a
            value no graph file holds, or dot failed (nothing written).
        StorageError: the folder cannot be written (the old files are kept).
    """
    dot_path = Path(dot_path)
    image_path = Path(image_path) if image_path is not None else None
    check_output_names(dot_path, image_path)
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"), gc_paused():
        try:
            stored = read_stored(dot_path)
        except GraphFileError:
            stored = None  # overwritten as it is asked; its derived files are moved aside
        targets = _targets(dot_path, image_path)
        write_graph(graph, targets, options or RenderOptions(), timeout_s, stored)


def _merged(graph: Graph, run: Graph, dot_path: Path) -> Graph:
    """`graph` grown by `run`, unless the run's model or SAE sources differ from the graph's."""
    for record in run.runs:
        if conflicts := graph.conflicts(record):
            raise GraphFileError(
                f"this run cannot join the graph {dot_path}: {'; '.join(conflicts)}. Its values would "
                f"not be comparable. Write it to another graph file ({_GRAPH_FILE_KEYS}), or run "
                f"with --new-graph to set the old graph aside and start a new one."
            )
    graph.merge(run)
    return graph


def update_graph_files(
    new: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
    new_graph: bool = False,
) -> Graph:
    """Merge a run's graph into the stored one, save, and return the merged graph, holding the graph's
    lock throughout.

    Args:
        new: a freshly computed graph (its metadata is its run's record) or
            a graph already assigned to its runs.
        new_graph: keep the stored graph's files aside and start a new one.

    Raises:
        GraphFileError: the stored graph is unreadable (it is not
            overwritten), the run's model or SAE sources differ from the
            graph's, or the run cannot be drawn (nothing is written).
        StorageError: the files cannot be written (the old files are kept).
    """
    dot_path = Path(dot_path)
    image_path = Path(image_path) if image_path is not None else None
    check_output_names(dot_path, image_path)
    with gc_paused():
        run = new.copy()
    if not run.runs:
        run.add_run(run_record(new.metadata))
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"), gc_paused():
        stored = read_stored(dot_path)
        merged = run  # the run alone starts a graph: it is a copy already
        if stored is not None and not new_graph:
            merged = _merged(stored.graph, run, dot_path)
        set_aside = run.runs[-1]["id"] if new_graph and stored is not None else None
        targets = _targets(dot_path, image_path)
        write_graph(merged, targets, options or RenderOptions(), timeout_s, stored, set_aside)
    return merged
