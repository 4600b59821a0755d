"""Render and drawing: colours, ranks, caption and legend, degradation, the layout budget, timeouts."""

import json
import logging
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sparse_coding.errors import GraphFileError
from sparse_coding.graphs import drawing, graphviz, render
from sparse_coding.graphs.conventions import sentences
from sparse_coding.graphs.dot_format import graph_to_dot
from sparse_coding.graphs.dot_import import graph_from_dot
from sparse_coding.graphs.drawing import draw_image
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import load_graph, save_graph
from sparse_coding.graphs.graphviz import RenderTimeout, image_format, render_image
from sparse_coding.graphs.label_size import label_size
from sparse_coding.graphs.markup import escape_text
from sparse_coding.graphs.render import RenderOptions, dot_source, edge_colour

SVG = "{http://www.w3.org/2000/svg}"
XLINK_TITLE = "{http://www.w3.org/1999/xlink}title"


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


def test_edges_carry_colour_and_the_residual_spine_is_weighted():
    source = dot_source(chain_graph())
    spine = next(line for line in source.splitlines() if '"resid_0.1" -> "resid_1.5"' in line)
    assert 'color="#2166acff", penwidth="3.00"' in spine and 'weight="10"' in spine
    assert '"attn_0.2" -> "mlp_0.3" [color="#b2182b40"' in source
    assert "weight" not in next(line for line in source.splitlines() if '"attn_0.2" ->' in line)


def test_svg_draws_error_nodes_dotted_and_the_summary_in_the_caption(tmp_path):
    dot = tmp_path / "g.dot"
    dot.write_text(dot_source(chain_graph()), encoding="utf-8")
    render_image(dot, tmp_path / "g.svg", fmt="svg", timeout_s=60)
    root = ET.parse(tmp_path / "g.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    groups = {g.find(f"{ns}title").text: g for g in root.iter(f"{ns}g") if g.get("class") == "node"}
    dashes = [p.get("stroke-dasharray") for p in groups["mlp_error_0"].iter(f"{ns}polygon")]
    assert any(dashes)
    assert not any(p.get("stroke-dasharray") for p in groups["mlp_0.3"].iter(f"{ns}polygon"))
    assert "73%" in svg_text(tmp_path / "g.svg")


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
    assert "compact&#160;labels" in source
    assert source.count(">Ġtok<") == 12 * 5  # compact: the peak (first of equal tokens) and 4 after it
    assert 'nslimit="0.01"' in source and 'splines="line"' in source
    small = dot_source(big_graph(5, 3), options=options)
    assert small.count(">Ġtok<") == 5 * 11 and "compact" not in small and "nslimit" not in small


def test_too_many_label_cells_also_degrade():
    options = RenderOptions(max_label_cells=50)
    assert "compact&#160;labels" in dot_source(big_graph(5, 3), options=options)


def test_render_is_deterministic_and_the_source_reloads():
    graph = chain_graph()
    assert dot_source(graph) == dot_source(graph)
    imported = graph_from_dot(graph_to_dot(graph))  # the .dot carries the numbers, for other programs
    assert {k: e.effect for k, e in imported.edges.items()} == {k: e.effect for k, e in graph.edges.items()}
    assert {k: n.activation for k, n in imported.nodes.items()} == {
        k: n.activation for k, n in graph.nodes.items()
    }


def test_image_format_follows_the_extension():
    assert image_format(Path("a.SVG")) == "svg" and image_format(Path("a.png")) == "png"
    with pytest.raises(GraphFileError, match=".pdf"):
        image_format(Path("a.pdf"))


def test_dot_running_past_its_timeout_is_a_clear_error(tmp_path, monkeypatch):
    def too_slow(command, **kwargs):
        assert kwargs["timeout"] == 0.5
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(graphviz.subprocess, "run", too_slow)
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


def svg_edges(svg_path: Path) -> dict[str, str]:
    """Drawn edge ("a->b") -> its tooltip, from a rendered SVG."""
    root = ET.parse(svg_path).getroot()
    edges = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "edge":
            links = [a.get(XLINK_TITLE) for a in group.iter(f"{SVG}a")]
            edges[group.find(f"{SVG}title").text.replace("&#45;", "-")] = links[0] if links else ""
    return edges


def svg_text(svg_path: Path) -> str:
    return " ".join(t.text or "" for t in ET.parse(svg_path).getroot().iter(f"{SVG}text"))


@pytest.mark.parametrize("script", ["pipe.py", "fast.py"])
def test_the_image_has_a_caption_and_the_legend_of_its_script(script):
    config = {"THRESHOLD_EXP": 5.0, "NUM_DOWN_NODES": 5, "NUM_UP_NODES": 3}
    run = {"script": script, "prompt": "Copyright (C)", "config": config}
    runs = [run | {"id": "a", "sign_convention": sentences(script, config)}, run | {"id": "b"}]
    graph = chain_graph()
    graph.metadata.update({"runs": runs})
    source = dot_source(graph).replace("<BR/>", "&#160;")  # legend lines wrap at spaces
    choice = "edges |effect| > 2**5.0" if script == "pipe.py" else "top 5 down-nodes per site"
    assert escape_text(f"2 runs merged ({script} x2): prompt 'Copyright (C)' (2 runs)") in source
    assert escape_text(f"nodes: {choice} (2 runs)") in source
    for sentence in sentences(script, config).values():
        if sentence != sentences(script, config)["nodes"]:  # the node choice is in the caption, short
            assert escape_text(sentence) in source
    assert escape_text("dotted box") in source and escape_text("opacity and width") in source
    other = "fast.py" if script == "pipe.py" else "pipe.py"
    assert escape_text(sentences(other)["edge"]) not in source


def test_edge_opacity_is_scaled_over_feature_edges_not_error_edges():
    graph = chain_graph()
    graph.add_edge("mlp_error_0", "resid_1.4", 10.0)  # the largest edge, as error edges often are
    source = dot_source(graph)
    line = {(e.source, e.target): e for e in graph.edges.values()}
    assert line and 'color="#2166acff"' in _edge_line(
        source, "resid_0.1", "resid_1.5"
    )  # 2.0: largest feature edge
    assert 'color="#b2182b40"' in _edge_line(source, "attn_0.2", "mlp_0.3")  # -0.5 of 2.0
    assert 'color="#2166acff"' in _edge_line(source, "mlp_error_0", "resid_1.4")  # capped


def _edge_line(source: str, a: str, b: str) -> str:
    return next(line for line in source.splitlines() if f'"{a}" -> "{b}"' in line)


def test_a_graph_over_the_layout_budget_draws_its_strongest_edges_and_says_so(tmp_path):
    graph = big_graph(12, 30)
    for k, edge in enumerate(graph.sorted_edges()):
        edge.effect = (-1) ** k * (k + 1) / 7
    strongest = sorted(graph.edges.values(), key=lambda e: abs(e.effect), reverse=True)[:4]
    draw_image(graph, tmp_path / "g.svg", fmt="svg", options=RenderOptions(max_drawn_edges=4))
    drawn = svg_edges(tmp_path / "g.svg")
    assert sorted(k for k in drawn if "__rank" not in k) == sorted(
        f"{e.source}->{e.target}" for e in strongest
    )
    groups = ET.parse(tmp_path / "g.svg").getroot().iter(f"{SVG}g")
    drawn_nodes = {g.find(f"{SVG}title").text for g in groups if g.get("class") == "node"} - {"__legend__"}
    assert drawn_nodes == {e.source for e in strongest} | {e.target for e in strongest}  # the rest had edges
    assert f"strongest of {len(graph.edges)} edges" in svg_text(tmp_path / "g.svg").replace("\xa0", " ")


def test_a_pruned_image_keeps_every_edge_in_the_dot_and_json(tmp_path):
    graph = big_graph(12, 30)
    save_graph(graph, tmp_path / "g.dot", tmp_path / "g.svg", options=RenderOptions(max_drawn_edges=4))
    assert load_graph(tmp_path / "g.dot") == graph
    assert len([k for k in svg_edges(tmp_path / "g.svg") if "__rank" not in k]) == 4


def test_a_dot_timeout_redraws_with_compact_labels_and_fewer_edges_and_does_not_fail(tmp_path, monkeypatch):
    real, sources = drawing.render_image, []

    def slow_first(source, image, *, fmt, timeout_s, pinned):
        sources.append(source.read_text(encoding="utf-8"))
        if len(sources) == 1:
            raise RenderTimeout(f"dot took longer than {timeout_s:.0f} s")
        real(source, image, fmt=fmt, timeout_s=timeout_s, pinned=pinned)

    monkeypatch.setattr(drawing, "render_image", slow_first)
    graph = big_graph(12, 20)
    options = RenderOptions(max_drawn_edges=50, fallback_drawn_edges=5)
    draw_image(graph, tmp_path / "g.svg", fmt="svg", options=options, timeout_s=5)
    assert "compact&#160;labels" not in sources[0] and "compact&#160;labels" in sources[1]
    assert [s.count("effect ") for s in sources] == [len(graph.edges), 5]
    assert (tmp_path / "g.svg").is_file()


def test_a_dot_layout_timeout_falls_back_too_and_a_second_timeout_fails(tmp_path, monkeypatch, caplog):
    real, commands = drawing.run_graphviz, []

    def layout_too_slow(command, source_path, timeout_s):
        commands.append(command[0])
        if "-Tjson0" in command:  # dot laying out the small graph with its splines
            raise RenderTimeout(f"dot took longer than {timeout_s:.0f} s")
        return real(command, source_path, timeout_s)

    monkeypatch.setattr(drawing, "run_graphviz", layout_too_slow)
    graph = big_graph(6, 8)  # small: dot lays it out with its edges
    assert not drawing.pinned_layout(graph, RenderOptions())
    with caplog.at_level(logging.WARNING, logger="sparse_coding.graphs.drawing"):
        draw_image(graph, tmp_path / "g.svg", fmt="svg", timeout_s=5)
    assert commands == ["dot"]  # the fallback lays out in rows: no second dot layout
    assert "redrawing with compact labels" in caplog.text
    assert "compact\u00a0labels" in (tmp_path / "g.svg").read_text(encoding="utf-8")

    def draw_too_slow(source, image, *, fmt, timeout_s, pinned):
        raise RenderTimeout(f"dot took longer than {timeout_s:.0f} s")

    monkeypatch.setattr(drawing, "render_image", draw_too_slow)  # the fallback's drawing times out too
    with pytest.raises(RenderTimeout):
        draw_image(graph, tmp_path / "h.svg", fmt="svg", timeout_s=5, work_dir=tmp_path)
    assert not (tmp_path / "h.svg").exists() and not list(tmp_path.glob("sc_draw_*"))  # its source removed


def _svg_aspect(svg_path: Path) -> float:
    root = ET.parse(svg_path).getroot()
    return float(root.get("width").removesuffix("pt")) / float(root.get("height").removesuffix("pt"))


def test_wide_ranks_wrap_to_a_readable_aspect(tmp_path):
    graph = Graph(metadata={"script": "pipe.py"})
    for i in range(240):  # two ranks of 120, as a pipe.py graph of two layers (compact, pinned)
        graph.add_node(Node.from_id(f"resid_{i % 2}.{i}", hook=f"blocks.{i % 2}.hook_resid_pre"))
    for i in range(0, 240, 2):
        graph.add_edge(f"resid_0.{i}", f"resid_1.{(i * 7 + 1) % 240}", 1.0)
    draw_image(graph, tmp_path / "strip.svg", fmt="svg", options=RenderOptions(max_row_nodes=1000))
    draw_image(graph, tmp_path / "wrapped.svg", fmt="svg")
    assert _svg_aspect(tmp_path / "strip.svg") > 10
    assert 0.5 < _svg_aspect(tmp_path / "wrapped.svg") < 3


def test_a_small_graph_keeps_dots_own_layout_and_curved_edges():
    assert not drawing.pinned_layout(chain_graph(), RenderOptions())
    assert drawing.pinned_layout(big_graph(12, 20), RenderOptions(max_full_nodes=10))


def test_edges_and_logit_cells_carry_their_numbers_as_svg_tooltips(tmp_path):
    graph = chain_graph()
    graph.nodes["resid_0.1"].logits_up = [("Ġdog", 0.125)]
    dot = tmp_path / "g.dot"
    dot.write_text(dot_source(graph), encoding="utf-8")
    render_image(dot, tmp_path / "g.svg", fmt="svg", timeout_s=60)
    assert svg_edges(tmp_path / "g.svg")["attn_0.2->mlp_0.3"] == "attn_0.2 → mlp_0.3: effect -0.5"
    titles = [a.get(XLINK_TITLE) for a in ET.parse(tmp_path / "g.svg").getroot().iter(f"{SVG}a")]
    assert "0.125" in titles


def _graphviz_sizes(labels: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Name -> (width, height) in points that dot gives each HTML-like label."""
    lines = [f'  "{name}" [label={label}];' for name, label in labels.items()]
    source = 'digraph { node [shape=plain, fontname="Helvetica", fontsize="11"];\n' + "\n".join(lines) + "\n}"
    out = subprocess.run(["dot", "-Tjson0"], input=source.encode(), capture_output=True, check=True)
    objects = json.loads(out.stdout)["objects"]
    return {o["name"]: (72 * float(o["width"]), 72 * float(o["height"])) for o in objects}


def test_label_sizes_bound_the_sizes_graphviz_draws_labels_at():
    graph = big_graph(6, 10)
    for i, node in enumerate(graph.nodes.values()):
        node.contexts = [Context(["Ġthe", " ü", "日本", "W" * i, "<&>"], [1.0, 0.5, 0.0, 2.0, 0.1])]
        node.logits_up, node.explanation = [("Ġmoon", 0.5), ("%@", 0.25)], "the explanation " * (i % 3)
    labels = {
        f"{node.id} {'compact' if compact else 'full'}": render.node_markup(node, compact, RenderOptions())
        for node in graph.nodes.values()
        for compact in (False, True)
    }
    for chars in (40, 60, 150):
        notes = render.caption_notes(graph, ["a note that wraps " * 6], RenderOptions(max_full_nodes=2))
        labels[f"legend {chars}"] = render.legend_markup(graph, notes, chars)
    ascii_text = escape_text("".join(map(chr, range(32, 127))))
    table = '<TABLE BORDER="{}" CELLBORDER="{}" CELLSPACING="{}" CELLPADDING="{}">{}</TABLE>'
    labels |= {  # hand-made: every ASCII character plain and bold, spans, nested tables, lines of mixed sizes
        "ascii": f"<{ascii_text}>",
        "bold": f"<<B>{ascii_text}</B>>",
        "span": "<"
        + table.format(
            1, 1, 2, 2, f'<TR><TD COLSPAN="3">{"W" * 30}</TD></TR><TR><TD>i</TD><TD>ii</TD><TD>iii</TD></TR>'
        )
        + ">",
        "nested": "<"
        + table.format(
            0, 0, 0, 1, "<TR><TD>" + table.format(1, 0, 4, 3, "<TR><TD>x</TD></TR>") + "</TD><TD>yy</TD></TR>"
        )
        + ">",
        "lines": '<<FONT POINT-SIZE="9">small</FONT><BR/><FONT POINT-SIZE="14">big <B>bold</B></FONT><BR/>x>',
    }
    drawn = _graphviz_sizes(labels)
    for name, label in labels.items():
        width, height = label_size(label)
        assert drawn[name][0] <= width <= 1.4 * drawn[name][0] + 10, name
        assert drawn[name][1] <= height <= 1.2 * drawn[name][1] + 10, name


def test_a_pinned_layout_puts_rows_of_boxes_side_by_side_without_overlap():
    graph = big_graph(12, 30)
    laid_out, options = drawing.row_layout(graph, RenderOptions(max_full_nodes=10))
    boxes = [b for name, b in laid_out.boxes.items() if not name.startswith("__")]
    assert len(boxes) == len(graph.nodes) and options.max_row_nodes is not None
    for a in boxes:
        assert 0 <= a.x - a.width / 2 and a.x + a.width / 2 <= laid_out.width and 0 <= a.y <= laid_out.height
        for b in boxes:
            apart_x = abs(a.x - b.x) >= (a.width + b.width) / 2 + 18
            apart_y = abs(a.y - b.y) >= (a.height + b.height) / 2 + 0.6 * 72 - 1e-6
            assert a is b or apart_x or apart_y
