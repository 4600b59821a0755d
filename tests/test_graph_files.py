"""Graph files: lossless round trip, merging across runs, atomic writes, the .dot reader."""

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sparse_coding.errors import GraphFileError
from sparse_coding.graphs import graph_files
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import (
    graph_from_dot,
    graph_to_dot,
    load_graph,
    parse_dot,
    save_graph,
    update_graph_files,
)


def run_graph(prompt: str = "The cat", effect: float = 0.5, extra: str | None = None) -> Graph:
    graph = Graph(metadata={"prompt": prompt, "summary": "features explain ~73% of the effect"})
    graph.add_node(
        Node.from_id(
            "resid_3.331",
            activation=2.5,
            attribution=0.1 + 0.2,
            hook="blocks.3.hook_resid_pre",
            neuronpedia_id="gpt2-small/3-res-jb",
            contexts=[Context(["Ġthe", '"\\n', "\n", "😀"], [0.0, 1.0, 2.5, 0.3])],
            logits_up=[("Ġcat", 1.2), ("&", 0.0)],
            logits_down=[("Ċ", -0.5)],
            explanation='dogs & "cats"',
        )
    )
    graph.add_node(Node.from_id("mlp_error_3", attribution=-0.1))
    graph.add_node(Node.from_id("resid_4.2", activation=1.0, attribution=-1e-12))
    graph.add_edge("resid_3.331", "resid_4.2", effect)
    graph.add_edge("mlp_error_3", "resid_4.2", -0.2)
    if extra:
        graph.add_node(Node.from_id(extra, activation=0.5))
        graph.add_edge("resid_4.2", extra, 0.25)
    return graph


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "data" / "gpt2"
    return folder / "graph.dot", folder / "graph.json", folder / "graph.svg"


def snapshot(*files: Path) -> list[bytes]:
    return [f.read_bytes() for f in files]


def test_written_read_back_and_written_again_is_byte_identical(paths, tmp_path):
    dot, js, svg = paths
    graph = run_graph()
    save_graph(graph, dot, svg)
    assert load_graph(dot) == graph
    again = tmp_path / "again" / "graph.dot"
    save_graph(load_graph(dot), again, again.with_suffix(".svg"))
    assert snapshot(dot, js) == snapshot(again, again.with_suffix(".json"))


def test_the_dot_alone_reloads_the_graph_losslessly(paths):
    dot, js, svg = paths
    graph = run_graph()
    save_graph(graph, dot, svg)
    js.unlink()
    assert load_graph(dot) == graph


def test_files_follow_the_design_contract(paths):
    dot, js, svg = paths
    save_graph(run_graph(), dot, svg)
    data = json.loads(js.read_text(encoding="utf-8"))
    assert set(data) == {"nodes", "edges", "metadata"}
    error = next(n for n in data["nodes"] if n["id"] == "mlp_error_3")
    assert error["feature"] is None and error["attribution"] == -0.1
    assert {"source": "mlp_error_3", "target": "resid_4.2", "effect": -0.2} in data["edges"]
    # dot itself reads the file, every edge carries effect, feature nodes activation.
    canon = subprocess.run(["dot", "-Tcanon", str(dot)], capture_output=True, text=True, check=True)
    parsed = parse_dot(canon.stdout)
    assert {k: v["effect"] for k, v in parsed.edges.items() if "effect" in v} == {
        ("resid_3.331", "resid_4.2"): "0.5",
        ("mlp_error_3", "resid_4.2"): "-0.2",
    }
    assert parsed.nodes["resid_3.331"]["activation"] == "2.5"
    assert parsed.nodes["resid_4.2"]["attribution"] == "-1e-12"
    # Graphviz's own rewrite of the file still reloads as the same graph.
    assert graph_from_dot(canon.stdout) == run_graph()
    ET.parse(svg)


def test_png_follows_the_extension(paths):
    dot, _, _ = paths
    png = dot.with_suffix(".png")
    save_graph(run_graph(), dot, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_image_extension_is_refused_before_writing(paths):
    dot, _, _ = paths
    with pytest.raises(GraphFileError, match=r"\.jpg"):
        save_graph(run_graph(), dot, dot.with_suffix(".jpg"))
    assert not dot.exists()


def test_update_merges_runs_and_is_idempotent_for_nodes_and_edges(paths):
    dot, js, svg = paths
    assert load_graph(dot) is None
    update_graph_files(run_graph(prompt="one"), dot, svg)
    first = load_graph(dot)
    update_graph_files(run_graph(prompt="one"), dot, svg)
    again = load_graph(dot)
    assert again.nodes == first.nodes and again.edges == first.edges
    merged = update_graph_files(run_graph(prompt="two", effect=-0.75, extra="attn_5.7"), dot, svg)
    loaded = load_graph(dot)
    assert loaded == merged
    assert set(loaded.nodes) == {"resid_3.331", "mlp_error_3", "resid_4.2", "attn_5.7"}
    assert len(loaded.edges) == 3
    assert loaded.edges[("resid_3.331", "resid_4.2")].effect == -0.75
    assert [r["prompt"] for r in loaded.metadata["runs"]] == ["one", "one", "two"]


def test_the_json_is_preferred_only_when_it_agrees_with_the_dot(paths, caplog):
    dot, js, svg = paths
    save_graph(run_graph(), dot, svg)
    data = json.loads(js.read_text(encoding="utf-8"))
    data["metadata"]["from"] = "json"
    js.write_text(json.dumps(data), encoding="utf-8")
    assert load_graph(dot).metadata["from"] == "json"
    data["edges"] = data["edges"][:1]  # disagrees: the .dot wins
    js.write_text(json.dumps(data), encoding="utf-8")
    assert "from" not in load_graph(dot).metadata
    assert "disagree" in caplog.text
    js.write_text("{not json", encoding="utf-8")
    assert load_graph(dot) == run_graph()


def test_only_a_json_still_loads(paths):
    dot, js, svg = paths
    save_graph(run_graph(), dot, svg)
    dot.unlink()
    assert load_graph(dot) == run_graph()


def test_an_unreadable_dot_stops_the_run_and_is_not_overwritten(paths):
    dot, js, svg = paths
    dot.parent.mkdir(parents=True)
    dot.write_text("digraph { a -> ", encoding="utf-8")
    with pytest.raises(GraphFileError, match=str(dot)):
        update_graph_files(run_graph(), dot, svg)
    assert dot.read_text(encoding="utf-8") == "digraph { a -> "
    assert not js.exists() and not svg.exists()


def test_a_foreign_node_id_makes_the_dot_unreadable(paths):
    dot, _, _ = paths
    dot.parent.mkdir(parents=True)
    dot.write_text('digraph { "logits" -> "resid_0.1" [effect=1] }', encoding="utf-8")
    with pytest.raises(GraphFileError, match="not a node id"):
        load_graph(dot)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fail_at", ["_write_synced", "draw_image", "_commit"])
def test_a_failure_mid_write_leaves_the_old_files_intact(paths, monkeypatch, fail_at):
    dot, js, svg = paths
    save_graph(run_graph(prompt="old"), dot, svg)
    before = snapshot(dot, js, svg)
    real = getattr(graph_files, fail_at)
    calls = []

    def fail_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 or fail_at == "draw_image":
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_files, fail_at, fail_on_second_call)
    with pytest.raises(RuntimeError, match="injected"):
        update_graph_files(run_graph(prompt="new", extra="attn_5.7"), dot, svg)
    if fail_at == "_commit":  # the .dot was already replaced, whole; .json and image not
        assert load_graph(dot) is not None
        assert snapshot(js, svg) == before[1:]
    else:
        assert snapshot(dot, js, svg) == before
    assert no_temp_files(dot.parent)


def test_an_interrupt_during_fsync_leaves_the_old_files_intact(paths, monkeypatch):
    dot, js, svg = paths
    save_graph(run_graph(prompt="old"), dot, svg)
    before = snapshot(dot, js, svg)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(graph_files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_graph(run_graph(prompt="new"), dot, svg)
    assert snapshot(dot, js, svg) == before
    assert no_temp_files(dot.parent)


def test_when_dot_fails_the_data_is_saved_and_the_old_image_kept(paths, monkeypatch):
    dot, js, svg = paths
    save_graph(run_graph(prompt="old"), dot, svg)
    old_svg = svg.read_bytes()

    def broken(*args, **kwargs):
        raise GraphFileError("dot could not draw it")

    monkeypatch.setattr(graph_files, "draw_image", broken)
    with pytest.raises(GraphFileError, match="were saved"):
        save_graph(run_graph(prompt="new"), dot, svg)
    assert load_graph(dot).metadata["prompt"] == "new"
    assert svg.read_bytes() == old_svg
    assert no_temp_files(dot.parent)


def test_the_reader_handles_ordinary_hand_written_dot():
    text = """
    /* comment */ strict digraph "g" {
      // line comment
      graph [rankdir=LR]; ratio = "fill";
      node [shape=box];
      a [label="x" + "y", w=1.5]; "b\\"q" ; c:port:n -> d:s [effect=-2];
      subgraph cluster_x { e; f } -> a -> { b; "g" } [effect=.5, weight=3]
      h [label=<<B>bold &amp; <I>nested</I></B>>];
    }
    """
    parsed = parse_dot(text)
    assert parsed.graph_attrs == {"rankdir": "LR", "ratio": "fill"}
    assert parsed.nodes["a"] == {"label": "xy", "w": "1.5"}
    assert 'b"q' in parsed.nodes
    assert parsed.edges[("c", "d")] == {"effect": "-2"}
    assert parsed.edges[("e", "a")]["effect"] == ".5"
    assert parsed.edges[("a", "g")]["weight"] == "3"
    assert parsed.nodes["h"]["label"] == "<<B>bold &amp; <I>nested</I></B>>"


@pytest.mark.parametrize("broken", ["", "digraph {", "digraph { a [x=] }", 'digraph { "a }'])
def test_the_reader_rejects_broken_dot(broken):
    with pytest.raises(ValueError):
        parse_dot(broken)


def test_lone_surrogates_and_odd_metadata_survive(paths):
    dot, js, svg = paths
    graph = run_graph()
    graph.nodes["resid_4.2"].contexts = [Context(["\ud800x", "\\\udfff"], [1.0, 2.0])]
    graph.metadata["path"] = Path("/x")  # not JSON: written as its str
    save_graph(graph, dot, svg)
    js.unlink()
    loaded = load_graph(dot)
    assert loaded.nodes == graph.nodes and loaded.metadata["path"] == "/x"
    assert graph_to_dot(loaded) == graph_to_dot(loaded)


def test_without_graphviz_the_dot_and_json_are_written_and_the_image_is_skipped(
    tmp_path, monkeypatch, caplog
):
    from sparse_coding.graphs import graph_files

    monkeypatch.setattr(graph_files.shutil, "which", lambda name: None)
    graph = Graph()
    graph.add_node(Node.from_id("resid_1.2", activation=1.0))
    graph_files.save_graph(graph, tmp_path / "g.dot", tmp_path / "g.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot", "g.json"]
    assert "not installed" in caplog.text
