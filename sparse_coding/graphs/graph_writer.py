"""Write a graph's four files — the ``.json``, the ``.dot``, the image and the page — as one commit.

The ``.json`` is the graph; the others are drawn from it and never read back.
`write_graph` works in this order, so that a run that fails changes nothing:

1. the values are checked (`Graph.check`): no file may hold a value the
   reader would refuse;
2. every file is drawn to a temp file beside its target (the image by
   Graphviz while a worker thread writes the rest): a full disk or a Graphviz
   failure here leaves every file as it was, so a retry adds the run once;
3. a derived file on disk whose hash is neither the one the stored ``.json``
   recorded for it nor the one that file replaced was edited by hand (or
   written by another program): it is moved aside as
   ``<stem>.edited-<time><ext>`` (``imported-`` beside a ``.dot`` imported
   without ``.json``) with a warning, never parsed, never lost;
4. the ``.json`` ends with its record of the derived files (``"derived":
   {name: {"sha256", "previous"}}``: the hash each was written with, and the
   hash of the file it replaced) and is renamed over the old one: the run
   joins the graph here. The derived files are renamed after it; a crash
   between those renames leaves files whose hashes are the ``previous`` ones,
   so the next write knows them for stale (not edited) and draws them again.

``--new-graph`` keeps the old files as ``<stem>.before-<run id><ext>`` (hard
links, else copies) just before step 4, so the old graph is whole at every
moment.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sparse_coding.errors import GraphFileError, SparseCodingError, StorageError
from sparse_coding.files import storage
from sparse_coding.graphs.dot_format import DERIVED_NOTE, FORMAT, graph_to_dot
from sparse_coding.graphs.drawing import Drawing
from sparse_coding.graphs.graph import Edge, Graph, Node
from sparse_coding.graphs.graphviz import image_format
from sparse_coding.graphs.render import RenderOptions, shared_labels
from sparse_coding.graphs.viewer import viewer_page

logger = logging.getLogger(__name__)

# Below this many free bytes, a Graphviz failure to write the image is taken for a full disk.
_FULL_DISK_BYTES = 8 * 2**20


@dataclass
class Stored:
    """A stored graph and what its ``.json`` says of the derived files beside it."""

    graph: Graph
    derived: dict[str, dict[str, str | None]] = field(default_factory=dict)  # name -> sha256, previous
    legacy: bool = False  # format 1 or 2: derived files it does not record are this tool's
    imported: bool = False  # read from a .dot alone


class _InOrder(Graph):
    """The graph being written, its file order found once: the four writers each ask for it."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph.nodes, graph.edges, graph.metadata, graph.user)
        self.node_order = graph.sorted_nodes()
        self.edge_order = graph.sorted_edges({node.id: i for i, node in enumerate(self.node_order)})

    def sorted_nodes(self) -> list[Node]:
        return self.node_order

    def sorted_edges(self, order: dict[str, int] | None = None) -> list[Edge]:
        return self.edge_order


@dataclass(frozen=True)
class Targets:
    """The four files of one graph."""

    json: Path
    dot: Path
    image: Path | None
    page: Path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- draw to temps


def _write_texts(
    graph: Graph, options: RenderOptions, targets: Targets, temps: dict[Path, Path]
) -> tuple[dict[str, str], int]:
    """The worker's part: the .dot and the page written whole, the .json all but its record of the
    derived files (`write_graph` appends it). Returns the .dot's and page's hashes by name, and the
    bytes written."""
    texts = {  # the .dot last: its labels are the image's, which the drawing builds meanwhile
        targets.json: graph.to_json({"format": FORMAT}).encode("utf-8").removesuffix(b"\n}\n"),
        targets.page: viewer_page(graph).encode("utf-8"),
        targets.dot: graph_to_dot(graph, options).encode("utf-8"),
    }
    folder, needed = targets.json.parent, sum(map(len, texts.values()))
    free = storage.free_space(folder)
    if free is not None and free < needed:
        raise StorageError(
            f"the folder {folder} lacks the room for this run's graph files: "
            f"{storage.full_disk_text(folder, needed)}; free some space or set DATA_DIR to another disk. "
            f"Nothing was written: the graph files there were left as they were."
        )
    for target, data in texts.items():
        try:
            storage.fill(temps[target], data, sync=target != targets.json)  # the .json is synced when whole
        except OSError as e:
            raise storage.storage_error(target, e, needed) from e
    return {path.name: _sha256(texts[path]) for path in (targets.dot, targets.page)}, needed


def _draw_all(
    graph: Graph, commit: storage.Commit, targets: Targets, options: RenderOptions, timeout_s: float
) -> dict[str, str]:
    """Every file to its temp: the image's source first, then Graphviz draws it while a worker writes
    the rest; returns the hashes."""
    temps = {path: commit.temp(path) for path in (targets.dot, targets.json, targets.page)}
    graph = _InOrder(graph)
    with shared_labels(), ThreadPoolExecutor(1, thread_name_prefix="graph_writer") as pool:
        drawing = None
        if targets.image is not None:
            image, image_temp = targets.image, commit.temp(targets.image)
            work = commit.scratch(image.with_name(image.name + ".drawing"))
            drawing = Drawing(graph, image_temp, image_format(image), options, timeout_s, work)
            try:
                drawing.prepare()  # before the worker: Python threads only take turns, Graphviz waits
            except GraphFileError as e:
                raise _drawing_failed(image, image_temp, e, None) from e
        texts = pool.submit(contextvars.copy_context().run, _write_texts, graph, options, targets, temps)
        try:
            if drawing is None:
                return texts.result()[0]
            try:
                drawing.render()
            except GraphFileError as e:
                raise _drawing_failed(image, image_temp, e, texts) from e
            hashes = texts.result()[0]
        finally:
            _wait(texts)
    data = image_temp.read_bytes()
    if image.suffix.lower() == ".svg":
        data = re.sub(rb"(<svg\b)", f"<!-- {DERIVED_NOTE} -->\n".encode() + rb"\1", data, count=1)
    storage.fill(image_temp, data)
    return hashes | {image.name: _sha256(data)}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a graph is copied, merged and written: that allocates
    a few objects per edge and node, none in a reference cycle, and each collection would walk the whole
    graph again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _wait(texts: Future) -> None:
    """Let the worker finish before the commit removes its temps, even through Ctrl-C or SIGTERM
    (it writes for well under a second; the interruption is raised again afterwards)."""
    interrupted = None
    while not texts.done():
        try:
            texts.exception()
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


def _drawing_failed(image: Path, temp: Path, e: GraphFileError, texts: Future | None) -> SparseCodingError:
    """Graphviz's failure, as a full disk (the room needed, the room free) when the folder has almost none."""
    free = storage.free_space(image.parent)
    if free is None or free >= _FULL_DISK_BYTES or texts is None:
        return GraphFileError(f"{e}; nothing was written: the graph files there were left as they were")
    if (failed := texts.exception()) is not None:
        return failed  # the other files did not fit either: that message says how much they need
    written = texts.result()[1] + temp.stat().st_size  # all removed again when this run stops
    return StorageError(
        f"Graphviz could not write the image {image.name} in the folder {image.parent} ({e}): the disk is "
        f"full. This run's graph files need more than {storage.size_text(written)} there and "
        f"{storage.size_text(free + written)} are free. Free some space or set DATA_DIR to another disk. "
        f"Nothing was written: the graph files there were left as they were."
    )


# ---------------------------------------------------------------- derived files on disk


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
        path.with_suffix(".json").name if stored and not stored.imported else "the imported graph",
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
            except (OSError, NotImplementedError):  # no hard links here (or not of links): a copy
                shutil.copy2(path, aside, follow_symlinks=False)
            kept.append(path.suffix)
    if kept:
        aside = f"{paths[0].parent / paths[0].stem}.before-{run_id}{{{','.join(kept)}}}"
        logger.info("--new-graph: set the existing graph aside as %s", aside)


# ---------------------------------------------------------------- the commit


def write_graph(
    graph: Graph,
    targets: Targets,
    options: RenderOptions,
    timeout_s: float,
    stored: Stored | None,
    new_graph_id: str | None = None,
) -> None:
    """Draw every file to a temp, check, then commit: the .json first, then the derived files.

    Raises:
        GraphFileError: a value no graph file may hold, or Graphviz failed (nothing written).
        StorageError: the folder is full or cannot be written (nothing replaced).
    """
    try:
        graph.check()
    except ValueError as e:
        raise GraphFileError(f"the graph for {targets.dot} cannot be saved: {e}; nothing was written") from e
    derived_files = [p for p in (targets.dot, targets.image, targets.page) if p is not None]
    with storage.Commit() as commit:
        hashes = _draw_all(graph, commit, targets, options, timeout_s)
        derived = {name: {"sha256": digest} for name, digest in hashes.items()}
        if new_graph_id is not None:
            _keep_before([targets.json, *derived_files], new_graph_id)
        for path in derived_files if new_graph_id is None else []:
            derived[path.name]["previous"] = _check_derived(path, stored)
        if targets.image is None and stored is not None:  # not drawn (no Graphviz): its record stays
            derived |= {name: entry for name, entry in stored.derived.items() if name not in derived}
        tail = f',\n"derived": {json.dumps(derived, separators=(",", ":"))}\n}}\n'
        storage.fill(commit.temp(targets.json), tail.encode("utf-8"), append=True)
        commit.apply(order=[targets.json, *derived_files])
    logger.info("saved graph (%d nodes, %d edges) to %s", len(graph.nodes), len(graph.edges), targets.json)
