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
    again = Graph.from_json(first.to_json())
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


def _trace_graph(tokens):
    """A trace.py-shaped graph: embeddings, transcoder features and MLP errors per position, logits."""
    graph = Graph()
    for p in range(len(tokens)):
        graph.add_node(Node(f"embed@{p}", "embed", 0, 100 + p, attribution=0.1))
    for node_id in ["tc_0.3@2", "tc_0.1@4", "mlp_error_0@4", "tc_1.7@4", "clt_1.2@1"]:
        layer = parse_positioned_id(node_id)[0].layer
        graph.add_node(Node.from_id(node_id, activation=1.0, hook=f"blocks.{layer}.hook_mlp_out"))
    for token in (262, 11):
        graph.add_node(Node(f"logit_{token}", "logit", 2, token, activation=0.4))
    edges = [
        ("embed@2", "tc_0.3@2"),
        ("tc_0.3@2", "tc_1.7@4"),
        ("embed@4", "tc_0.1@4"),
        ("tc_1.7@4", "logit_262"),
    ]
    for source, target in edges:
        graph.add_edge(source, target, 0.5)
    graph.metadata = {"script": "trace.py", "prompt_tokens": tokens}
    graph.add_run(run_record(graph.metadata, "t"))
    return graph


def test_a_trace_graph_gets_a_token_axis_with_its_logits_at_the_last_token():
    tokens = ["<|endoftext|>", " the", " sky", " is", " blue"]
    data = viewer_data(_trace_graph(tokens))
    assert data["tokens"] == tokens
    column = {node["id"]: node["column"] for node in data["nodes"]}
    assert (
        column["logit_262"] == column["logit_11"] == 4 and column["embed@3"] == 3 and column["tc_0.3@2"] == 2
    )
    row = {node["id"]: node["row"] for node in data["nodes"]}
    assert row["embed@0"] < row["tc_0.1@4"] == row["mlp_error_0@4"] < row["tc_1.7@4"] < row["logit_262"]
    assert data["rows"][row["embed@0"]] == "token embeddings" and data["rows"][row["logit_11"]] == "logits"


def test_the_page_lays_a_trace_graph_out_by_layer_and_token(browser, tmp_path):
    """Embeddings at the bottom in token order, each layer above the one before, logits on top at the
    last token; a layer's features and MLP errors share its row."""
    from sparse_coding.graphs.viewer import write_viewer

    tokens = ["<|endoftext|>", " the", " sky", " is", " blue"]
    path = write_viewer(_trace_graph(tokens), tmp_path / "trace.html")
    browser.get(path.as_uri())
    root = browser.find_element("css selector", ".sc-viewer")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert int(root.get_attribute("data-visible-nodes")) == len(tokens) + 7
    point = {
        node_id: browser.execute_script(
            "return arguments[0].scViewer.screenPoint(arguments[1])", root, node_id
        )
        for node_id in [f"embed@{p}" for p in range(len(tokens))]
        + ["tc_0.3@2", "tc_0.1@4", "mlp_error_0@4", "tc_1.7@4", "clt_1.2@1", "logit_262", "logit_11"]
    }
    x, y = ({key: value[i] for key, value in point.items()} for i in (0, 1))
    assert [x[f"embed@{p}"] for p in range(len(tokens))] == sorted(
        x[f"embed@{p}"] for p in range(len(tokens))
    )
    assert len({y[f"embed@{p}"] for p in range(len(tokens))}) == 1  # one row, at the bottom
    assert (
        y["embed@0"] > y["tc_0.3@2"] == y["tc_0.1@4"] == y["mlp_error_0@4"] > y["tc_1.7@4"] > y["logit_262"]
    )
    assert y["logit_262"] == y["logit_11"] and min(x["logit_262"], x["logit_11"]) >= x["embed@4"] - 1
    assert x["clt_1.2@1"] < x["tc_0.3@2"] < x["tc_1.7@4"]
    browser.save_screenshot(str(tmp_path / "trace.png"))


def test_a_trace_graph_a_little_wider_than_the_window_opens_whole(browser, tmp_path):
    """Eight token columns need a zoom under the legible one (0.8) but above 0.6: every box is shown, none
    cut at the window's left edge; a long prompt still opens at its last token."""
    from sparse_coding.graphs.viewer import write_viewer

    for n_tokens, whole in ((8, True), (40, False)):
        tokens = ["<|endoftext|>", *(f" w{p}" for p in range(1, n_tokens))]
        browser.get(write_viewer(_trace_graph(tokens), tmp_path / f"trace{n_tokens}.html").as_uri())
        root = browser.find_element("css selector", ".sc-viewer")
        stage = browser.execute_script(
            "const r = arguments[0].querySelector('canvas').getBoundingClientRect();return [r.left, r.right]",
            root,
        )
        boxes = browser.execute_script("return arguments[0].scViewer.screenBoxes()", root)
        inside = [stage[0] - 0.5 <= left and left + width <= stage[1] + 0.5 for _, left, _, width, _ in boxes]
        assert all(inside) == whole, (n_tokens, stage, boxes)


def test_the_image_draws_a_trace_graphs_tokens_in_order_and_a_layers_errors_beside_its_features():
    from sparse_coding.graphs.render import RenderOptions, drawn_rows

    tokens = [f"t{p}" for p in range(12)]
    graph = _trace_graph(tokens)
    for p in (11, 3, 7):  # added out of order: the image still reads left to right
        graph.add_node(Node(f"embed@{p + 12}", "embed", 0, 5, attribution=0.0))
    graph.metadata["prompt_tokens"] = graph.runs[0]["prompt_tokens"] = [f"t{p}" for p in range(24)]
    rows = [[node.id for node in row] for row in drawn_rows(graph, RenderOptions(max_row_nodes=4))]
    embeds = [f"embed@{p}" for p in [*range(12), 15, 19, 23]]
    assert rows[0] == embeds  # 15 positioned nodes: one row, in token order
    assert set(rows[1]) == {"tc_0.3@2", "tc_0.1@4", "mlp_error_0@4"} and rows[1][0] == "tc_0.3@2"
    assert rows[-1] == ["logit_11", "logit_262"]


def test_the_legend_names_a_trace_graphs_mlp_error_nodes_and_an_sae_graphs_sae_errors():
    from sparse_coding.graphs.conventions import sentences
    from sparse_coding.graphs.legend import legend_entries

    def dotted(run):
        return dict(legend_entries({"runs": [run]}))["dotted box"]

    trace = {"script": "trace.py", "sign_convention": sentences("trace.py")}
    older = {"script": "trace.py", "sign_convention": {"edge": "recorded before boxes were worded"}}
    assert dotted(trace).startswith("MLP error node") and "SAE" not in dotted(trace)
    assert dotted(older) == dotted(trace)
    assert dotted({"script": "fast.py", "sign_convention": sentences("fast.py")}).startswith("SAE error node")
    assert "transcoder feature" in dict(legend_entries({"runs": [trace]}))["box"]


def test_a_merged_trace_graphs_caption_says_how_each_run_pruned():
    from sparse_coding.graphs.legend import caption_lines

    runs = [
        {"id": str(i), "script": "trace.py", "prompt": "p", "config": {"TRACE_NODE_THRESHOLD": share}}
        for i, share in enumerate((0.8, 0.95))
    ]
    nodes_line = caption_lines({"runs": runs})[1]
    assert "0.8 / 0.98 of the influence" in nodes_line and "0.95 / 0.98" in nodes_line


def test_a_wrapped_rank_of_features_and_errors_is_drawn_pinned():
    """Wrapped rows are laid out without edges (dot would stretch them): a rank holding a layer's
    features and errors counts as one rank."""
    from sparse_coding.graphs.drawing import pinned_layout
    from sparse_coding.graphs.render import RenderOptions

    graph = _trace_graph(["a", "b", "c", "d", "e"])
    for index in range(4):
        graph.add_node(Node.from_id(f"tc_0.{10 + index}@4", activation=1.0, hook="blocks.0.hook_mlp_out"))
    assert not pinned_layout(graph, RenderOptions(max_row_nodes=8))  # the layer's 7 nodes fit one row
    assert pinned_layout(graph, RenderOptions(max_row_nodes=4))
