"""Draw a graph's image: the graph first, its caption and legend beside or below it.

1. lay out the graph alone: a small graph by ``dot -Tjson0`` (boxes and
   dot's edge splines); a big or wrapped one here, as dot places rows without
   edges, each box sized by `label_size`, its edges drawn straight (dot would
   route every edge through each row it crosses, stretching the rows);
2. place the caption + legend block beside or below the graph, whichever
   shows the graph larger in a 4:3 window;
3. draw everything at those positions (``neato -n2``), scaled to fit
   ``RenderOptions.max_inches``.

Only the ``max_drawn_edges`` strongest edges are drawn (the caption says so);
if Graphviz still runs out of time, the image is redrawn with compact labels
and fewer edges, so size alone never fails a run.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sparse_coding.graphs.graph import Graph
from sparse_coding.graphs.graphviz import RenderTimeout, render_image, run_graphviz
from sparse_coding.graphs.label_size import label_size
from sparse_coding.graphs.render import (
    RANKSEP_IN,
    Placement,
    RenderOptions,
    caption_notes,
    dot_source,
    drawn_rank,
    drawn_rows,
    legend_markup,
    node_markup,
    use_compact_labels,
)

logger = logging.getLogger(__name__)

_GAP_PT = 24.0  # between the graph and its legend block
_NODESEP_PT = 18.0  # between boxes of a row: dot's default nodesep, 0.25 in
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


def _fitted_row_width(sizes: list[tuple[float, float]], options: RenderOptions) -> int:
    """Nodes per row for a ~2:1 image from the boxes' median size: k w = 2 (n / k) (h + ranksep)."""
    width, height = sorted(sizes)[len(sizes) // 2] if sizes else (1.0, 1.0)
    k = math.sqrt(2 * len(sizes) * (height + 72 * RANKSEP_IN) / max(width, 1.0))
    return max(options.min_row_nodes, math.ceil(k))


def row_layout(graph: Graph, options: RenderOptions) -> tuple[Layout, RenderOptions]:
    """Boxes in rows as dot places nodes alone: each row left to right from its (invisible) anchor at
    x = 0, centred on one line; rows top to bottom, ``ranksep`` apart. Without `max_row_nodes`, rows are
    fitted for a ~2:1 picture."""
    compact = use_compact_labels(graph, options)
    sizes = {node.id: label_size(node_markup(node, compact, options)) for node in graph.nodes.values()}
    if options.max_row_nodes is None:
        options = dataclasses.replace(options, max_row_nodes=_fitted_row_width(list(sizes.values()), options))
    boxes, top, right = {}, 0.0, 0.0
    for i, row in enumerate(drawn_rows(graph, options)):
        height = max(sizes[node.id][1] for node in row)
        y, x = top - height / 2, 0.0
        boxes[f"__rank_{i}"] = Box(0.0, y, 0.0, 0.0)
        for node in row:
            width = sizes[node.id][0]
            boxes[node.id] = Box(x + _NODESEP_PT + width / 2, y, width, height)
            x += _NODESEP_PT + width
        top, right = top - height - 72 * RANKSEP_IN, max(right, x)
    bottom = top + 72 * RANKSEP_IN  # y = 0 at the lowest row's bottom, as in dot's coordinates
    boxes = {name: b._replace(y=b.y - bottom, height=sizes.get(name, (0, 0))[1]) for name, b in boxes.items()}
    return Layout(boxes, {}, right, -bottom), options


def strongest_edges(graph: Graph, n_edges: int) -> Graph:
    """The graph with only its ``n_edges`` largest-|effect| edges and the nodes they join.

    Nodes that have no edge in the whole graph stay; nodes whose every edge
    was cut go, as in the viewer's slider.
    """
    if len(graph.edges) <= n_edges:
        return graph
    kept = heapq.nlargest(n_edges, graph.edges.values(), key=lambda e: abs(e.effect))
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
    """Big or wrapped drawings place nodes without their edges, then draw edges straight (see above)."""
    wrapped = len(drawn_rows(graph, options)) > len({drawn_rank(node) for node in graph.nodes.values()})
    return wrapped or use_compact_labels(graph, options) or len(graph.edges) > options.max_spline_edges


def _window_scale(width: float, height: float, options: RenderOptions) -> float:
    """How much a drawing of `width` x `height` points shrinks to fit a 4:3 window of max_inches."""
    window_w = 72 * options.max_inches
    window_h = window_w * _WINDOW[1] / _WINDOW[0]
    return min(1.0, window_w / max(width, 1.0), window_h / max(height, 1.0))


def _place_legend(graph: Graph, notes: list[str], graph_box: Layout, options: RenderOptions) -> Placement:
    """The legend block beside the graph (a column) or below it (the graph's width), whichever shows the
    graph larger in a 4:3 window; both wrappings sized by `label_size`."""
    beside_chars = options.legend_chars
    below_chars = max(beside_chars, int(graph_box.width / _CHAR_PT))
    notes = caption_notes(graph, notes, options)  # as `dot_source` writes them
    beside = label_size(legend_markup(graph, notes, beside_chars))
    below = label_size(legend_markup(graph, notes, below_chars))
    w, h = graph_box.width, graph_box.height
    beside_scale = _window_scale(w + _GAP_PT + beside[0], max(h, beside[1]), options)
    below_scale = _window_scale(max(w, below[0]), h + _GAP_PT + below[1], options)
    if beside_scale >= below_scale:
        return Placement(f"{w + _GAP_PT + beside[0] / 2:.2f},{h - beside[1] / 2:.2f}", beside, beside_chars)
    return Placement(f"{below[0] / 2:.2f},{-_GAP_PT - below[1] / 2:.2f}", below, below_chars)


@dataclass
class Drawing:
    """An image drawn in two steps: `prepare` lays it out and writes Graphviz's source, `render` runs
    Graphviz on it, so that a caller can write other files meanwhile (`graph_writer`). The source goes
    to a temp folder inside `work_dir` (default: the system's), removed once drawn."""

    graph: Graph
    image_path: Path
    fmt: str
    options: RenderOptions = field(default_factory=RenderOptions)
    timeout_s: float = 120.0
    work_dir: Path | None = None
    source_path: Path | None = None
    fell_back: bool = False

    def prepare(self) -> None:
        """Lay the graph out and write the source that draws it; GraphFileError if Graphviz is missing
        or failed, or even the fallback timed out."""
        if self.source_path is None:
            self.source_path = Path(tempfile.mkdtemp(prefix="sc_draw_", dir=self.work_dir)) / "drawing.dot"
        try:
            try:
                self._write_source()
            except RenderTimeout as e:
                self._fall_back(e)
                self._write_source()
        except BaseException:
            shutil.rmtree(self.source_path.parent, ignore_errors=True)
            raise

    def render(self) -> None:
        """Draw the prepared source into the image (again with fewer edges if Graphviz runs out of time);
        raises as `prepare`."""
        assert self.source_path is not None, "prepare() first"
        try:
            try:
                self._render()
            except RenderTimeout as e:
                self._fall_back(e)
                self._write_source()
                self._render()
        finally:
            shutil.rmtree(self.source_path.parent, ignore_errors=True)

    def _fall_back(self, timeout: RenderTimeout) -> None:
        """Switch to the fallback drawing, once; a second timeout is raised."""
        if self.fell_back:
            raise timeout
        logger.warning(
            "dot timed out after %.0f s; redrawing with compact labels and the %d strongest edges",
            self.timeout_s,
            self.options.fallback_drawn_edges,
        )
        self.fell_back = True
        self.options = dataclasses.replace(
            self.options,
            max_full_nodes=0,
            max_label_cells=0,
            max_spline_edges=0,
            fast_layout_nodes=0,
            max_drawn_edges=min(self.options.max_drawn_edges, self.options.fallback_drawn_edges),
        )

    def _render(self) -> None:
        assert self.source_path is not None
        render_image(self.source_path, self.image_path, fmt=self.fmt, timeout_s=self.timeout_s, pinned=True)

    def _write_source(self) -> None:
        assert self.source_path is not None
        shown = strongest_edges(self.graph, self.options.max_drawn_edges)
        notes = _pruning_note(shown, self.graph)
        if use_compact_labels(shown, self.options):
            logger.info("drawing %d nodes with compact labels to stay readable", len(shown.nodes))
        if notes:
            logger.info("graph has %d edges: %s", len(self.graph.edges), notes[0])
        if pinned_layout(shown, self.options):
            laid_out, options = row_layout(shown, self.options)
        else:  # laid out alone (no caption) by dot, with its edges
            self.source_path.write_text(
                dot_source(shown, options=self.options, legend=False), encoding="utf-8"
            )
            laid_out, options = layout(self.source_path, self.timeout_s), self.options
        placement = _place_legend(shown, notes, laid_out, options)
        positions = {name: f"{b.x:.2f},{b.y:.2f}" for name, b in laid_out.boxes.items()}
        size = {"size": f"{options.max_inches:.2f},{options.max_inches * _WINDOW[1] / _WINDOW[0]:.2f}"}
        source = dot_source(
            shown,
            options=options,
            notes=notes,
            positions=positions,
            splines=laid_out.splines,
            legend=placement,
            graph_attrs=size | ({"dpi": str(options.png_dpi)} if self.fmt == "png" else {}),
        )
        self.source_path.write_text(source, encoding="utf-8")


def draw_image(
    graph: Graph,
    image_path: Path,
    *,
    fmt: str,
    options: RenderOptions | None = None,
    timeout_s: float = 120.0,
    work_dir: Path | None = None,
) -> None:
    """Draw a graph's image within the layout budget; raises as `Drawing.prepare`."""
    drawing = Drawing(graph, image_path, fmt, options or RenderOptions(), timeout_s, work_dir)
    drawing.prepare()
    drawing.render()
