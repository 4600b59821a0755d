"""The ``.dot`` of a graph: the drawing of every node and edge, written from the Graph, never read back.

It holds the nodes as ``render.dot_source`` draws them and every edge in its
colour, with the numbers of the design contract, so that Graphviz users and
scripts find them without the ``.json``: node ``activation``, ``attribution``
and ``hook``; edge ``effect`` (the mean over runs). The edge lines are written
here rather than by ``dot_source``: a graph keeps every edge (tens of
thousands), the image draws only the strongest, and written directly they take
a third of the time. Graph ``sc_format`` marks the file as this tool's and
``sc_user_graph`` (JSON) keeps the graph attributes of an imported drawing.
"""

from __future__ import annotations

import json

from sparse_coding.graphs.graph import MEASURED, Graph, Node
from sparse_coding.graphs.render import RenderOptions, attr_list, colour_scale, dot_source, edge_colour, quote

FORMAT = 3  # of the .json and the .dot together
DERIVED_NOTE = "Drawn by sparse_coding from its canonical .json twin (same name)"


def _runs_text(n_runs: int) -> str:
    return f"measured by {n_runs} runs, drawn at their mean" if n_runs > 1 else "measured by 1 run"


def _node_data_attrs(node: Node) -> dict[str, str]:
    attrs = {key: repr(value) for key in MEASURED if (value := getattr(node, key)) is not None}
    if node.hook is not None:
        attrs["hook"] = node.hook
    if node.runs:
        attrs["tooltip"] = f"{node.id}: {_runs_text(len(node.runs))}"
    return attrs


def _edge_lines(graph: Graph) -> list[str]:
    """Every measured edge: colour, ``effect`` and, for several runs, a tooltip counting them."""
    largest, lines = colour_scale(graph), []
    names = {node_id: quote(node_id) for node_id in graph.nodes}  # each quoted once, not once per edge
    for edge in graph.sorted_edges():
        source = names.get(edge.source) or quote(edge.source)
        target = names.get(edge.target) or quote(edge.target)
        attrs = f'color="{edge_colour(edge.effect, largest)}", effect="{edge.effect!r}"'
        if len(edge.runs) > 1:
            tip = f"{edge.source} -> {edge.target}: effect {edge.effect:.4g}, {_runs_text(len(edge.runs))}"
            attrs += f", tooltip={quote(tip)}"
        lines.append(f"  {source} -> {target} [{attrs}];")
    return lines


def _user_lines(graph: Graph) -> list[str]:
    """The user's own drawing (kept from an imported .dot), as DOT statements."""
    lines = [f"  {quote(name)} {attr_list(attrs)};" for name, attrs in graph.user.nodes.items()]
    for (source, target), attrs in graph.user.edges.items():
        if (source, target) not in graph.edges:  # a measured edge replaces the drawn one
            lines.append(f"  {quote(source)} -> {quote(target)} {attr_list(attrs)};")
    return lines


def graph_to_dot(graph: Graph, options: RenderOptions | None = None) -> str:
    """The derived ``.dot`` text: a header comment, the drawing, and the contract's numbers."""
    graph_attrs = {"sc_format": str(FORMAT)}
    if graph.user.graph_attrs:
        graph_attrs |= {"sc_user_graph": json.dumps(graph.user.graph_attrs), **graph.user.graph_attrs}
    text = dot_source(
        Graph(nodes=graph.nodes, metadata=graph.metadata),
        options=options,
        node_attrs={n.id: _node_data_attrs(n) for n in graph.nodes.values()},
        graph_attrs=graph_attrs,
    )
    text = text.removesuffix("}\n") + "\n".join([*_edge_lines(graph), *_user_lines(graph), "}"]) + "\n"
    return (
        f"// {DERIVED_NOTE}; it is not read back: edit the .json, or a changed .dot is moved aside "
        f"(<name>.edited-<time>.dot) on the next run.\n" + text
    )
