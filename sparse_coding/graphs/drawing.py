"""Draw a graph's image within a layout budget; size alone never fails a run (issue 17).

``draw_image`` draws only the ``max_drawn_edges`` strongest edges and the
nodes they join (the caption says so; the ``.dot``/``.json``/``.html`` keep
every edge). A big or wrapped drawing is laid out by ``dot`` without its
edges, with rows fitted to the boxes' measured size for a ~2:1 image, and the
edges are then drawn straight between the pinned nodes (``neato -n2``):
seconds, where dot's routing of hundreds of edges through every row took
minutes and stretched the rows to tens of thousands of points. If Graphviz
still runs out of time, it redraws with compact labels and fewer edges.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.render import (
    RANKSEP_IN,
    RenderOptions,
    RenderTimeout,
    dot_source,
    drawn_rows,
    render_image,
    run_graphviz,
    use_compact_labels,
)

logger = logging.getLogger(__name__)


class Box(NamedTuple):
    """A node as ``dot`` laid it out: centre and size, in points."""

    x: float
    y: float
    width: float
    height: float


def layout_boxes(source_path: Path, timeout_s: float) -> dict[str, Box]:
    """Every node's box as ``dot`` lays out the source (json0: positions and sizes without the
    drawing operations, an eighth of json's bytes and a third of its time for 330 labelled boxes)."""
    laid_out = json.loads(run_graphviz(["dot", "-Tjson0", str(source_path)], source_path, timeout_s))
    boxes = {}
    for o in laid_out.get("objects", []):
        if "pos" in o:
            x, y = (float(v) for v in o["pos"].split(","))
            boxes[o["name"]] = Box(x, y, 72 * float(o.get("width", 0)), 72 * float(o.get("height", 0)))
    return boxes


def _fitted_row_width(boxes: Mapping[str, Box], n_nodes: int, options: RenderOptions) -> int:
    """Nodes per row for a ~2:1 image from the boxes' median size: k w = 2 (n / k) (h + ranksep)."""
    sizes = sorted((b.width, b.height) for name, b in boxes.items() if not name.startswith("__"))
    width, height = sizes[len(sizes) // 2] if sizes else (1.0, 1.0)
    k = math.sqrt(2 * n_nodes * (height + 72 * RANKSEP_IN) / max(width, 1.0))
    return max(options.min_row_nodes, math.ceil(k))


def strongest_edges(graph: Graph, n_edges: int) -> Graph:
    """The graph with only its ``n_edges`` largest-|effect| edges and the nodes they join.

    Nodes that have no edge in the whole graph stay; nodes whose every edge
    was cut go, as in the viewer's slider.
    """
    if len(graph.edges) <= n_edges:
        return graph
    kept = sorted(graph.edges.values(), key=lambda e: -abs(e.effect))[:n_edges]
    joined = {e.source for e in kept} | {e.target for e in kept}
    with_edges = {e.source for e in graph.edges.values()} | {e.target for e in graph.edges.values()}
    nodes = {k: n for k, n in graph.nodes.items() if k in joined or k not in with_edges}
    return Graph(nodes=nodes, edges={(e.source, e.target): e for e in kept}, metadata=graph.metadata)


def _pruning_note(shown: Graph, graph: Graph) -> list[str]:
    if len(shown.edges) == len(graph.edges):
        return []
    weakest = min((abs(e.effect) for e in shown.edges.values()), default=0.0)
    return [
        f"image shows the {len(shown.edges):,} strongest of {len(graph.edges):,} edges "
        f"(|effect| >= {weakest:.3g}) and {len(shown.nodes):,} of {len(graph.nodes):,} nodes; "
        f"the .json, .dot and .html hold them all"
    ]


def pinned_layout(graph: Graph, options: RenderOptions) -> bool:
    """Big or wrapped drawings place nodes without their edges, then draw edges as straight lines.

    dot routes every edge through each row it crosses, so with hundreds of
    edges per row (or rows wrapped, where an edge crosses many) the rows
    stretch side by side to tens of thousands of points and the layout takes
    minutes; laying out the nodes alone takes seconds.
    """
    wrapped = len(drawn_rows(graph, options)) > len({node.rank_key() for node in graph.nodes.values()})
    return wrapped or use_compact_labels(graph, options) or len(graph.edges) > options.max_spline_edges


def _pinned_positions(
    graph: Graph, notes: list[str], options: RenderOptions, path: Path, timeout_s: float
) -> tuple[dict[str, str], RenderOptions]:
    """Lay out the nodes alone, rows fitted to the boxes' measured size: (name -> "x,y", options used)."""
    nodes_only = Graph(nodes=graph.nodes, metadata=graph.metadata)
    if options.max_row_nodes is None:
        path.write_text(dot_source(nodes_only, options=options, notes=notes), encoding="utf-8")
        width = _fitted_row_width(layout_boxes(path, timeout_s), len(graph.nodes), options)
        options = dataclasses.replace(options, max_row_nodes=width)
    path.write_text(dot_source(nodes_only, options=options, notes=notes), encoding="utf-8")
    return {name: f"{b.x},{b.y}" for name, b in layout_boxes(path, timeout_s).items()}, options


def _draw_once(
    graph: Graph, image_path: Path, fmt: str, options: RenderOptions, timeout_s: float, work_dir: Path | None
) -> None:
    """Draw the strongest ``options.max_drawn_edges`` edges of ``graph`` into ``image_path``."""
    shown = strongest_edges(graph, options.max_drawn_edges)
    notes = _pruning_note(shown, graph)
    if use_compact_labels(shown, options):
        logger.warning("drawing %d nodes with compact labels to stay readable", len(shown.nodes))
    if notes:
        logger.warning("graph has %d edges: %s", len(graph.edges), notes[0])
    with tempfile.TemporaryDirectory(prefix="sc_draw_", dir=work_dir) as folder:
        source_path = Path(folder) / "drawing.dot"
        positions = None
        if pinned := pinned_layout(shown, options):
            positions, options = _pinned_positions(shown, notes, options, source_path, timeout_s)
        source = dot_source(shown, options=options, notes=notes, positions=positions)
        source_path.write_text(source, encoding="utf-8")
        render_image(source_path, image_path, fmt=fmt, timeout_s=timeout_s, pinned=pinned)


def draw_image(
    graph: Graph,
    image_path: Path,
    *,
    fmt: str,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
    work_dir: Path | None = None,
) -> None:
    """Draw a graph's image within the layout budget; size alone never fails it.

    Draws the strongest ``max_drawn_edges`` edges; if ``dot`` still runs past
    ``timeout_s``, redraws once with compact labels and
    ``fallback_drawn_edges`` edges. The caption says what was left out.
    Graphviz's source files go to a temp folder inside `work_dir` (default:
    the system's temp folder), removed afterwards.

    Raises:
        GraphFileError: dot is missing or failed, or even the fallback timed out.
    """
    options = options or RenderOptions()
    try:
        _draw_once(graph, image_path, fmt, options, timeout_s, work_dir)
    except RenderTimeout:
        logger.warning(
            "dot timed out after %.0f s; redrawing with compact labels and the %d strongest edges",
            timeout_s,
            options.fallback_drawn_edges,
        )
        fallback = dataclasses.replace(
            options,
            max_full_nodes=0,
            max_label_cells=0,
            max_spline_edges=0,
            fast_layout_nodes=0,
            max_drawn_edges=min(options.max_drawn_edges, options.fallback_drawn_edges),
        )
        _draw_once(graph, image_path, fmt, fallback, timeout_s, work_dir)
