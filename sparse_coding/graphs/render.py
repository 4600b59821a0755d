"""Graphviz source for a Graph: ranks, colours, labels, caption and legend (`graphviz` runs Graphviz on it).

One rank per (layer, site) in forward order (``nodes.hook_position``), held
in order by an invisible chain of rank anchors; a rank wider than the row
width wraps onto several rows, so a 300-feature layer is not an 18,000 pt
strip. Resid -> resid edges get a high weight so the resid features form a
straight spine. Edges are blue when positive, red when negative, with alpha
and width by magnitude relative to the largest feature edge (error-node
edges, often the largest, are capped). Above ``max_full_nodes`` nodes or
``max_label_cells`` label cells the labels are compact.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sparse_coding.graphs.graph import Edge, Graph, Node
from sparse_coding.graphs.legend import caption_lines, legend_entries
from sparse_coding.graphs.markup import compact_label, legend_label, node_label, top_left

logger = logging.getLogger(__name__)

POSITIONED_ROW = 16  # nodes of one per token per drawn row before their rank wraps: a 16-token prompt
RANKSEP_IN = 0.6
_BLUE, _RED, _GREY = "#2166ac", "#b2182b", "#969696"

Attrs = Mapping[str, str]
_ANCHOR_ATTRS = {"style": "invis", "shape": "point", "width": "0", "height": "0", "label": ""}
_GRAPH_ATTRS = {
    "rankdir": "TB",
    "newrank": "true",
    "charset": "UTF-8",
    "fontname": "Helvetica",
    "ranksep": str(RANKSEP_IN),
}


class Placement(NamedTuple):
    """Where the caption + legend block goes in a pinned drawing: the centre (``"x,y"``, points) and
    size (points) of the box it is drawn at the top left of, and the characters per line it is wrapped to."""

    pos: str
    size: tuple[float, float]
    chars: int


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
            passes are capped (a rougher layout, drawn much sooner).
        max_drawn_edges: the layout budget: the image draws at most this many
            edges, the strongest by |effect|; chosen with
            ``benchmarks/bench_render.py --budget`` (docs/benchmarks.md) to stay
            well within the Graphviz timeout on a loaded 2-core CPU.
        fallback_drawn_edges: edges drawn when the budgeted drawing still
            runs out of time (with compact labels).
        max_row_nodes: nodes per row before a rank wraps; None chooses it
            for a roughly 2:1 image.
        min_row_nodes: a rank never wraps below this many nodes per row.
        max_inches: an image wider than this (or taller than 3/4 of it) is
            scaled down to fit, so that it opens whole in a 1600 x 1200 px window.
        png_dpi: pixels per inch of PNG images (twice a screen's 96: sharp when zoomed).
        legend_chars: characters per line of a legend placed beside the graph.
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
    max_inches: float = 16.0
    png_dpi: int = 192
    legend_chars: int = 60


def quote(value: str) -> str:
    """A DOT double-quoted string; ``\\`` and ``"`` are escaped so it always parses."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


HTML_KEYS = {"label", "xlabel", "headlabel", "taillabel"}  # the attributes Graphviz reads HTML in


def attr_list(attrs: Mapping[str, str]) -> str:
    """``[k="v", label=<...>]``: HTML labels (``<...>``) are written as they are."""
    parts = []
    for key, value in attrs.items():
        is_html = key in HTML_KEYS and value.startswith("<") and value.endswith(">")
        parts.append(f"{key}={value if is_html else quote(value)}")
    return "[" + ", ".join(parts) + "]"


def use_compact_labels(graph: Graph, options: RenderOptions) -> bool:
    """True when full labels would make the image unreadable or the layout too slow."""
    nodes = graph.nodes.values()
    cells = sum(sum(len(c.tokens) for c in n.contexts) + len(n.logits_up) + len(n.logits_down) for n in nodes)
    return len(graph.nodes) > options.max_full_nodes or cells > options.max_label_cells


def caption_notes(graph: Graph, notes: Sequence[str], options: RenderOptions) -> list[str]:
    """The caption's notes: `notes`, and a note saying so when the labels are compact."""
    if not use_compact_labels(graph, options):
        return list(notes)
    if options.max_full_nodes == 0:
        return [*notes, "compact labels: full labels took too long to draw"]
    return [
        *notes,
        f"compact labels: {len(graph.nodes)} nodes (full labels up to "
        f"{options.max_full_nodes} nodes / {options.max_label_cells} token cells)",
    ]


def legend_markup(graph: Graph, notes: Sequence[str], chars: int) -> str:
    """The caption + legend block of a graph as an HTML-like label, wrapped at `chars` characters."""
    return legend_label(caption_lines(graph.metadata), notes, legend_entries(graph.metadata), chars)


# Node label markup by (node id, compact, max_contexts, max_logits), while `shared_labels` is open.
_LABELS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("sparse_coding_labels", default=None)


@contextlib.contextmanager
def shared_labels() -> Iterator[None]:
    """Build each node's label once for all the `dot_source` calls inside (one save writes the
    .dot and lays out the image several times)."""
    token = _LABELS.set({})
    try:
        yield
    finally:
        _LABELS.reset(token)


def node_markup(node: Node, compact: bool, options: RenderOptions) -> str:
    """The node's HTML-like label, built once per node while `shared_labels` is open."""
    cache, key = _LABELS.get(), (node.id, compact, options.max_contexts, options.max_logits)
    label = cache.get(key) if cache is not None else None
    if label is None:
        label = (
            compact_label(node)
            if compact
            else node_label(node, max_contexts=options.max_contexts, max_logits=options.max_logits)
        )
        if cache is not None:
            cache[key] = label
    return label


_ALPHAS = [f"{alpha:02x}" for alpha in range(256)]  # formatted once: a write colours every edge twice


def edge_colour(effect: float, largest: float) -> str:
    """Blue pushes the downstream node up, red down; alpha by magnitude (capped at ``largest``)."""
    if effect == 0 or largest <= 0:
        return _GREY + "80"
    share = abs(effect) / largest
    alpha = 38 if share <= 0.15 else 255 if share >= 1 else round(255 * share)  # 38 = round(255 * 0.15)
    return (_BLUE if effect > 0 else _RED) + _ALPHAS[alpha]


def colour_scale(graph: Graph) -> float:
    """The |effect| drawn at full colour: the largest feature edge (any edge if none)."""
    errors = {node.id for node in graph.nodes.values() if node.is_error}
    edges = graph.edges.values()
    feature = [abs(e.effect) for e in edges if e.source not in errors and e.target not in errors]
    return max(feature or [abs(e.effect) for e in edges], default=0.0)


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
        attrs["weight"] = "10"
    return attrs


def drawn_rank(node: Node) -> tuple[int, int]:
    """The rank a node is drawn in: its layer and place in the block (a transcoder layer's features
    and MLP error nodes share one)."""
    return node.rank_key()[:2]


def drawn_rows(graph: Graph, options: RenderOptions) -> list[list[Node]]:
    """Nodes by layer and place in the block in forward order (a transcoder layer's features and MLP
    errors together), each rank cut into rows of ``max_row_nodes``. Positioned nodes keep token order, and
    a rank of one node per token wraps only past ``POSITIONED_ROW`` nodes, so a short prompt's embeddings
    stay on one row."""
    groups: dict[tuple[int, int], list[Node]] = {}
    for node in graph.sorted_nodes():
        groups.setdefault(drawn_rank(node), []).append(node)
    width = options.max_row_nodes
    if width is None:  # ~sqrt(n) keeps a wrapped graph near 2:1 for boxes ~2.5x wider than tall
        width = max(options.min_row_nodes, math.ceil(math.sqrt(0.8 * len(graph.nodes))))
    rows = []
    for nodes in groups.values():
        positions = [node.position for node in nodes]
        size = width
        if None not in positions:
            nodes = sorted(nodes, key=lambda node: node.position)  # stable: forward order within a token
            if len(set(positions)) == len(positions):  # one node per token (the embeddings): a token row
                size = max(width, min(len(nodes), POSITIONED_ROW))
        rows += [nodes[i : i + size] for i in range(0, len(nodes), size)]
    return rows


def _rank_lines(
    rows: list[list[Node]], node_attrs: Mapping[str, Attrs], compact: bool, options: RenderOptions
) -> list[str]:
    """One ``rank=same`` subgraph per drawn row, each with an invisible anchor."""
    lines: list[str] = []
    for i, nodes in enumerate(rows):
        anchor = f"__rank_{i}"
        lines.append(f"  subgraph {quote('rank_' + str(i))} {{")
        lines.append("    rank=same;")
        lines.append(f"    {quote(anchor)} {attr_list(_ANCHOR_ATTRS | node_attrs.get(anchor, {}))};")
        for node in nodes:
            attrs = {"label": node_markup(node, compact, options), "tooltip": node.id}
            lines.append(f"    {quote(node.id)} {attr_list(attrs | node_attrs.get(node.id, {}))};")
        lines.append("  }")
    anchors = [quote(f"__rank_{i}") for i in range(len(rows))]
    lines += [f"  {upper} -> {lower} [style=invis];" for upper, lower in itertools.pairwise(anchors)]
    return lines


def _layout_limits(graph: Graph, options: RenderOptions) -> dict[str, str]:
    """Graphviz settings that bound layout time on big graphs: dot's x-placement (network simplex)
    and crossing minimisation dominate there, so both are capped (docs/benchmarks.md)."""
    limits: dict[str, str] = {}
    if len(graph.nodes) > options.fast_layout_nodes or len(graph.edges) > options.fast_layout_edges:
        limits.update({"mclimit": "0.05", "nslimit": "0.01", "searchsize": "5"})
    if len(graph.edges) > options.max_spline_edges:
        limits["splines"] = "line"
    return limits


def _edge_lines(graph: Graph, splines: Mapping[tuple[str, str], str]) -> list[str]:
    """One line per edge: drawn attributes and dot's spline if any."""
    largest, lines = colour_scale(graph), []
    for edge in graph.sorted_edges():
        key = (edge.source, edge.target)
        attrs = _edge_attrs(edge, graph, largest) | ({"pos": splines[key]} if key in splines else {})
        lines.append(f"  {quote(edge.source)} -> {quote(edge.target)} {attr_list(attrs)};")
    return lines


def dot_source(
    graph: Graph,
    *,
    options: RenderOptions | None = None,
    node_attrs: Mapping[str, Attrs] | None = None,
    graph_attrs: Attrs | None = None,
    notes: Sequence[str] = (),
    positions: Mapping[str, str] | None = None,
    splines: Mapping[tuple[str, str], str] | None = None,
    legend: bool | Placement = True,
) -> str:
    """Graphviz source for a graph, deterministic for the same graph.

    Args:
        node_attrs, graph_attrs: extra attributes merged into the drawn ones;
            they win on a clash.
        notes: extra caption lines (e.g. which edges the image leaves out).
        positions: node name -> ``"x,y"`` (points): every node is pinned
            there (``neato -n2``).
        splines: (source, target) -> dot's spline for the edge (with
            `positions`); edges without one are straight.
        legend: the caption + legend block: True draws it as the graph's
            label (below), False leaves it out, a `Placement` pins it as a node.
    """
    options = options or RenderOptions()
    notes = caption_notes(graph, notes, options)
    top = _layout_limits(graph, options) if positions is None else {"splines": "true" if splines else "line"}
    if legend is True:
        label = legend_markup(graph, notes, options.legend_chars)
        top.update({"label": label, "labelloc": "b", "labeljust": "l"})
    top = _GRAPH_ATTRS | top | dict(graph_attrs or {})
    lines = ["digraph cognition {", f"  graph {attr_list(top)};"]
    lines.append('  node [shape=plain, fontname="Helvetica", fontsize="11"];')
    lines.append("  edge [arrowsize=0.6];")
    if isinstance(legend, Placement):
        block = top_left(legend_markup(graph, notes, legend.chars), legend.size)
        attrs = {"label": block, "pos": f"{legend.pos}!"}
        lines.append(f"  {quote('__legend__')} {attr_list(attrs)};")
    pins = {name: {"pos": f"{xy}!"} for name, xy in (positions or {}).items()}
    compact = use_compact_labels(graph, options)
    lines += _rank_lines(drawn_rows(graph, options), {**pins, **(node_attrs or {})}, compact, options)
    lines += _edge_lines(graph, splines or {})
    lines.append("}")
    return "\n".join(lines) + "\n"
