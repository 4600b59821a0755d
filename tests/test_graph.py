"""Graph: merge semantics, forward order and dict round trip."""

import pytest

from sparse_coding.graphs.graph import Context, Graph, Node


def feature(node_id: str, **attrs) -> Node:
    return Node.from_id(node_id, **attrs)


def test_from_id_parses_site_layer_and_feature():
    node = feature("attn_4.112", activation=1.5)
    assert (node.site, node.layer, node.feature, node.activation) == (
        "attn",
        4,
        112,
        1.5,
    )
    error = feature("mlp_error_7")
    assert (error.site, error.layer, error.feature, error.is_error) == (
        "mlp",
        7,
        None,
        True,
    )
    with pytest.raises(ValueError, match="not a node id"):
        Node.from_id("bogus")


def test_context_needs_one_activation_per_token():
    with pytest.raises(ValueError, match="one activation per token"):
        Context(["a", "b"], [1.0])


def test_an_edge_measured_again_is_updated_not_duplicated():
    graph = Graph()
    graph.add_edge("resid_0.1", "resid_1.2", 0.5)
    graph.add_edge("resid_0.1", "resid_1.2", -0.25)
    assert list(graph.edges.values())[0].effect == -0.25
    assert len(graph.edges) == 1


def test_newer_numbers_win_but_missing_numbers_do_not_erase():
    graph = Graph()
    graph.add_node(feature("resid_0.1", activation=1.0, attribution=2.0, hook="blocks.0.hook_resid_pre"))
    graph.add_node(feature("resid_0.1", activation=3.0))
    node = graph.nodes["resid_0.1"]
    assert (node.activation, node.attribution, node.hook) == (
        3.0,
        2.0,
        "blocks.0.hook_resid_pre",
    )


def test_a_node_keeps_its_richest_annotations():
    rich = feature(
        "resid_0.1",
        contexts=[Context(["a"], [1.0])],
        logits_up=[("x", 1.0)],
        explanation="old",
    )
    graph = Graph()
    graph.add_node(rich)
    graph.add_node(feature("resid_0.1", activation=1.0))  # no annotations: keeps old
    node = graph.nodes["resid_0.1"]
    assert node.contexts == rich.contexts and node.logits_up == [("x", 1.0)]
    assert node.explanation == "old"
    graph.add_node(feature("resid_0.1", logits_up=[("y", 2.0)], explanation="new"))
    assert node.logits_up == [("y", 2.0)] and node.explanation == "new"  # newer non-empty wins
    assert node.contexts == rich.contexts


def test_add_node_copies_so_later_edits_of_the_input_do_not_leak():
    node = feature("resid_0.1", logits_up=[("x", 1.0)])
    graph = Graph()
    graph.add_node(node)
    node.logits_up.append(("y", 2.0))
    assert graph.nodes["resid_0.1"].logits_up == [("x", 1.0)]


def test_merge_grows_the_graph_and_keeps_every_run():
    first = Graph(metadata={"prompt": "one", "summary": "s1"})
    first.add_node(feature("resid_0.1"))
    first.add_node(feature("resid_1.2"))
    first.add_edge("resid_0.1", "resid_1.2", 1.0)
    second = Graph(metadata={"prompt": "two"})
    second.add_node(feature("resid_1.2"))
    second.add_node(feature("resid_2.3"))
    second.add_edge("resid_1.2", "resid_2.3", 2.0)
    second.add_edge("resid_0.1", "resid_1.2", 3.0)
    first.merge(second)
    assert set(first.nodes) == {"resid_0.1", "resid_1.2", "resid_2.3"}
    assert {k: e.effect for k, e in first.edges.items()} == {
        ("resid_0.1", "resid_1.2"): 3.0,
        ("resid_1.2", "resid_2.3"): 2.0,
    }
    assert first.metadata["prompt"] == "two" and first.metadata["summary"] == "s1"
    assert [run["prompt"] for run in first.metadata["runs"]] == ["one", "two"]
    third = Graph(metadata={"prompt": "three"})
    first.merge(third)
    assert [run["prompt"] for run in first.metadata["runs"]] == ["one", "two", "three"]


def test_merging_the_same_graph_twice_changes_no_node_or_edge():
    graph = Graph()
    graph.add_node(feature("resid_0.1", activation=1.0))
    graph.add_node(feature("resid_1.2"))
    graph.add_edge("resid_0.1", "resid_1.2", 1.0)
    merged = Graph()
    merged.merge(graph)
    merged.merge(graph)
    assert merged.nodes == graph.nodes and merged.edges == graph.edges


def test_sorted_nodes_follow_the_forward_pass():
    graph = Graph()
    for node in [
        feature("resid_1.0", hook="blocks.1.hook_resid_pre"),
        feature("mlp_0.5"),
        feature("resid_0.9", hook="blocks.0.hook_resid_post"),
        feature("attn_0.1"),
        feature("resid_0.10", hook="blocks.0.hook_resid_pre"),
        feature("resid_0.2"),  # no hook: resid_pre
        feature("mlp_error_0"),
    ]:
        graph.add_node(node)
    order = [n.id for n in graph.sorted_nodes()]
    assert order == [
        "resid_0.2",
        "resid_0.10",
        "attn_0.1",
        "mlp_0.5",
        "mlp_error_0",
        "resid_0.9",
        "resid_1.0",
    ]


def test_dict_round_trip_is_exact():
    graph = Graph(metadata={"prompt": "p", "config": {"TOP_K": 6}})
    graph.add_node(
        feature(
            "resid_3.331",
            activation=0.1 + 0.2,
            attribution=-1e-300,
            hook="blocks.3.hook_resid_pre",
            neuronpedia_id="gpt2-small/3-res-jb",
            contexts=[Context(["Ġa", "\n"], [0.0, 1.5])],
            logits_up=[("x", 1.0)],
            logits_down=[("y", -2.0)],
            explanation="e",
        )
    )
    graph.add_node(feature("mlp_error_2"))
    graph.add_edge("mlp_error_2", "resid_3.331", 0.3)
    assert Graph.from_dict(graph.to_dict()) == graph
