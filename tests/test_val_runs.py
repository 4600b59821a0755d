"""val.py --from-graph --run: the circuit of one run of a merged graph, or of all runs (said so)."""

from pathlib import Path

import pytest

from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import load_graph, update_graph_files
from sparse_coding.pipelines.circuit import circuit_and_source


def merged_graph(dot: Path) -> list[str]:
    """Two runs: one measured resid_1.4 -> attn_2.9, the other resid_1.4 -> mlp_2.5; returns their ids."""
    for target in ("attn_2.9", "mlp_2.5"):
        run = Graph(metadata={"prompt": f"explain {target}", "summary": "s"})
        for node_id in ("resid_1.4", target, "mlp_error_2"):
            run.add_node(Node.from_id(node_id, attribution=0.5))
        run.add_edge("resid_1.4", target, 0.25)
        update_graph_files(run, dot, None)
    return [run["id"] for run in load_graph(dot).runs]


def test_the_circuit_of_one_run_or_of_all_runs_stated_in_its_source(tmp_path):
    dot = tmp_path / "graph.dot"
    first, second = merged_graph(dot)
    circuit, errors, source = circuit_and_source(None, dot, first)  # type: ignore[arg-type]
    assert circuit == {"attn_2": [9], "resid_1": [4]} and source == f"graph file {dot} (run {first})"
    assert errors == ["mlp_2"]
    circuit, _, _ = circuit_and_source(None, dot, second)  # type: ignore[arg-type]
    assert circuit == {"mlp_2": [5], "resid_1": [4]}
    circuit, _, source = circuit_and_source(None, dot, None)  # type: ignore[arg-type]
    assert circuit == {"attn_2": [9], "mlp_2": [5], "resid_1": [4]}
    assert source == f"graph file {dot} (all 2 runs: {first}, {second})"


def test_an_unknown_run_is_refused_listing_the_graphs_runs(tmp_path):
    dot = tmp_path / "graph.dot"
    first, second = merged_graph(dot)
    with pytest.raises(GraphFileError, match=f"no run 'nope'; its runs are: {first}, {second}"):
        circuit_and_source(None, dot, "nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--from-graph"):
        circuit_and_source(None, None, first)  # type: ignore[arg-type]
