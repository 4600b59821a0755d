"""Render: colours, ranks in forward order, the spine, degradation, the dot timeout."""

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sparse_coding.errors import GraphFileError
from sparse_coding.graphs import render
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import graph_from_dot, graph_to_dot
from sparse_coding.graphs.render import (
    RenderOptions,
    dot_source,
    edge_colour,
    image_format,
    render_image,
)


def layout(dot_text: str) -> dict:
    """Node name -> (x, y) as laid out by the real dot."""
    out = subprocess.run(["dot", "-Tjson"], input=dot_text.encode(), capture_output=True, check=True)
    objects = json.loads(out.stdout)["objects"]
    return {o["name"]: tuple(map(float, o["pos"].split(","))) for o in objects if "pos" in o}


def chain_graph() -> Graph:
    """resid_0 -> attn_0 -> mlp_0 -> resid_1, plus an error node and an isolated one."""
    graph = Graph(metadata={"summary": "features explain ~73% of the effect"})
    for node in [
        Node.from_id("resid_0.1", hook="blocks.0.hook_resid_pre"),
        Node.from_id("attn_0.2"),
        Node.from_id("mlp_0.3"),
        Node.from_id("mlp_error_0"),
        Node.from_id("resid_1.4", hook="blocks.1.hook_resid_pre"),
        Node.from_id("resid_1.5", hook="blocks.1.hook_resid_pre"),
        Node.from_id("attn_1.6"),  # no edges: the rank anchors still place it
    ]:
        graph.add_node(node)
    graph.add_edge("resid_0.1", "attn_0.2", 1.0)
    graph.add_edge("attn_0.2", "mlp_0.3", -0.5)
    graph.add_edge("mlp_0.3", "resid_1.4", 0.25)
    graph.add_edge("mlp_error_0", "resid_1.4", 0.0)
    graph.add_edge("resid_0.1", "resid_1.5", 2.0)
    return graph


def test_edge_colours_are_blue_up_red_down_with_alpha_by_magnitude():
    assert edge_colour(2.0, 2.0) == "#2166acff"
    assert edge_colour(-1.0, 2.0) == "#b2182b80"
    assert edge_colour(0.001, 2.0).endswith("26")  # faint but visible
    assert edge_colour(0.0, 2.0).startswith("#969696")


def test_ranks_follow_the_forward_pass_top_to_bottom():
    pos = layout(dot_source(chain_graph()))
    y = {name: xy[1] for name, xy in pos.items()}
    # Graphviz y grows upwards: earlier sites are higher.
    assert y["resid_0.1"] > y["attn_0.2"] > y["mlp_0.3"] > y["resid_1.4"] > y["attn_1.6"]
    assert y["mlp_0.3"] == y["mlp_error_0"]
    assert y["resid_1.4"] == y["resid_1.5"]
    assert y["__summary__"] >= y["resid_0.1"]


def test_edges_carry_colour_and_the_residual_spine_is_weighted():
    source = dot_source(chain_graph())
    spine = next(line for line in source.splitlines() if '"resid_0.1" -> "resid_1.5"' in line)
    assert 'color="#2166acff", penwidth="3.00"' in spine and 'weight="10"' in spine
    assert '"attn_0.2" -> "mlp_0.3" [color="#b2182b40"' in source
    assert "weight" not in next(line for line in source.splitlines() if '"attn_0.2" ->' in line)


def test_svg_draws_error_nodes_dotted_and_the_summary(tmp_path):
    dot = tmp_path / "g.dot"
    dot.write_text(dot_source(chain_graph()), encoding="utf-8")
    render_image(dot, tmp_path / "g.svg", fmt="svg", timeout_s=60)
    root = ET.parse(tmp_path / "g.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    groups = {g.find(f"{ns}title").text: g for g in root.iter(f"{ns}g") if g.get("class") == "node"}
    dashes = [p.get("stroke-dasharray") for p in groups["mlp_error_0"].iter(f"{ns}polygon")]
    assert any(dashes)
    assert not any(p.get("stroke-dasharray") for p in groups["mlp_0.3"].iter(f"{ns}polygon"))
    texts = " ".join(t.text or "" for t in groups["__summary__"].iter(f"{ns}text"))
    assert "73%" in texts


def big_graph(n_nodes: int, n_edges: int) -> Graph:
    graph = Graph()
    for i in range(n_nodes):
        graph.add_node(
            Node.from_id(
                f"resid_{i % 12}.{i}",
                contexts=[Context(["Ġtok"] * 11, [1.0] * 11)],
                logits_up=[("up", 1.0)],
                explanation="x",
            )
        )
    ids = [n.id for n in graph.sorted_nodes()]
    for k in range(n_edges):
        graph.add_edge(ids[k % n_nodes], ids[(k * 7 + 1) % n_nodes], 1.0)
    return graph


def test_big_graphs_get_compact_labels_and_say_so():
    options = RenderOptions(max_full_nodes=10, fast_layout_nodes=10, max_spline_edges=5)
    source = dot_source(big_graph(12, 20), options=options)
    assert "Ġtok" not in source and "compact&#160;labels" in source
    assert 'nslimit="0.01"' in source and 'splines="line"' in source
    small = dot_source(big_graph(5, 3), options=options)
    assert "Ġtok" in small and "compact" not in small and "nslimit" not in small


def test_too_many_label_cells_also_degrade():
    options = RenderOptions(max_label_cells=50)
    assert "compact&#160;labels" in dot_source(big_graph(5, 3), options=options)


def test_render_is_deterministic_and_the_source_reloads():
    graph = chain_graph()
    assert dot_source(graph) == dot_source(graph)
    assert graph_from_dot(graph_to_dot(graph)) == graph


def test_image_format_follows_the_extension():
    assert image_format(Path("a.SVG")) == "svg" and image_format(Path("a.png")) == "png"
    with pytest.raises(GraphFileError, match=".pdf"):
        image_format(Path("a.pdf"))


def test_dot_running_past_its_timeout_is_a_clear_error(tmp_path, monkeypatch):
    def too_slow(command, **kwargs):
        assert kwargs["timeout"] == 0.5
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(render.subprocess, "run", too_slow)
    with pytest.raises(GraphFileError, match="longer than"):
        render_image(tmp_path / "g.dot", tmp_path / "g.svg", fmt="svg", timeout_s=0.5)


def test_a_missing_dot_program_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphFileError, match="not installed"):
        render_image(tmp_path / "g.dot", tmp_path / "g.svg", fmt="svg")


def test_dot_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.dot"
    bad.write_text("digraph { a -> }", encoding="utf-8")
    with pytest.raises(GraphFileError, match="bad.dot"):
        render_image(bad, tmp_path / "g.svg", fmt="svg")
