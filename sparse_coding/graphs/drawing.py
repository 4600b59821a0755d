"""Draw a graph's image: the graph first, its caption and legend beside or below it.

``draw_image`` works in three steps, each a Graphviz call under a timeout:

1. lay out the graph alone (``dot -Tjson0``): node boxes and, for small
   graphs, dot's edge splines. A big or wrapped graph is laid out without its
   edges, rows fitted to the boxes' measured size for a ~2:1 picture, and its
   edges are later drawn straight: dot routes every edge through each row it
   crosses, which stretches rows side by side and makes the layout slow;
2. measure the caption + legend block wrapped two ways, beside the graph (a
   narrow column) or below it (the graph's width), and keep the arrangement
   that shows the graph largest in a 4:3 window;
3. draw everything at those positions (``neato -n2``), scaled down to fit
   ``RenderOptions.max_inches`` so that the picture opens whole on a screen.

Only the ``max_drawn_edges`` strongest edges are drawn (the caption says so;
the ``.dot``/``.json``/``.html`` keep every edge). If Graphviz still runs out
of time, the image is redrawn with compact labels and fewer edges, so size
alone never fails a run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import NamedTuple

from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.render import (
    RANKSEP_IN,
    Placement,
    RenderOptions,
    RenderTimeout,
    dot_source,
    drawn_rank,
    drawn_rows,
    legend_markup,
    quote,
    render_image,
    run_graphviz,
    use_compact_labels,
)

logger = logging.getLogger(__name__)

_GAP_PT = 24.0  # between the graph and its legend block
_CHAR_PT = 5.4  # width of one 9-10 pt Helvetica character, for wrapping the block to the graph's width
_WINDOW = (4.0, 3.0)  # the screen shape the arrangement is chosen for


class Box(NamedTuple):
    """A node as ``dot`` laid it out: centre and size, in points."""

    x: float
    y: float
    width: float
    height: float


class Layout(NamedTuple):
    """The graph laid out alone: boxes by node name, dot's edge splines (none: straight), its size."""

    boxes: dict[str, Box]
    splines: dict[tuple[str, str], str]
    width: float
    height: float


def layout(source_path: Path, timeout_s: float) -> Layout:
    """Boxes, edge splines and bounding box of a source as ``dot`` lays it out (json0: positions and
    sizes without the drawing operations, much smaller and faster than json)."""
    laid_out = json.loads(run_graphviz(["dot", "-Tjson0", str(source_path)], source_path, timeout_s))
    boxes, names = {}, {}
    for o in laid_out.get("objects", []):
        if "pos" in o:
            x, y = (float(v) for v in o["pos"].split(","))
            boxes[o["name"]] = Box(x, y, 72 * float(o.get("width", 0)), 72 * float(o.get("height", 0)))
            names[o["_gvid"]] = o["name"]
    splines = {
        (names[e["tail"]], names[e["head"]]): e["pos"]
        for e in laid_out.get("edges", [])
        if "pos" in e and e.get("style") != "invis"
    }
    _, _, width, height = (float(v) for v in laid_out.get("bb", "0,0,0,0").split(","))
    return Layout(boxes, splines, width, height)


def _fitted_row_width(boxes: dict[str, Box], n_nodes: int, options: RenderOptions) -> int:
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
    stretch side by side and the layout is slow; the nodes alone are quick.
    """
    wrapped = len(drawn_rows(graph, options)) > len({drawn_rank(node) for node in graph.nodes.values()})
    return wrapped or use_compact_labels(graph, options) or len(graph.edges) > options.max_spline_edges


def _graph_layout(
    graph: Graph, options: RenderOptions, path: Path, timeout_s: float
) -> tuple[Layout, RenderOptions]:
    """The graph laid out alone (no caption): with dot's edges, or nodes only when `pinned_layout`."""
    if not pinned_layout(graph, options):
        path.write_text(dot_source(graph, options=options, legend=False), encoding="utf-8")
        return layout(path, timeout_s), options
    nodes_only = Graph(nodes=graph.nodes, metadata=graph.metadata)
    if options.max_row_nodes is None:
        path.write_text(dot_source(nodes_only, options=options, legend=False), encoding="utf-8")
        width = _fitted_row_width(layout(path, timeout_s).boxes, len(graph.nodes), options)
        options = dataclasses.replace(options, max_row_nodes=width)
    path.write_text(dot_source(nodes_only, options=options, legend=False), encoding="utf-8")
    return layout(path, timeout_s), options


def _window_scale(width: float, height: float, options: RenderOptions) -> float:
    """How much a drawing of `width` x `height` points shrinks to fit a 4:3 window of max_inches."""
    window_w = 72 * options.max_inches
    window_h = window_w * _WINDOW[1] / _WINDOW[0]
    return min(1.0, window_w / max(width, 1.0), window_h / max(height, 1.0))


def _place_legend(
    graph: Graph, notes: list[str], graph_box: Layout, options: RenderOptions, path: Path, timeout_s: float
) -> Placement:
    """The legend block beside the graph (a column) or below it (the graph's width), whichever shows the
    graph larger in a 4:3 window; measured by laying out both wrappings once."""
    beside_chars = options.legend_chars
    below_chars = max(beside_chars, int(graph_box.width / _CHAR_PT))
    blocks = {
        "beside": legend_markup(graph, notes, beside_chars),
        "below": legend_markup(graph, notes, below_chars),
    }
    lines = [f"  {quote(name)} [label={label}];" for name, label in blocks.items()]
    source = "digraph legend {\n  node [shape=plain];\n" + "\n".join(lines) + "\n}\n"
    path.write_text(source, encoding="utf-8")
    sizes = layout(path, timeout_s).boxes
    w, h = graph_box.width, graph_box.height
    beside, below = sizes["beside"], sizes["below"]
    beside_scale = _window_scale(w + _GAP_PT + beside.width, max(h, beside.height), options)
    below_scale = _window_scale(max(w, below.width), h + _GAP_PT + below.height, options)
    if beside_scale >= below_scale:
        centre = (w + _GAP_PT + beside.width / 2, h - beside.height / 2)
        return Placement(f"{centre[0]:.2f},{centre[1]:.2f}", beside_chars)
    centre = (below.width / 2, -_GAP_PT - below.height / 2)
    return Placement(f"{centre[0]:.2f},{centre[1]:.2f}", below_chars)


def _draw_once(
    graph: Graph, image_path: Path, fmt: str, options: RenderOptions, timeout_s: float, work_dir: Path | None
) -> None:
    """Draw the strongest ``options.max_drawn_edges`` edges of ``graph`` into ``image_path``."""
    shown = strongest_edges(graph, options.max_drawn_edges)
    notes = _pruning_note(shown, graph)
    if use_compact_labels(shown, options):
        logger.info("drawing %d nodes with compact labels to stay readable", len(shown.nodes))
    if notes:
        logger.info("graph has %d edges: %s", len(graph.edges), notes[0])
    with tempfile.TemporaryDirectory(prefix="sc_draw_", dir=work_dir) as folder:
        source_path = Path(folder) / "drawing.dot"
        laid_out, options = _graph_layout(shown, options, source_path, timeout_s)
        placement = _place_legend(shown, notes, laid_out, options, source_path, timeout_s)
        positions = {name: f"{b.x:.2f},{b.y:.2f}" for name, b in laid_out.boxes.items()}
        size = {"size": f"{options.max_inches:.2f},{options.max_inches * _WINDOW[1] / _WINDOW[0]:.2f}"}
        source = dot_source(
            shown,
            options=options,
            notes=notes,
            positions=positions,
            splines=laid_out.splines,
            legend=placement,
            graph_attrs=size | ({"dpi": str(options.png_dpi)} if fmt == "png" else {}),
        )
        source_path.write_text(source, encoding="utf-8")
        render_image(source_path, image_path, fmt=fmt, timeout_s=timeout_s, pinned=True)


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
