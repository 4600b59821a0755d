"""Graph files: the canonical ``.json``, and the ``.dot`` and image derived from it.

One store per graph. ``<stem>.json`` (beside the ``.dot``, same stem) is the
truth; the ``.dot`` and the image are drawn from it, say so in a header
comment (the ``.dot`` and an ``.svg``; a ``.png`` has none), and are rebuilt
on every write, as is the interactive page ``<image stem>.html``
(`sparse_coding.graphs.viewer`). All three are replaced in one
crash-consistent commit (`sparse_coding.storage.Commit`), under an
exclusive lock (``.<name>.dot.lock`` beside the ``.dot``) held for the whole
read-merge-write, so concurrent runs merge one after the other and a killed
run leaves the old files or the new ones.

The ``.json`` (schema for programs; keys absent when empty)::

    {"format": 2,
     "derived": {"dot": "graph.dot", "dot_sha256": "<hash of the .dot as written>"},
     "nodes": [{"id", "site", "layer", "feature" (null for error nodes),
                "activation", "attribution",        # means over the node's runs
                "hook", "neuronpedia_id", "contexts", "logits_up", "logits_down",
                "explanation", "n_runs", "runs": {"<run id>": {"activation", "attribution"}}}],
     "edges": [{"source", "target", "effect",       # mean over the edge's runs
                "n_runs", "runs": {"<run id>": effect}}],
     "metadata": {"model", "sae_sources": {"resid_3": source, ...}, "summary",
                  "runs": [{"id", "time", "script", "prompt", "dataset", "model",
                            "sae_sources", "config", "summary", ...}]},
     "user_drawing": {"graph_attrs", "nodes": {name: attrs},
                      "edges": [{"source", "target", "attrs"}]}}

The drawn value of a node or edge measured by several runs is the mean over
those runs; the count is ``n_runs`` here and in the ``.dot`` tooltip. A run
whose model or SAE sources differ from the graph's is refused
(`update_graph_files`), never merged.

Reading (`load_graph`) prefers the ``.json``. Its ``dot_sha256`` tells a
``.dot`` edited by hand: the edit is imported with a warning (values edited
there become the values of an "edited by hand" run), never discarded. A
``.dot`` without a ``.json`` (hand-made, copied, or written by the seed tool
sparse_circuit_discovery, whose nodes ``9.331`` / ``resid_error_9.0`` map to
``resid_9.331`` / ``resid_error_9``) is imported: edges with ``effect``
become measured edges of an "imported" run, edges without one and nodes
that are not node ids are kept as the user's drawing. A ``.dot`` with no
node this tool can read is refused, never replaced.

The ``.dot`` format (and how foreign ``.dot`` files are read) is
`sparse_coding.graphs.dot_format`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sparse_coding import storage
from sparse_coding.errors import GraphFileError, StorageError
from sparse_coding.graphs.dot_format import DERIVED_NOTE, FORMAT, graph_from_dot, graph_to_dot, json_text
from sparse_coding.graphs.drawing import draw_image
from sparse_coding.graphs.graph import Graph, new_run_id, run_record
from sparse_coding.graphs.render import RenderOptions, image_format, shared_labels
from sparse_coding.graphs.viewer import viewer_page

logger = logging.getLogger(__name__)

_GRAPH_FILE_KEYS = "GRAPH_DOT_FILE/GRAPH_FILE (pipe.py) or GRADS_DOT_FILE/GRADS_FILE (fast.py)"


def json_path_for(dot_path: Path) -> Path:
    """The canonical ``.json`` twin of a ``.dot`` file (same folder and stem)."""
    return Path(dot_path).with_suffix(".json")


def _lock_path(dot_path: Path) -> Path:
    return dot_path.parent / f".{dot_path.name}.lock"


def _journal_path(dot_path: Path) -> Path:
    return dot_path.parent / f".{dot_path.name}{storage.JOURNAL_SUFFIX}"


def check_output_names(dot_path: Path, image_path: Path | None) -> None:
    """Refuse, before any work, graph file names that would overwrite each other.

    Raises:
        GraphFileError: the ``.dot`` is named like its ``.json`` twin, the
            image like the ``.dot`` or the ``.json``, or the image extension is
            not ``.svg``/``.png``.
    """
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


def viewer_path_for(dot_path: Path, image_path: Path | None) -> Path:
    """The interactive page beside the image (`sparse_coding.graphs.viewer`): ``<image stem>.html``."""
    return Path(image_path if image_path is not None else dot_path).with_suffix(".html")


# ---------------------------------------------------------------- .json


def graph_to_json(graph: Graph, derived: dict[str, str] | None = None) -> str:
    """The canonical ``.json`` text: format, derived-file hashes, then the graph in canonical order.

    One node or edge per line, so a diff of two runs reads record by record;
    each record is written by json's C encoder (an indented dump runs the pure
    Python one: 2 s for 20,000 edges).
    """
    data = {"format": FORMAT, "derived": derived or {}} | graph.to_dict()
    fields = [
        f'"{key}": '
        + (
            "[\n" + ",\n".join(json_text(record) for record in value) + "\n]"
            if key in ("nodes", "edges")
            else json_text(value)
        )
        for key, value in data.items()
    ]
    return "{\n" + ",\n".join(fields) + "\n}\n"


def graph_from_json(text: str) -> Graph:
    """Inverse of ``graph_to_json``; raises ValueError/KeyError/TypeError on bad data (inf, nan too)."""
    return Graph.from_dict(json.loads(text, parse_constant=_refuse_constant))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


# ---------------------------------------------------------------- load


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unreadable(path: Path, e: Exception) -> GraphFileError:
    return GraphFileError(
        f"the existing graph file {path} cannot be read ({e}); it was left as it is. "
        f"Move or repair it, or point {_GRAPH_FILE_KEYS} elsewhere, and run again."
    )


# What reading a damaged or foreign graph file raises (RecursionError: nesting no graph of ours has).
UNREADABLE = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from e


def _read_dot(dot_path: Path, data: bytes | None = None) -> Graph:
    """The graph of a .dot file, parsed from `data` when the caller has read its bytes."""
    data = _read_bytes(dot_path) if data is None else data
    try:
        graph = graph_from_dot(data.decode("utf-8"))
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


def _read_json(json_path: Path) -> tuple[Graph, dict[str, Any]]:
    """The canonical graph and its file header (``format``, ``derived``)."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        return Graph.from_dict(data), {"format": data.get("format", 1), **(data.get("derived") or {})}
    except UNREADABLE as e:
        raise _unreadable(json_path, e) from e


def _tie_imported(graph: Graph, dot_path: Path, script: str) -> Graph:
    """Give values the file did not tie to a run (imported or edited by hand) a run of their own.

    A graph written before runs were kept apart describes its last run at the
    top of its metadata: that description becomes the imported run's record.
    """
    if graph.untied():
        described = {} if graph.runs else graph.metadata
        graph.add_run(run_record({"script": script, **described, "imported_from": dot_path.name}))
    return graph


def _load(dot_path: Path) -> Graph | None:
    """`load_graph` without the lock (the caller holds it)."""
    json_path = json_path_for(dot_path)
    storage.recover(_journal_path(dot_path))
    if not json_path.exists():
        if not dot_path.exists():
            return None
        logger.info("importing %s: it has no canonical %s yet", dot_path, json_path.name)
        return _tie_imported(_read_dot(dot_path), dot_path, "imported")
    graph, header = _read_json(json_path)
    if not dot_path.exists():
        return graph  # the .dot is derived: the next save draws it again
    if header["format"] == 1:  # older pairs: the .dot was renamed first, so it is never the stale one
        return _tie_imported(_read_dot(dot_path), dot_path, "imported")
    data = _read_bytes(dot_path)
    if _sha256(data) == header.get("dot_sha256"):
        return graph  # the .dot sparse_coding wrote: parsing it would give the .json's graph again
    edited = _read_dot(dot_path, data)
    logger.warning(
        "%s was edited after sparse_coding wrote it (it differs from the copy recorded in %s); "
        "importing the edited file, whose changed values become an 'edited by hand' run",
        dot_path,
        json_path.name,
    )
    return _tie_imported(edited, dot_path, "edited by hand")


def load_graph(dot_path: Path) -> Graph | None:
    """Load a stored graph (its ``.json``, or an imported ``.dot``); either file of the pair may be named.

    Returns:
        The graph, or None when neither the ``.dot`` nor its ``.json`` exists.

    Raises:
        GraphFileError: a graph file exists but cannot be read (named in the message).
    """
    dot_path = Path(dot_path)
    if dot_path.suffix == ".json":
        dot_path = dot_path.with_suffix(".dot")
    if not dot_path.exists() and not json_path_for(dot_path).exists():
        return None
    try:
        with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"):
            return _load(dot_path)
    except StorageError:  # a read-only folder: nothing can be writing there
        logger.info("cannot lock %s (read-only folder?); reading it without the lock", dot_path)
        return _load(dot_path)


# ---------------------------------------------------------------- save


def _draw(
    graph: Graph,
    commit: storage.Commit,
    dot_path: Path,
    image_path: Path | None,
    options: RenderOptions,
    timeout_s: float,
) -> str:
    """Write the .dot (and draw the image) into the commit; returns the .dot text as committed.

    The .dot holds every node and edge; the image is drawn within a layout
    budget (`sparse_coding.graphs.drawing`). A dot failure keeps the old image
    (the data is still committed) and is re-raised by the caller.
    """
    with shared_labels():
        text = graph_to_dot(graph, options)
        commit.write(dot_path, text)
        if image_path is None:
            return text
        fmt = image_format(image_path)
        draw_image(graph, commit.temp(image_path), fmt=fmt, options=options, timeout_s=timeout_s)
    if fmt == "svg":
        svg = commit.temp(image_path).read_text(encoding="utf-8")
        commit.write(image_path, re.sub(r"(<svg\b)", rf"<!-- {DERIVED_NOTE} -->\n\1", svg, count=1))
    return text


def _save(
    graph: Graph, dot_path: Path, image_path: Path | None, options: RenderOptions, timeout_s: float
) -> None:
    """`save_graph` without the lock."""
    page = viewer_path_for(dot_path, image_path)
    if image_path is not None and shutil.which("dot") is None:
        logger.warning(
            "Graphviz 'dot' is not installed (Debian: apt-get install graphviz; macOS: brew "
            "install graphviz): writing %s and its .json without the image %s",
            dot_path,
            image_path,
        )
        image_path = None
    failure: GraphFileError | None = None
    with storage.Commit(_journal_path(dot_path)) as commit:
        try:
            dot_text = _draw(graph, commit, dot_path, image_path, options, timeout_s)
        except GraphFileError as e:  # the run's data is complete and valid: keep it, keep the old image
            failure = e
            dot_text = commit.temp(dot_path).read_text(encoding="utf-8")
            commit.drop(image_path)  # type: ignore[arg-type]
        derived = {"dot": dot_path.name, "dot_sha256": _sha256(dot_text.encode("utf-8"))}
        canonical = graph_to_json(graph, derived)
        commit.write(json_path_for(dot_path), canonical)
        commit.write(page, viewer_page(json.loads(canonical)))
    if failure is not None:
        raise GraphFileError(
            f"{failure}; {dot_path} and its .json were saved, the image {image_path} was not updated"
        ) from failure
    logger.info("saved graph (%d nodes, %d edges) to %s", len(graph.nodes), len(graph.edges), dot_path)


def save_graph(
    graph: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Write the graph as it is: its ``.json``, the ``.dot`` and the image (svg/png by extension).

    The three files are replaced in one crash-consistent commit under the
    graph's lock: a failure or kill part-way leaves the previous files.

    Raises:
        GraphFileError: colliding names or an unknown image extension (nothing
            written), or dot failed (the .json and .dot are saved, the old
            image is kept).
        StorageError: the folder cannot be written (the old files are kept).
    """
    dot_path = Path(dot_path)
    image_path = Path(image_path) if image_path is not None else None
    check_output_names(dot_path, image_path)
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"):
        storage.recover(_journal_path(dot_path))
        _save(graph, dot_path, image_path, options or RenderOptions(), timeout_s)


def _set_aside(dot_path: Path, image_path: Path | None, run_id: str) -> None:
    """Rename an existing graph's files to ``<stem>.before-<run id>.*`` (``--new-graph``)."""
    moved = []
    for path in (json_path_for(dot_path), dot_path, image_path, viewer_path_for(dot_path, image_path)):
        if path is not None and path.exists():
            os.replace(path, path.with_name(f"{path.stem}.before-{run_id}{path.suffix}"))
            moved.append(path.suffix)
    if moved:
        logger.info(
            "--new-graph: set the existing graph aside as %s.before-%s{%s}",
            dot_path.parent / dot_path.stem,
            run_id,
            ",".join(moved),
        )


def update_graph_files(
    new: Graph,
    dot_path: Path,
    image_path: Path | None,
    *,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
    new_graph: bool = False,
) -> Graph:
    """Merge a run's graph into the stored one and save, holding the graph's lock throughout.

    Args:
        new: a freshly computed graph (its metadata is its run's record) or
            a graph already tied to its runs.
        new_graph: set the stored graph aside (renamed) and start a new one.

    Returns:
        The merged graph.

    Raises:
        GraphFileError: the stored graph is unreadable (it is not
            overwritten), or the run's model or SAE sources differ from the
            graph's (nothing is written).
        StorageError: the files cannot be written (the old files are kept).
    """
    dot_path = Path(dot_path)
    image_path = Path(image_path) if image_path is not None else None
    check_output_names(dot_path, image_path)
    run = new.copy()
    if not run.runs:
        run.add_run(run_record(new.metadata, new_run_id()))
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"):
        stored = _load(dot_path)
        if stored is not None and new_graph:
            _set_aside(dot_path, image_path, run.runs[-1]["id"])
            stored = None
        merged = stored or Graph()
        for record in run.runs:
            if conflicts := merged.conflicts(record):
                raise GraphFileError(
                    f"this run cannot join the graph {dot_path}: {'; '.join(conflicts)}. Its values would "
                    f"not be comparable. Write it to another graph file ({_GRAPH_FILE_KEYS}), or run "
                    f"with --new-graph to set the old graph aside and start a new one."
                )
        merged.merge(run)
        _save(merged, dot_path, image_path, options or RenderOptions(), timeout_s)
    return merged
