"""Draw a Graph: Graphviz source with ranks, colours and labels, and the image.

Layout: one rank per (layer, site) in forward order (resid_pre, attn,
resid_mid, mlp, resid_post; see ``nodes.hook_position``), held in order by an
invisible chain of rank anchors; a rank wider than the row width wraps onto
several rows, so a 300-feature layer is not an 18,000 pt strip. Residual-stream
edges (resid -> resid) get a high weight so the resid features form a straight
spine. Edges are blue when the upstream node pushes the downstream one up and
red when down (``conventions``), with alpha and width by magnitude relative to
the largest feature edge (error-node edges, often the largest, are capped).
Error nodes are drawn dotted. A caption names the script, prompt, threshold
and runs, above the legend; ``metadata["summary"]`` becomes a summary node.

Big graphs degrade visibly instead of hanging or failing: above
``max_full_nodes`` nodes or ``max_label_cells`` label cells the labels are
compact, and ``dot`` always runs under a timeout. ``draw_image`` draws only
the ``max_drawn_edges`` strongest edges (the caption says so; the
``.dot``/``.json``/``.html`` keep every edge); a big or wrapped drawing is laid
out by ``dot`` without its edges and the edges are then drawn straight
between the pinned nodes (``neato -n2``), which takes seconds where dot's
edge routing took minutes. If Graphviz still runs out of time, it redraws
with compact labels and fewer edges.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sparse_coding.errors import GraphFileError
from sparse_coding.graphs.graph import Edge, Graph, Node
from sparse_coding.graphs.legend import caption_text, graph_script, legend_entries
from sparse_coding.labels.labels import caption_label, compact_label, node_label, summary_label

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("svg", "png")
SUMMARY_NODE_ID = "__summary__"
_SPINE_WEIGHT = 10
_RANKSEP_IN = 0.6
_BLUE, _RED, _GREY = "#2166ac", "#b2182b", "#969696"

Attrs = Mapping[str, str]


class RenderTimeout(GraphFileError):
    """``dot`` ran past its timeout: the graph is too big to draw in time."""


@dataclass(frozen=True)
class RenderOptions:
    """How much to draw; the defaults keep a 1,000-node graph under a minute.

    Attributes:
        max_contexts: contexts drawn per node (TOP_K); None draws all.
        max_logits: up-/down-weighted tokens drawn per node (LOGIT_TOKENS).
        max_full_nodes: above this many nodes labels are compact.
        max_label_cells: above this many token cells in all labels, compact.
        max_spline_edges: above this many edges, edges are straight lines.
        fast_layout_nodes, fast_layout_edges: above either, dot's layout
            passes are capped (a rougher layout, drawn in seconds not minutes).
        max_drawn_edges: the layout budget: the image draws at most this many
            edges, the strongest by |effect|. Measured with
            ``benchmarks/bench_render.py --budget`` (612 compact nodes, PNG)
            on a 2-core CPU: 500 / 1,000 / 2,000 / 3,000 / 4,000 edges take
            4.0 / 7.0 / 8.2 / 9.6 / 10.8 s of Graphviz CPU, 17 / 48 / 62 /
            79 / 90 s wall with the machine at load ~7: 2,000 stays within
            half the 120 s timeout even then.
        fallback_drawn_edges: edges drawn when the budgeted drawing still
            runs out of time (with compact labels).
        max_row_nodes: nodes per row before a rank wraps; None chooses it
            for a roughly 2:1 image.
        min_row_nodes: a rank never wraps below this many nodes per row.
    """

    max_contexts: int | None = None
    max_logits: int | None = None
    max_full_nodes: int = 200
    max_label_cells: int = 20_000
    max_spline_edges: int = 1_500
    fast_layout_nodes: int = 150
    fast_layout_edges: int = 400
    max_drawn_edges: int = 2_000
    fallback_drawn_edges: int = 300
    max_row_nodes: int | None = None
    min_row_nodes: int = 8


def quote(value: str) -> str:
    """A DOT double-quoted string; ``\\`` and ``"`` are escaped so it always parses."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attr_list(attrs: Mapping[str, str]) -> str:
    """``[k="v", label=<...>]``: HTML labels (``<...>``) are written as they are."""
    parts = []
    for key, value in attrs.items():
        is_html = key == "label" and value.startswith("<") and value.endswith(">")
        parts.append(f"{key}={value if is_html else quote(value)}")
    return "[" + ", ".join(parts) + "]"


def _label_cells(node: Node) -> int:
    return sum(len(c.tokens) for c in node.contexts) + len(node.logits_up) + len(node.logits_down)


def use_compact_labels(graph: Graph, options: RenderOptions) -> bool:
    """True when full labels would make the image unreadable or the layout too slow."""
    cells = sum(_label_cells(n) for n in graph.nodes.values())
    return len(graph.nodes) > options.max_full_nodes or cells > options.max_label_cells


def _compact_note(graph: Graph, options: RenderOptions) -> str:
    if options.max_full_nodes == 0:
        return "compact labels: full labels took too long to draw"
    return (
        f"compact labels: {len(graph.nodes)} nodes (full labels up to "
        f"{options.max_full_nodes} nodes / {options.max_label_cells} token cells)"
    )


def _caption_attrs(graph: Graph, notes: Sequence[str]) -> dict[str, str]:
    """The graph label: caption, notes and the legend for the graph's script, at the top."""
    legend = legend_entries(graph_script(graph.metadata))
    label = caption_label(caption_text(graph.metadata), notes, legend)
    return {"label": label, "labelloc": "t", "labeljust": "l"}


def _node_attrs(node: Node, compact: bool, options: RenderOptions) -> dict[str, str]:
    label = (
        compact_label(node)
        if compact
        else node_label(node, max_contexts=options.max_contexts, max_logits=options.max_logits)
    )
    return {"label": label, "tooltip": node.id}


def edge_colour(effect: float, largest: float) -> str:
    """Blue pushes the downstream node up, red down; alpha by magnitude (capped at ``largest``)."""
    if effect == 0 or largest <= 0:
        return _GREY + "80"
    alpha = round(255 * max(0.15, min(1.0, abs(effect) / largest)))
    return f"{_BLUE if effect > 0 else _RED}{alpha:02x}"


def _touches_error(edge: Edge, graph: Graph) -> bool:
    ends = (graph.nodes.get(edge.source), graph.nodes.get(edge.target))
    return any(node is not None and node.is_error for node in ends)


def colour_scale(graph: Graph) -> float:
    """The |effect| drawn at full colour: the largest feature edge (any edge if none)."""
    feature = [abs(e.effect) for e in graph.edges.values() if not _touches_error(e, graph)]
    return max(feature or [abs(e.effect) for e in graph.edges.values()], default=0.0)


def _edge_attrs(edge: Edge, graph: Graph, largest: float) -> dict[str, str]:
    """Colour, width and tooltip; weight 10 for the resid spine."""
    rel = min(1.0, abs(edge.effect) / largest) if largest > 0 else 0.0
    attrs = {
        "color": edge_colour(edge.effect, largest),
        "penwidth": f"{0.5 + 2.5 * rel:.2f}",
        "tooltip": f"{edge.source} → {edge.target}: effect {edge.effect:.4g}",
    }
    source, target = graph.nodes.get(edge.source), graph.nodes.get(edge.target)
    if source and target and source.site == target.site == "resid":
        attrs["weight"] = str(_SPINE_WEIGHT)
    return attrs


def row_width(n_nodes: int, options: RenderOptions) -> int:
    """Nodes per drawn row: ~sqrt(n) keeps a wrapped graph near 2:1 for boxes ~2.5x wider than tall.

    A pinned drawing refits it to the boxes' measured size (``_fitted_row_width``).
    """
    if options.max_row_nodes is not None:
        return options.max_row_nodes
    return max(options.min_row_nodes, math.ceil(math.sqrt(0.8 * n_nodes)))


def drawn_rows(graph: Graph, options: RenderOptions) -> list[list[Node]]:
    """Nodes by (layer, site) in forward order, each rank cut into rows of ``row_width``."""
    groups: dict[tuple[int, int, int], list[Node]] = {}
    for node in graph.sorted_nodes():
        groups.setdefault(node.rank_key(), []).append(node)
    width = row_width(len(graph.nodes), options)
    return [nodes[i : i + width] for nodes in groups.values() for i in range(0, len(nodes), width)]


def _rank_lines(
    rows: list[list[Node]], node_attrs: Mapping[str, Attrs], compact: bool, options: RenderOptions
) -> list[str]:
    """One ``rank=same`` subgraph per drawn row, each with an invisible anchor."""
    lines: list[str] = []
    anchors = []
    for i, nodes in enumerate(rows):
        anchor = f"__rank_{i}"
        anchors.append(anchor)
        lines.append(f"  subgraph {quote('rank_' + str(i))} {{")
        lines.append("    rank=same;")
        attrs = {
            "style": "invis",
            "shape": "point",
            "width": "0",
            "height": "0",
            "label": "",
            **node_attrs.get(anchor, {}),
        }
        lines.append(f"    {quote(anchor)} {_attr_list(attrs)};")
        for node in nodes:
            attrs = {
                **_node_attrs(node, compact, options),
                **node_attrs.get(node.id, {}),
            }
            lines.append(f"    {quote(node.id)} {_attr_list(attrs)};")
        lines.append("  }")
    for upper, lower in itertools.pairwise(anchors):
        lines.append(f"  {quote(upper)} -> {quote(lower)} [style=invis];")
    return lines


def _layout_limits(graph: Graph, options: RenderOptions) -> dict[str, str]:
    """Graphviz settings that bound layout time on big graphs.

    Measured on 1,000 nodes / 5,000 edges (2 CPU cores): x-placement by
    network simplex took 28 s of 40 and crossing minimisation 11 s; capping
    both brings the render to ~10 s. 190 nodes / 1,400 edges with full labels
    took 88 s with the defaults and 12 s capped.
    """
    limits: dict[str, str] = {}
    if len(graph.nodes) > options.fast_layout_nodes or len(graph.edges) > options.fast_layout_edges:
        limits.update({"mclimit": "0.05", "nslimit": "0.01", "searchsize": "5"})
    if len(graph.edges) > options.max_spline_edges:
        limits["splines"] = "line"
    return limits


def dot_source(
    graph: Graph,
    *,
    options: RenderOptions | None = None,
    node_attrs: Mapping[str, Attrs] | None = None,
    edge_attrs: Mapping[tuple[str, str], Attrs] | None = None,
    graph_attrs: Attrs | None = None,
    notes: Sequence[str] = (),
    positions: Mapping[str, str] | None = None,
) -> str:
    """Graphviz source for a graph, deterministic for the same graph.

    Args:
        graph: the graph to draw.
        options: label sizes and degradation thresholds.
        node_attrs, edge_attrs, graph_attrs: extra attributes (e.g. the
            machine-readable data written by ``graph_files``) merged into the
            drawn ones; they win on a clash.
        notes: extra caption lines (e.g. which edges the image leaves out).
        positions: node name -> ``"x,y"`` (points, from ``layout_boxes``): every
            node is pinned there and edges are straight (``neato -n2``).

    Returns:
        DOT text; nodes and edges in the graph's canonical order.
    """
    options = options or RenderOptions()
    compact = use_compact_labels(graph, options)
    notes = list(notes)
    if compact:
        notes.append(_compact_note(graph, options))
    top = {
        "rankdir": "TB",
        "newrank": "true",
        "charset": "UTF-8",
        "fontname": "Helvetica",
        "ranksep": str(_RANKSEP_IN),
    }
    top.update(_layout_limits(graph, options) if positions is None else {"splines": "line"})
    top.update(_caption_attrs(graph, notes))
    top.update(graph_attrs or {})
    lines = ["digraph cognition {", f"  graph {_attr_list(top)};"]
    lines.append('  node [shape=plain, fontname="Helvetica", fontsize="11"];')
    lines.append("  edge [arrowsize=0.6];")
    pins = {name: {"pos": f"{xy}!"} for name, xy in (positions or {}).items()}
    if summary := graph.metadata.get("summary"):
        attrs = {"shape": "note", "sc_role": "summary", "label": summary_label(str(summary))}
        lines.append(f"  {quote(SUMMARY_NODE_ID)} {_attr_list({**attrs, **pins.get(SUMMARY_NODE_ID, {})})};")
    lines += _rank_lines(drawn_rows(graph, options), {**pins, **(node_attrs or {})}, compact, options)
    largest = colour_scale(graph)
    for edge in graph.sorted_edges():
        attrs = {
            **_edge_attrs(edge, graph, largest),
            **(edge_attrs or {}).get((edge.source, edge.target), {}),
        }
        lines.append(f"  {quote(edge.source)} -> {quote(edge.target)} {_attr_list(attrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def image_format(image_path: Path) -> str:
    """``svg`` or ``png`` from the file extension; anything else is a user error."""
    fmt = image_path.suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS:
        choices = [f".{f}" for f in IMAGE_FORMATS]
        raise GraphFileError(
            f"image file {image_path} has extension {image_path.suffix!r}; use one of {choices}"
        )
    return fmt


def _run_graphviz(command: list[str], source_path: Path, timeout_s: float) -> str:
    """Run a Graphviz program on ``source_path`` under a timeout; returns its stdout.

    Raises:
        RenderTimeout: it ran past ``timeout_s``.
        GraphFileError: Graphviz is missing or the program failed.
    """
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as e:
        raise GraphFileError(
            "the Graphviz 'dot' program is not installed (Debian: apt-get install graphviz)"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise RenderTimeout(
            f"dot took longer than {timeout_s:.0f} s to draw the graph (too big to draw in time; "
            f"raise the timeout or draw fewer nodes)"
        ) from e
    if result.returncode != 0:
        raise GraphFileError(f"dot could not draw {source_path}: {result.stderr.strip()[:500]}")
    if result.stderr.strip():
        logger.info("%s: %s", command[0], result.stderr.strip()[:500])
    logger.info("%s drew %s in %.1f s", command[0], source_path.name, time.perf_counter() - start)
    return result.stdout


def render_image(
    source_path: Path, image_path: Path, *, fmt: str, timeout_s: float = 120.0, pinned: bool = False
) -> None:
    """Draw a source file into ``image_path`` with ``dot`` (or, ``pinned``, at its nodes' ``pos``).

    Raises:
        RenderTimeout: Graphviz ran past ``timeout_s``.
        GraphFileError: Graphviz is missing or failed.
    """
    engine = ["neato", "-n2"] if pinned else ["dot"]
    _run_graphviz([*engine, f"-T{fmt}", "-o", str(image_path), str(source_path)], source_path, timeout_s)


class Box(NamedTuple):
    """A node as ``dot`` laid it out: centre and size, in points."""

    x: float
    y: float
    width: float
    height: float


def layout_boxes(source_path: Path, timeout_s: float) -> dict[str, Box]:
    """Every node's box as ``dot`` lays out the source."""
    laid_out = json.loads(_run_graphviz(["dot", "-Tjson", str(source_path)], source_path, timeout_s))
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
    k = math.sqrt(2 * n_nodes * (height + 72 * _RANKSEP_IN) / max(width, 1.0))
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


def _draw_once(graph: Graph, image_path: Path, fmt: str, options: RenderOptions, timeout_s: float) -> None:
    """Draw the strongest ``options.max_drawn_edges`` edges of ``graph`` into ``image_path``."""
    shown = strongest_edges(graph, options.max_drawn_edges)
    notes = _pruning_note(shown, graph)
    if use_compact_labels(shown, options):
        logger.warning("drawing %d nodes with compact labels to stay readable", len(shown.nodes))
    if notes:
        logger.warning("graph has %d edges: %s", len(graph.edges), notes[0])
    with tempfile.TemporaryDirectory(prefix="sc_draw_") as folder:
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
) -> None:
    """Draw a graph's image within the layout budget; size alone never fails it.

    Draws the strongest ``max_drawn_edges`` edges; if ``dot`` still runs past
    ``timeout_s``, redraws once with compact labels and
    ``fallback_drawn_edges`` edges. The caption says what was left out.

    Raises:
        GraphFileError: dot is missing or failed, or even the fallback timed out.
    """
    options = options or RenderOptions()
    try:
        _draw_once(graph, image_path, fmt, options, timeout_s)
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
        _draw_once(graph, image_path, fmt, fallback, timeout_s)
