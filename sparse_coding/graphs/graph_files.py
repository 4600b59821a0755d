"""Graph files: the canonical ``.json``, and the ``.dot``, image and page drawn from it.

``<stem>.json`` (beside the ``.dot``, same stem) is the graph
(`Graph.to_json`); the ``.dot`` (`dot_format`), the image (svg/png by
extension, `drawing`) and the interactive page ``<image stem>.html``
(`viewer`) are drawn from it on every write and never read back. The
``.json`` starts with a header::

    {"format": 3,
     "derived": {"<file name>": {"sha256": "<hash as written>", "previous": "<hash it replaced>"}},
     "nodes": [...], "edges": [...], "metadata": {...}, "user_drawing": {...}}

Writing (`update_graph_files`: read, merge, write, under the graph's lock
``.<dot name>.lock``, so concurrent runs merge one after the other):

1. every check that can fail runs first: names, the stored graph's
   validity, the run's model and SAEs against the graph's, the merged
   graph's values (`Graph.check`);
2. all four files are drawn to temp files beside their targets (the image by
   Graphviz, the others in a worker thread meanwhile) and the free space is
   checked; a failure here leaves every file as it was, so a retry adds the
   run once;
3. a derived file on disk whose hash is neither the one the ``.json``
   recorded nor the one that file replaced was changed by someone else: it is
   moved aside as ``<stem>.edited-<time><ext>`` with a warning (an imported
   ``.dot`` and its drawings as ``<stem>.imported-<time><ext>``), never parsed
   and never lost;
4. commit: the ``.json`` is renamed over its target first (the commit
   point), then the ``.dot``, the image and the page. A crash between them
   leaves the new ``.json`` beside derived files of the previous write: their
   hashes are the ``previous`` ones the new ``.json`` recorded, so the next
   write knows them for stale (not edited) and redraws them. A crash before
   the commit point leaves the previous files and a retry adds the run once;
   after it, the run is in the graph.

Reading (`load_graph`) reads the ``.json`` alone, without a lock (a rename
replaces it whole). A ``.dot`` with no ``.json`` (hand-made, or written by
the seed tool sparse_circuit_discovery) is imported once (`dot_import`), as
is the ``.dot`` of a format-1 pair (written before the ``.json`` was the
graph). A graph file that cannot be read is an error that names it, and it is
never overwritten. ``--new-graph`` keeps the old files as
``<stem>.before-<run id><ext>`` (hard links, or copies) and then commits the
new graph as above.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sparse_coding import storage
from sparse_coding.errors import GraphFileError, StorageError
from sparse_coding.graphs.dot_format import DERIVED_NOTE, FORMAT, graph_to_dot
from sparse_coding.graphs.dot_import import import_dot
from sparse_coding.graphs.drawing import draw_image
from sparse_coding.graphs.graph import Graph, loads_strict, new_run_id, run_record
from sparse_coding.graphs.render import RenderOptions, image_format, shared_labels
from sparse_coding.graphs.viewer import viewer_page

logger = logging.getLogger(__name__)

_GRAPH_FILE_KEYS = "GRAPH_DOT_FILE/GRAPH_FILE (pipe.py) or GRADS_DOT_FILE/GRADS_FILE (fast.py)"
# Below this many free bytes, a Graphviz failure to write the image is taken for a full disk.
_FULL_DISK_BYTES = 8 * 2**20


def json_path_for(dot_path: Path) -> Path:
    """The canonical ``.json`` twin of a ``.dot`` file (same folder and stem)."""
    return Path(dot_path).with_suffix(".json")


def viewer_path_for(dot_path: Path, image_path: Path | None) -> Path:
    """The interactive page beside the image (`sparse_coding.graphs.viewer`): ``<image stem>.html``."""
    return Path(image_path if image_path is not None else dot_path).with_suffix(".html")


def _lock_path(dot_path: Path) -> Path:
    return dot_path.parent / f".{dot_path.name}.lock"


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


# ---------------------------------------------------------------- read


@dataclass
class Stored:
    """A stored graph and what its ``.json`` says of the derived files beside it."""

    graph: Graph
    derived: dict[str, dict[str, str | None]] = field(default_factory=dict)  # name -> sha256, previous
    legacy: bool = False  # format 1 or 2: derived files it does not record are this tool's
    imported: bool = False  # read from a .dot alone


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
    """The stored graph of `dot_path` (its .json, or an imported .dot); None when neither file exists.

    Raises:
        GraphFileError: a graph file exists but cannot be read (named in the message).
    """
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

    Returns:
        The graph, or None when neither the ``.dot`` nor its ``.json`` exists.

    Raises:
        GraphFileError: a graph file exists but cannot be read (named in the message).
    """
    dot_path = Path(dot_path)
    if dot_path.suffix == ".json":
        dot_path = dot_path.with_suffix(".dot")
    stored = read_stored(dot_path)
    return None if stored is None else stored.graph


# ---------------------------------------------------------------- draw


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _texts(graph: Graph, options: RenderOptions) -> dict[str, str]:
    """The .dot, the page and the .json body (without its header), as text."""
    return {"dot": graph_to_dot(graph, options), "page": viewer_page(graph), "json": graph.to_json()}


def _draw(
    graph: Graph, commit: storage.Commit, image_path: Path | None, options: RenderOptions, timeout_s: float
) -> dict[str, str]:
    """Draw the image into its temp (Graphviz, in this thread) while a worker writes the texts."""
    with shared_labels(), ThreadPoolExecutor(1, thread_name_prefix="graph_files") as pool:
        texts = pool.submit(contextvars.copy_context().run, _texts, graph, options)
        if image_path is not None:
            try:
                work = commit.scratch(image_path.with_name(image_path.name + ".drawing"))
                draw_image(
                    graph, commit.temp(image_path), fmt=image_format(image_path), options=options,
                    timeout_s=timeout_s, work_dir=work,
                )  # fmt: skip
            except GraphFileError as e:
                raise _drawing_failed(image_path, e, texts.result()) from e
        return texts.result()


def _drawing_failed(
    image_path: Path, e: GraphFileError, texts: dict[str, str]
) -> StorageError | GraphFileError:
    """Graphviz's failure, as a full disk when the folder has (almost) no space left."""
    needed = sum(len(text.encode("utf-8")) for text in texts.values())
    free = storage.free_space(image_path.parent)
    if free is not None and free < _FULL_DISK_BYTES:
        return StorageError(
            f"Graphviz could not write the image {image_path.name} in the folder {image_path.parent} "
            f"({e}): the disk is full. Besides the image, the graph's .json, .dot and page need about "
            f"{storage.megabytes(needed)} there, and {storage.megabytes(free)} are free. Free some space "
            f"or set DATA_DIR to another disk. Nothing was written: the graph files there were left as "
            f"they were."
        )
    return GraphFileError(f"{e}; nothing was written: the graph files there were left as they were")


# ---------------------------------------------------------------- commit


def _set_aside(path: Path, why: str) -> Path:
    """Rename `path` to ``<stem>.<why>-<time><ext>`` (a free name) and return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.stem}.{why}-{stamp}{path.suffix}")
    for n in range(2, 1000):
        if not os.path.lexists(aside):
            break
        aside = path.with_name(f"{path.stem}.{why}-{stamp}-{n}{path.suffix}")
    os.replace(path, aside)
    return aside


def _check_derived(path: Path, stored: Stored | None) -> str | None:
    """The hash of `path` when it is this tool's (current or stale); else move it aside (None)."""
    if not os.path.lexists(path):
        return None
    entry = (stored.derived if stored else {}).get(path.name)
    digest = _sha256(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
    if digest is not None and entry is not None and digest in (entry.get("sha256"), entry.get("previous")):
        if digest != entry.get("sha256"):
            logger.info(
                "redrawing %s: a run was stopped after saving the graph and before redrawing it", path
            )
        return digest
    if digest is not None and entry is None and stored is not None and stored.legacy:
        return digest  # written by an older version, which recorded the .dot alone
    why = "imported" if stored is not None and stored.imported else "edited"
    aside = _set_aside(path, why)
    logger.warning(
        "%s was not written by sparse_coding for this graph (changed by hand, or another program's); it "
        "was moved aside as %s and is drawn again from %s",
        path,
        aside.name,
        json_path_for(path).name if stored and not stored.imported else "the imported graph",
    )
    return None


def _keep_before(paths: list[Path], run_id: str) -> None:
    """``--new-graph``: keep the existing files as ``<stem>.before-<run id><ext>`` (hard links, or copies)."""
    kept = []
    for path in paths:
        if os.path.lexists(path):
            aside = path.with_name(f"{path.stem}.before-{run_id}{path.suffix}")
            try:
                os.link(path, aside, follow_symlinks=False)
            except OSError:
                shutil.copy2(path, aside, follow_symlinks=False)
            kept.append(path.suffix)
    if kept:
        stem = paths[0].parent / paths[0].stem
        aside = f"{stem}.before-{run_id}{{{','.join(kept)}}}"
        logger.info("--new-graph: set the existing graph aside as %s", aside)


def _write(
    graph: Graph,
    dot_path: Path,
    image_path: Path | None,
    options: RenderOptions,
    timeout_s: float,
    stored: Stored | None,
    new_graph_id: str | None = None,
) -> None:
    """Draw every file to a temp, check, then commit: the .json first, then the derived files."""
    try:
        graph.check()
    except ValueError as e:
        raise GraphFileError(f"the graph for {dot_path} cannot be saved: {e}; nothing was written") from e
    json_path, page = json_path_for(dot_path), viewer_path_for(dot_path, image_path)
    in_order = Graph(  # the same nodes and edges in file order: each writer's sort is then one pass
        nodes={node.id: node for node in graph.sorted_nodes()},
        edges={(edge.source, edge.target): edge for edge in graph.sorted_edges()},
        metadata=graph.metadata,
        user=graph.user,
    )
    with storage.Commit() as commit:
        texts = _draw(in_order, commit, image_path, options, timeout_s)
        if image_path is not None and image_path.suffix.lower() == ".svg":
            svg = commit.temp(image_path).read_text(encoding="utf-8")
            texts["image"] = re.sub(r"(<svg\b)", rf"<!-- {DERIVED_NOTE} -->\n\1", svg, count=1)
        files = {dot_path: texts["dot"].encode("utf-8"), page: texts["page"].encode("utf-8")}
        if image_path is not None:
            files[image_path] = texts["image"].encode("utf-8") if "image" in texts else None
        body = texts["json"].encode("utf-8")
        _check_space(dot_path.parent, [*files.values(), body])
        for path, data in files.items():
            if data is not None:
                commit.write(path, data)
        derived = {p.name: {"sha256": _sha256(d or commit.temp(p).read_bytes())} for p, d in files.items()}
        if new_graph_id is not None:
            _keep_before([json_path, *files], new_graph_id)
        else:
            for path in files:
                derived[path.name]["previous"] = _check_derived(path, stored)
        if image_path is None and stored is not None:
            derived |= {name: e for name, e in stored.derived.items() if name not in derived}
        header = f'{{\n"format": {FORMAT},\n"derived": {json.dumps(derived, separators=(",", ":"))},\n'
        commit.write(json_path, header.encode("utf-8") + body.removeprefix(b"{\n"))
        commit.apply(order=[json_path, dot_path, *([image_path] if image_path else []), page])
    logger.info("saved graph (%d nodes, %d edges) to %s", len(graph.nodes), len(graph.edges), json_path)


def _check_space(folder: Path, contents: list[bytes | None]) -> None:
    """Refuse before writing when the folder lacks the room for this write's files."""
    needed = sum(len(c) for c in contents if c is not None)
    free = storage.free_space(folder)
    if free is not None and free < needed:
        raise StorageError(
            f"the folder {folder} lacks the room for this run's graph files: "
            f"{storage.full_disk_text(folder, needed)}; free some space or set DATA_DIR to another disk. "
            f"Nothing was written: the graph files there were left as they were."
        )


# ---------------------------------------------------------------- save, update


def _image_or_none(dot_path: Path, image_path: Path | None) -> Path | None:
    """The image to draw: None without one, or (with a warning) without Graphviz."""
    if image_path is not None and shutil.which("dot") is None:
        logger.warning(
            "Graphviz 'dot' is not installed (Debian: apt-get install graphviz; macOS: brew "
            "install graphviz): writing %s and its .json without the image %s",
            dot_path,
            image_path,
        )
        return None
    return image_path


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
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"):
        try:
            stored = read_stored(dot_path)
        except GraphFileError:
            stored = None  # overwritten as it is asked; its derived files are moved aside
        image_path = _image_or_none(dot_path, image_path)
        _write(graph, dot_path, image_path, options or RenderOptions(), timeout_s, stored)


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
    """Merge a run's graph into the stored one and save, holding the graph's lock throughout.

    Args:
        new: a freshly computed graph (its metadata is its run's record) or
            a graph already tied to its runs.
        new_graph: keep the stored graph's files aside and start a new one.

    Returns:
        The merged graph.

    Raises:
        GraphFileError: the stored graph is unreadable (it is not
            overwritten), the run's model or SAE sources differ from the
            graph's, or the run cannot be drawn (nothing is written).
        StorageError: the files cannot be written (the old files are kept).
    """
    dot_path = Path(dot_path)
    image_path = Path(image_path) if image_path is not None else None
    check_output_names(dot_path, image_path)
    run = new.copy()
    if not run.runs:
        run.add_run(run_record(new.metadata, new_run_id()))
    with storage.file_lock(_lock_path(dot_path), what=f"the graph {dot_path}"):
        stored = read_stored(dot_path)
        merged = run  # the run alone starts a graph: it is a copy already
        if stored is not None and not new_graph:
            merged = _merged(stored.graph, run, dot_path)
        set_aside = run.runs[-1]["id"] if new_graph and stored is not None else None
        image_path = _image_or_none(dot_path, image_path)
        _write(merged, dot_path, image_path, options or RenderOptions(), timeout_s, stored, set_aside)
    return merged
