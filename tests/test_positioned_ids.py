"""Positioned node ids (``resid_9.331@7``) through ids, graphs, merging, val.py's circuit and the viewer."""

from pathlib import Path

import pytest

from sparse_coding.graphs.graph import Graph, Node, run_record
from sparse_coding.graphs.viewer import viewer_data
from sparse_coding.nodes import NodeId, parse_positioned_id, split_position, with_position
from sparse_coding.pipelines.circuit import circuit_from_graph, error_nodes_from_graph


@pytest.mark.parametrize(
    "node_id, base, position",
    [
        ("resid_9.331@7", "resid_9.331", 7),
        ("mlp_error_9@0", "mlp_error_9", 0),
        ("attn_4.112", "attn_4.112", None),
    ],
)
def test_a_position_suffix_splits_off_and_joins_back(node_id, base, position):
    assert split_position(node_id) == (base, position)
    assert with_position(base, position) == node_id


def test_positioned_ids_parse_to_site_layer_feature_and_position():
    assert parse_positioned_id("resid_9.331@7") == (NodeId("resid", 9, 331), 7)
    assert parse_positioned_id("mlp_error_9@12") == (NodeId("mlp", 9, None), 12)
    with pytest.raises(ValueError, match="not a node id"):
        parse_positioned_id("resid_9.331@x")


def _graph(node_ids, edges=(), run="r1", tokens=None):
    graph = Graph()
    for node_id in node_ids:
        graph.add_node(Node.from_id(node_id, attribution=1.0, activation=2.0))
    for source, target in edges:
        graph.add_edge(source, target, 0.5)
    graph.metadata = {"script": "fast.py", "prompt_tokens": tokens} if tokens else {"script": "fast.py"}
    graph.add_run(run_record(graph.metadata, run))
    return graph


def test_positioned_nodes_merge_per_position_and_keep_their_runs():
    first = _graph(["resid_1.5@2", "resid_1.5@3"], [("resid_1.5@2", "resid_1.5@3")], run="a")
    second = _graph(["resid_1.5@3", "resid_1.5"], run="b")
    first.merge(second)
    assert sorted(first.nodes) == ["resid_1.5", "resid_1.5@2", "resid_1.5@3"]
    assert sorted(first.nodes["resid_1.5@3"].runs) == ["a", "b"]
    assert first.nodes["resid_1.5@2"].position == 2 and first.nodes["resid_1.5"].position is None
    again = Graph.from_dict(first.to_dict())
    assert again.nodes["resid_1.5@3"].feature == 5 and again.nodes["resid_1.5@3"].position == 3


def test_val_reads_positioned_nodes_as_their_features_at_every_position():
    graph = _graph(["resid_1.5@2", "resid_1.5@3", "attn_2.7@3", "mlp_error_2@3"])
    assert circuit_from_graph(graph, Path("g.json")) == {"attn_2": [7], "resid_1": [5]}
    assert error_nodes_from_graph(graph) == ["mlp_2"]


def test_the_viewer_gets_a_token_axis_only_when_every_node_is_positioned():
    tokens = ["<|endoftext|>", " the", " sky", " is"]
    data = viewer_data(_graph(["resid_1.5@2", "attn_2.7@3"], tokens=tokens))
    assert data["tokens"] == tokens
    assert sorted(node["position"] for node in data["nodes"]) == [2, 3]
    assert viewer_data(_graph(["resid_1.5@2", "attn_2.7"], tokens=tokens))["tokens"] is None


def test_the_page_lays_positioned_nodes_out_in_token_order(browser, tmp_path):
    from sparse_coding.graphs.viewer import write_viewer

    tokens = ["<|endoftext|>", " the", " sky", " is", " blue"]
    ids = ["resid_1.5@4", "resid_1.5@2", "attn_2.7@3", "resid_1.9@2", "mlp_error_2@1"]
    graph = _graph(ids, [("resid_1.5@2", "attn_2.7@3"), ("resid_1.9@2", "attn_2.7@3")], tokens=tokens)
    path = write_viewer(graph, tmp_path / "positions.html")
    browser.get(path.as_uri())
    root = browser.find_element("css selector", ".sc-viewer")
    assert int(root.get_attribute("data-visible-nodes")) == len(ids)
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    x = {
        node_id: browser.execute_script(
            "return arguments[0].scViewer.screenPoint(arguments[1])[0]", root, node_id
        )
        for node_id in ids
    }
    assert x["mlp_error_2@1"] < x["resid_1.5@2"] < x["attn_2.7@3"] < x["resid_1.5@4"]
    assert x["resid_1.9@2"] < x["attn_2.7@3"]
    browser.save_screenshot(str(tmp_path / "positions.png"))
