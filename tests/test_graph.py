"""Graph: merge semantics (runs kept apart, mean drawn), forward order, and its .json read back exactly."""

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_coding.graphs.graph import Context, Graph, Node, run_record


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


def one_run(run_id: str, prompt: str, effects: dict, attribution: float, **meta) -> Graph:
    graph = Graph(metadata={"prompt": prompt, "summary": f"summary of {prompt}", **meta})
    for source, target in effects:
        graph.add_node(feature(source, attribution=attribution))
        graph.add_node(feature(target, attribution=attribution))
    for (source, target), effect in effects.items():
        graph.add_edge(source, target, effect)
    graph.add_run(run_record(graph.metadata, run_id))
    return graph


def test_merge_keeps_every_run_apart_and_draws_the_mean():
    merged = Graph()
    merged.merge(one_run("r1", "one", {("resid_0.1", "resid_1.2"): 1.0}, attribution=0.5))
    merged.merge(
        one_run(
            "r2", "two", {("resid_0.1", "resid_1.2"): 4.0, ("resid_1.2", "resid_2.3"): 2.0}, attribution=1.5
        )
    )
    merged.merge(one_run("r3", "three", {("resid_0.1", "resid_1.2"): 7.0}, attribution=-2.0))
    shared = merged.edges[("resid_0.1", "resid_1.2")]
    assert shared.runs == {"r1": 1.0, "r2": 4.0, "r3": 7.0}
    assert shared.effect == (1.0 + 4.0 + 7.0) / 3
    assert merged.edges[("resid_1.2", "resid_2.3")].runs == {"r2": 2.0}
    node = merged.nodes["resid_0.1"]
    assert node.runs == {"r1": {"attribution": 0.5}, "r2": {"attribution": 1.5}, "r3": {"attribution": -2.0}}
    assert node.attribution == 0.0
    assert [run["id"] for run in merged.runs] == ["r1", "r2", "r3"]
    assert [run["prompt"] for run in merged.runs] == ["one", "two", "three"]
    assert "prompt" not in merged.metadata  # no single run describes the whole graph
    summary = merged.metadata["summary"]
    assert summary.startswith("3 runs") and all(f"run r{i}" in summary for i in (1, 2, 3))
    edge_json = next(e for e in json.loads(merged.to_json())["edges"] if e["source"] == "resid_0.1")
    assert edge_json["n_runs"] == 3 and edge_json["runs"] == {"r1": 1.0, "r2": 4.0, "r3": 7.0}


def test_a_copy_ties_and_merges_as_a_deep_copy_would_and_leaves_the_original_alone():
    fresh = Graph(metadata={"prompt": "p", "sae_sources": {"resid_0": "a"}})
    fresh.add_node(feature("resid_0.1", attribution=0.5, logits_up=[("x", 1.0)]))
    fresh.add_node(feature("resid_1.2", attribution=0.25))
    fresh.add_edge("resid_0.1", "resid_1.2", 3.0)
    before = fresh.to_json()
    record = run_record(fresh.metadata, "r1")
    copied, deep = fresh.copy(), copy.deepcopy(fresh)
    for graph in (copied, deep):
        graph.add_run(record)
        graph.merge(one_run("r2", "two", {("resid_0.1", "resid_1.2"): 5.0}, attribution=1.0))
        graph.nodes["resid_0.1"].logits_up.append(("y", 2.0))
    assert copied.to_json() == deep.to_json()
    assert fresh.to_json() == before and fresh.has_values_of_no_run()


def test_merging_the_same_run_twice_changes_nothing():
    run = one_run("r1", "one", {("resid_0.1", "resid_1.2"): 1.0}, attribution=0.5)
    merged = Graph()
    merged.merge(run)
    once = Graph.from_json(merged.to_json())
    merged.merge(run)
    assert merged == once


def test_a_run_with_other_sae_sources_or_model_conflicts_naming_both():
    graph = Graph()
    graph.merge(one_run("r1", "one", {}, 0.0, model="gpt2", sae_sources={"resid_0": "res-jb"}))
    assert graph.conflicts({"model": "gpt2", "sae_sources": {"resid_0": "res-jb", "attn_0": "a"}}) == []
    found = graph.conflicts({"model": "other", "sae_sources": {"resid_0": "mine"}})
    assert len(found) == 2 and "'gpt2'" in found[0] and "'other'" in found[0]
    assert "'res-jb'" in found[1] and "'mine'" in found[1]


def test_run_node_ids_are_the_nodes_a_run_measured():
    merged = Graph()
    merged.merge(one_run("r1", "one", {("resid_0.1", "resid_1.2"): 1.0}, attribution=0.5))
    merged.merge(one_run("r2", "two", {("resid_1.2", "resid_2.3"): 1.0}, attribution=0.5))
    assert merged.run_node_ids("r1") == {"resid_0.1", "resid_1.2"}
    assert merged.run_node_ids("r2") == {"resid_1.2", "resid_2.3"}


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


def test_json_round_trip_is_exact():
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
    assert Graph.from_json(graph.to_json()) == graph


# ---------------------------------------------------------------- the .json: what is written reads back

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=6)  # lone surrogates too
NODE_IDS = st.builds(
    lambda site, layer, feature: (
        f"{site}_{layer}.{feature}" if feature is not None else f"{site}_error_{layer}"
    ),
    st.sampled_from(["resid", "attn", "mlp"]),
    st.integers(0, 11),
    st.none() | st.integers(0, 50_000),
)


@st.composite
def graphs(draw) -> Graph:
    """Random graphs as runs leave them: annotated nodes, edges between them, runs, odd metadata."""
    graph = Graph(metadata={"prompt": draw(TEXT), "config": {"TOP_K": draw(st.integers())}})
    for node_id in draw(st.lists(NODE_IDS, min_size=1, max_size=8, unique=True)):
        tokens = draw(st.lists(TEXT, max_size=3))
        context = Context(tokens, [draw(FINITE) for _ in tokens])
        graph.add_node(
            feature(
                node_id,
                activation=draw(st.none() | FINITE),
                attribution=draw(st.none() | FINITE),
                hook=draw(st.none() | TEXT),
                contexts=[context] if tokens else [],
                logits_up=draw(st.lists(st.tuples(TEXT, FINITE), max_size=2)),
                explanation=draw(st.none() | TEXT),
            )
        )
    ids = list(graph.nodes)
    for source, target in draw(st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=10)):
        graph.add_edge(source, target, draw(FINITE))
    if draw(st.booleans()):
        graph.add_run(run_record(graph.metadata, draw(TEXT)))
    return graph


@settings(max_examples=150, deadline=None)
@given(graph=graphs())
def test_every_graph_the_writer_writes_the_reader_reads_back_as_it_was(graph):
    graph.check()
    text = graph.to_json()
    text.encode("utf-8")  # a file: lone surrogates are escaped
    assert Graph.from_json(text) == graph
    assert Graph.from_json(text).to_json() == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_the_writer_refuses_what_the_reader_would_refuse(value):
    graph = Graph()
    graph.add_node(feature("resid_0.1", activation=value))
    with pytest.raises(ValueError, match="resid_0.1 activation"):
        graph.check()
    with pytest.raises(ValueError):
        graph.to_json()
