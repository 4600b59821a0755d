"""A graph as tables and as a networkx graph, for analysis in a notebook (`Graph.to_pandas`,
`Graph.to_networkx`) and for `sparse-coding export --to csv|parquet`.

pandas and networkx load only here, on first use: the package itself does not need them
(``pip install -e ".[analysis]"`` brings them, and pyarrow for parquet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx
    import pandas

    from sparse_coding.graphs.graph import Graph, Node

NODE_COLUMNS = (
    "id",
    "site",
    "layer",
    "feature",
    "position",
    "activation",
    "attribution",
    "hook",
    "neuronpedia_id",
    "explanation",
    "n_runs",
)
EDGE_COLUMNS = ("source", "target", "effect", "n_runs")


def node_row(node: Node) -> dict[str, Any]:
    """One node's table row (NODE_COLUMNS)."""
    values = {key: getattr(node, key) for key in NODE_COLUMNS if key != "n_runs"}
    return values | {"n_runs": len(node.runs)}


def graph_frames(graph: Graph, *, per_run: bool = False) -> tuple[pandas.DataFrame, pandas.DataFrame]:
    """(nodes, edges) DataFrames in the graph's canonical order; `per_run`: one row per run value."""
    import pandas as pd

    nodes, edges = graph.sorted_nodes(), graph.sorted_edges()
    if not per_run:
        edge_rows = [(e.source, e.target, e.effect, len(e.runs)) for e in edges]
        node_frame = pd.DataFrame([node_row(node) for node in nodes], columns=list(NODE_COLUMNS))
        return node_frame, pd.DataFrame(edge_rows, columns=list(EDGE_COLUMNS))
    identity = [key for key in NODE_COLUMNS if key not in ("activation", "attribution", "n_runs")]
    node_rows = [
        {key: getattr(node, key) for key in identity}
        | {"run": run, "activation": values.get("activation"), "attribution": values.get("attribution")}
        for node in nodes
        for run, values in node.runs.items()
    ]
    edge_rows = [(e.source, e.target, run, value) for e in edges for run, value in e.runs.items()]
    return (
        pd.DataFrame(node_rows, columns=[*identity, "run", "activation", "attribution"]),
        pd.DataFrame(edge_rows, columns=["source", "target", "run", "effect"]),
    )


def graph_networkx(graph: Graph) -> networkx.DiGraph:
    """The graph as a networkx DiGraph (node attributes: NODE_COLUMNS but id; edges: effect, abs_effect)."""
    import networkx as nx

    result = nx.DiGraph(**{key: graph.metadata[key] for key in ("model", "summary") if key in graph.metadata})
    for node in graph.sorted_nodes():
        row = node_row(node)
        result.add_node(row.pop("id"), **row)
    for edge in graph.sorted_edges():
        result.add_edge(edge.source, edge.target, effect=edge.effect, abs_effect=abs(edge.effect))
    return result
