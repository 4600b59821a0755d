"""Graph files: the canonical .json, the derived .dot/image/page, imports, per-run merges, refusals."""

import errno
import hashlib
import io
import itertools
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sparse_coding.errors import GraphFileError, SparseCodingError, StorageError
from sparse_coding.files import storage
from sparse_coding.graphs import dot_import, drawing, graph_files
from sparse_coding.graphs.dot_format import graph_to_dot
from sparse_coding.graphs.dot_import import graph_from_dot
from sparse_coding.graphs.dot_parser import parse_dot
from sparse_coding.graphs.graph import Context, Graph, Node, run_record
from sparse_coding.graphs.graph_files import (
    check_output_names,
    load_graph,
    save_graph,
    update_graph_files,
)

# A graph as the version before this one wrote it (.json format 2, the .dot carrying the data too).
OLD_FILES = Path(__file__).parent / "data" / "format2"


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


def stored_graph(run_id: str = "r1", **kwargs) -> Graph:
    """A graph as a run leaves it in the files: its values assigned to run `run_id`."""
    graph = run_graph(**kwargs)
    graph.add_run(run_record(graph.metadata, run_id))
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


def test_a_derived_dot_is_never_parsed_and_an_empty_graph_reloads(paths, monkeypatch):
    """Loading reads the .json alone, even beside an edited .dot; an empty graph (pipe.py
    --allow-empty) reloads as well."""
    dot, _, svg = paths
    graph = stored_graph()  # one run record: its time is compared below, so it is made once
    expected = graph.to_json()
    save_graph(graph, dot, svg)
    dot.write_text(dot.read_text(encoding="utf-8") + "// my note\n", encoding="utf-8")
    empty = Graph(metadata={"prompt": "p"})
    empty.add_run(run_record(empty.metadata, "r0"))
    save_graph(empty, dot.with_name("empty.dot"), None)

    def refuse(*args):
        raise AssertionError("a derived .dot was parsed")

    monkeypatch.setattr(dot_import, "parse_dot", refuse)
    assert load_graph(dot).to_json() == expected
    assert not load_graph(dot.with_name("empty.dot")).nodes


def test_a_dot_of_ours_without_its_json_is_imported_with_its_numbers(paths):
    dot, js, svg = paths
    graph = stored_graph()
    save_graph(graph, dot, svg)
    js.unlink()
    imported = load_graph(dot)
    (run,) = imported.runs
    assert run["script"] == "imported" and run["imported_from"] == "graph.dot"
    assert {k: e.effect for k, e in imported.edges.items()} == {k: e.effect for k, e in graph.edges.items()}
    for node_id, node in graph.nodes.items():
        assert (imported.nodes[node_id].activation, imported.nodes[node_id].attribution) == (
            node.activation,
            node.attribution,
        )
        assert imported.nodes[node_id].hook == node.hook


def test_the_json_is_canonical_and_the_dot_says_it_is_derived(paths):
    dot, js, svg = paths
    graph = stored_graph()
    save_graph(graph, dot, svg)
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["format"] == 3
    assert data["derived"] == {
        path.name: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "previous": None}
        for path in (dot, svg, dot.with_suffix(".html"))
    }
    assert dot.read_text(encoding="utf-8").startswith("// Drawn by sparse_coding from its canonical .json")
    assert (
        "<!-- Drawn by sparse_coding from its canonical .json twin (same name) -->\n<svg" in svg.read_text()
    )
    ET.parse(svg)
    dot.unlink()
    assert load_graph(dot) == graph  # the .json alone is the graph


def test_files_follow_docs_design(paths):
    dot, js, svg = paths
    save_graph(run_graph(), dot, svg)
    data = json.loads(js.read_text(encoding="utf-8"))
    assert set(data) == {"format", "derived", "nodes", "edges", "metadata"}
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
    # Graphviz's own rewrite of the file still imports with the same numbers.
    imported = graph_from_dot(canon.stdout)
    assert {k: e.effect for k, e in imported.edges.items()} == {
        (s, t): e["effect"] for s, t, e in [(e["source"], e["target"], e) for e in data["edges"]]
    }
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


def test_runs_merge_apart_and_edges_are_drawn_at_their_mean_with_the_count(paths):
    dot, js, svg = paths
    assert load_graph(dot) is None
    update_graph_files(run_graph(prompt="one", effect=0.5), dot, svg)
    merged = update_graph_files(run_graph(prompt="two", effect=-0.75, extra="attn_5.7"), dot, svg)
    loaded = load_graph(dot)
    assert loaded == merged
    assert set(loaded.nodes) == {"resid_3.331", "mlp_error_3", "resid_4.2", "attn_5.7"}
    assert [r["prompt"] for r in loaded.runs] == ["one", "two"]
    first, second = (r["id"] for r in loaded.runs)
    edge = loaded.edges[("resid_3.331", "resid_4.2")]
    assert edge.runs == {first: 0.5, second: -0.75} and edge.effect == (0.5 - 0.75) / 2
    assert loaded.edges[("resid_4.2", "attn_5.7")].runs == {second: 0.25}
    assert loaded.nodes["resid_3.331"].runs[first]["attribution"] == 0.1 + 0.2
    data = json.loads(js.read_text(encoding="utf-8"))
    entry = next(e for e in data["edges"] if e["source"] == "resid_3.331")
    assert entry["n_runs"] == 2 and entry["effect"] == -0.125
    edge_line = next(
        line for line in dot.read_text(encoding="utf-8").splitlines() if '"resid_3.331" ->' in line
    )
    assert "measured by 2 runs, drawn at their mean" in edge_line
    assert "prompt" not in data["metadata"] and data["metadata"]["summary"].startswith("2 runs")
    assert f"run {first}" in data["metadata"]["summary"] and f"run {second}" in data["metadata"]["summary"]
    # Alpha is relative to the largest drawn (mean) edge, 0.25, not to run one's 0.5: 0.125 / 0.25 -> 0x80.
    assert 'color="#b2182b80"' in edge_line


def test_a_run_with_other_sae_sources_is_refused_naming_both_and_nothing_is_written(paths):
    dot, js, svg = paths
    sources = {"resid_3": "gpt2-small-res-jb"}
    first = run_graph(prompt="one")
    first.metadata |= {"model": "gpt2", "sae_sources": sources}
    update_graph_files(first, dot, svg)
    before = snapshot(dot, js, svg)
    other = run_graph(prompt="two")
    other.metadata |= {"model": "gpt2", "sae_sources": {"resid_3": "me/my-saes/blocks.{layer}"}}
    with pytest.raises(GraphFileError) as refused:
        update_graph_files(other, dot, svg)
    message = str(refused.value)
    assert "'gpt2-small-res-jb'" in message and "'me/my-saes/blocks.{layer}'" in message
    assert "GRAPH_DOT_FILE" in message and "--new-graph" in message
    assert snapshot(dot, js, svg) == before
    fresh = update_graph_files(other, dot, svg, new_graph=True)
    assert [r["prompt"] for r in fresh.runs] == ["two"]
    aside = sorted(p.name for p in dot.parent.iterdir() if ".before-" in p.name)
    assert len(aside) == 4 and all(p.startswith("graph.before-") for p in aside)
    set_aside = {Path(name).suffix: dot.parent / name for name in aside}  # .dot .html .json .svg
    assert snapshot(set_aside[".dot"], set_aside[".json"], set_aside[".svg"]) == before


def test_a_trace_run_on_other_tokens_is_refused_since_its_positions_name_other_tokens(paths):
    dot, js, svg = paths

    def trace_run(tokens: list[str]) -> Graph:
        graph = run_graph(prompt="".join(tokens))
        graph.metadata |= {"script": "trace.py", "prompt_tokens": tokens}
        return graph

    update_graph_files(trace_run(["<|endoftext|>", "The", " cat"]), dot, svg)
    update_graph_files(trace_run(["<|endoftext|>", "The", " cat"]), dot, svg)  # the same tokens merge
    before = snapshot(dot, js, svg)
    with pytest.raises(GraphFileError, match=r"token positions.*' dog'") as refused:
        update_graph_files(trace_run(["<|endoftext|>", "The", " dog"]), dot, svg)
    assert "--new-graph" in str(refused.value)
    assert snapshot(dot, js, svg) == before


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
    return not [p for p in folder.iterdir() if p.name.endswith((".tmp", ".commit"))]


def shape(dot: Path) -> tuple:
    """What tells the old graph from the new one: nodes, run count, runs per edge."""
    graph = load_graph(dot)
    return sorted(graph.nodes), len(graph.runs), sorted((k, len(e.runs)) for k, e in graph.edges.items())


STEPS = {
    "write": (storage, "open"),
    "fsync": (storage.os, "fsync"),
    "chmod": (storage.os, "chmod"),
    "rename": (storage.os, "replace"),
}


@pytest.mark.parametrize(
    ("step", "error"),
    [(step, OSError(5, "injected I/O error")) for step in STEPS] + [("rename", KeyboardInterrupt())],
)
def test_a_failure_at_every_step_of_the_commit_leaves_the_old_or_the_new_graph(
    tmp_path, monkeypatch, caplog, step, error
):
    """Failing the k-th call of a step, for every k: the .json is the old graph or the new one; the
    next run finds the derived files current or stale (never 'edited') and adds its run once."""
    base = tmp_path / "base" / "graph.dot"
    update_graph_files(run_graph(prompt="old"), base, base.with_suffix(".svg"))
    new_run = run_graph(prompt="new", extra="attn_5.7")
    module, name = STEPS[step]
    real = getattr(module, name, None) or open
    outcomes = []
    for k in itertools.count(1):
        dot = tmp_path / f"k{k}" / "graph.dot"
        shutil.copytree(base.parent, dot.parent)
        old = shape(dot)
        calls = []

        def fail_at_k(*args, calls=calls, k=k, **kwargs):
            calls.append(1)
            if len(calls) == k:
                raise error
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fail_at_k, raising=False)
        try:
            update_graph_files(new_run, dot, dot.with_suffix(".svg"))
            done = True
        except (OSError, KeyboardInterrupt, SparseCodingError):
            done = False
        monkeypatch.undo()
        got = shape(dot)
        assert got == old or got == (sorted([*old[0], "attn_5.7"]), 2, got[2]) and len(got[2]) == 3
        assert no_temp_files(dot.parent)
        outcomes.append("new" if got != old else "old")
        caplog.clear()
        update_graph_files(run_graph(prompt="next"), dot, dot.with_suffix(".svg"))
        assert "moved aside" not in caplog.text and not [
            p for p in dot.parent.iterdir() if ".edited-" in p.name
        ]
        runs = [(run["id"], run.get("prompt")) for run in load_graph(dot).runs]
        assert len(runs) == got[1] + 1, (k, done, runs, caplog.text)  # the state, should it ever fail
        if done:
            break
    assert len(outcomes) > 2 and outcomes[0] == "old" and outcomes[-1] == "new"


def test_when_dot_fails_nothing_is_written_and_a_retry_adds_the_run_once(paths, monkeypatch):
    dot, js, svg = paths
    update_graph_files(run_graph(prompt="old"), dot, svg)
    before = snapshot(dot, js, svg, dot.with_suffix(".html"))

    def broken(*args, **kwargs):
        raise GraphFileError("dot could not draw it")

    monkeypatch.setattr(drawing, "render_image", broken)
    run = run_graph(prompt="new")
    with pytest.raises(GraphFileError, match="nothing was written"):
        update_graph_files(run, dot, svg)
    assert snapshot(dot, js, svg, dot.with_suffix(".html")) == before
    assert no_temp_files(dot.parent)
    monkeypatch.undo()
    update_graph_files(run, dot, svg)
    assert [r["prompt"] for r in load_graph(dot).runs] == ["old", "new"]


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
    graph = stored_graph()
    graph.nodes["resid_4.2"].contexts = [Context(["\ud800x", "\\\udfff"], [1.0, 2.0])]
    graph.metadata["path"] = Path("/x")  # not JSON: written as its str
    save_graph(graph, dot, svg)
    loaded = load_graph(dot)
    assert loaded.nodes == graph.nodes and loaded.metadata["path"] == "/x"
    assert graph_to_dot(loaded) == graph_to_dot(loaded)
    dot.read_text(encoding="utf-8")  # the drawing is UTF-8 too


def test_without_graphviz_the_dot_and_json_are_written_and_the_image_is_skipped(
    tmp_path, monkeypatch, caplog
):

    monkeypatch.setattr(graph_files.shutil, "which", lambda name: None)
    graph = Graph()
    graph.add_node(Node.from_id("resid_1.2", activation=1.0))
    graph_files.save_graph(graph, tmp_path / "g.dot", tmp_path / "g.svg")
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert written == ["g.dot", "g.html", "g.json"]
    assert "not installed" in caplog.text


@pytest.mark.parametrize("suffix", [".dot", ".svg", ".html"])
def test_a_derived_file_edited_by_hand_is_moved_aside_with_a_warning_never_parsed(paths, caplog, suffix):
    dot, js, svg = paths
    update_graph_files(run_graph(prompt="one", effect=0.5), dot, svg)
    edited = dot.with_suffix(suffix)
    text = edited.read_text(encoding="utf-8").replace("0.5", "0.9") + "\n<!-- mine -->\n"
    edited.write_text(text, encoding="utf-8")
    merged = update_graph_files(run_graph(prompt="two", effect=0.3), dot, svg)
    assert merged.edges[("resid_3.331", "resid_4.2")].effect == (0.5 + 0.3) / 2  # the edit is not read
    (aside,) = [p for p in dot.parent.iterdir() if ".edited-" in p.name]
    assert aside.name.startswith("graph.edited-") and aside.suffix == suffix
    assert aside.read_text(encoding="utf-8") == text
    assert f"moved aside as {aside.name}" in caplog.text
    assert "<!-- mine -->" not in edited.read_text(encoding="utf-8")  # drawn again from the .json
    caplog.clear()
    update_graph_files(run_graph(prompt="three"), dot, svg)
    assert "moved aside" not in caplog.text


def test_a_dot_without_its_json_is_imported_keeping_edges_without_effect(paths):
    dot, js, svg = paths
    dot.parent.mkdir(parents=True)
    hand_made = """digraph notes {
      label="my notes";
      "resid_3.331" [activation=2];
      "resid_4.2";
      "resid_3.331" -> "resid_4.2" [effect=0.75];
      "resid_4.2" -> "attn_5.7" [color=green];
      idea [shape=note, label="check this"];
      idea -> "resid_3.331";
    }"""
    dot.write_text(hand_made, encoding="utf-8")
    merged = update_graph_files(run_graph(prompt="new"), dot, svg)
    imported, run = (r["id"] for r in merged.runs)
    assert merged.runs[0]["script"] == "imported" and merged.runs[0]["imported_from"] == "graph.dot"
    edge = merged.edges[("resid_3.331", "resid_4.2")]
    assert edge.runs == {imported: 0.75, run: 0.5}
    assert merged.nodes["resid_3.331"].runs[imported] == {"activation": 2.0}
    assert merged.user.edges == {("resid_4.2", "attn_5.7"): {"color": "green"}, ("idea", "resid_3.331"): {}}
    assert merged.user.nodes == {"idea": {"shape": "note", "label": "check this"}}
    assert merged.user.graph_attrs == {"label": "my notes"}
    written = parse_dot(dot.read_text(encoding="utf-8"))
    assert written.edges[("resid_4.2", "attn_5.7")] == {"color": "green"}
    assert written.nodes["idea"]["label"] == "check this" and written.graph_attrs["label"] == "my notes"
    assert json.loads(js.read_text(encoding="utf-8"))["user_drawing"]["nodes"]["idea"]["shape"] == "note"
    assert load_graph(dot) == merged
    (original,) = [p for p in dot.parent.iterdir() if ".imported-" in p.name]
    assert original.read_text(encoding="utf-8") == hand_made  # imported once, never lost


def test_an_imported_html_label_is_drawn_again_as_html(paths):
    """The derived .dot writes a user's HTML label as HTML: Graphviz draws the markup, not its text."""
    dot, _, svg = paths
    dot.parent.mkdir(parents=True)
    dot.write_text(
        'digraph notes { idea [shape=note, label=<<b>check</b> this>]; idea -> "resid_3.2" '
        "[xlabel=<<i>why</i>>]; }",
        encoding="utf-8",
    )
    update_graph_files(run_graph(prompt="new"), dot, svg)
    text = dot.read_text(encoding="utf-8")
    assert '"idea" [shape="note", label=<<b>check</b> this>];' in text
    assert '"idea" -> "resid_3.2" [xlabel=<<i>why</i>>];' in text
    drawn = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=True).stdout
    words = [t.text for t in ET.fromstring(drawn).iter("{http://www.w3.org/2000/svg}text")]
    assert "check" in words and "why" in words and not any("<b>" in (w or "") for w in words)


def test_a_seed_graph_grows_with_its_nodes_mapped_to_this_tools_ids(paths):
    dot, js, svg = paths
    dot.parent.mkdir(parents=True)
    seed = """digraph G {
      "Effects plotted out of collected: ~46.3%" [shape=box];
      "9.331" [label=<<TABLE><TR><TD>9.331</TD></TR></TABLE>>, shape=plaintext];
      "10.5" [label="10.5", shape=plaintext];
      "resid_error_9.0" [label="resid_error_9.0"];
      "9.331" -> "10.5" [color="#0000FF80"];
      "resid_error_9.0" -> "10.5" [color="#FF000040"];
    }"""
    dot.write_text(seed, encoding="utf-8")
    run = Graph(metadata={"prompt": "The cat", "summary": "new run"})
    run.add_node(Node.from_id("resid_9.331", activation=3.0))
    run.add_node(Node.from_id("resid_10.5", activation=1.0))
    run.add_edge("resid_9.331", "resid_10.5", 0.4)
    merged = update_graph_files(run, dot, svg)
    assert set(merged.nodes) == {"resid_9.331", "resid_10.5", "resid_error_9"}
    assert merged.user.edges == {
        ("resid_9.331", "resid_10.5"): {"color": "#0000FF80"},
        ("resid_error_9", "resid_10.5"): {"color": "#FF000040"},
    }
    assert list(merged.user.nodes) == ["Effects plotted out of collected: ~46.3%"]
    assert merged.edges[("resid_9.331", "resid_10.5")].effect == 0.4
    text = dot.read_text(encoding="utf-8")
    assert '"resid_error_9" -> "resid_10.5" [color="#FF000040"]' in text  # the seed's drawn edge kept
    assert '"resid_9.331" -> "resid_10.5" [color="#0000FF80"]' not in text  # replaced by the measured one
    ET.parse(svg)


@pytest.mark.parametrize(
    "foreign",
    ["", "   \n", 'digraph G { label="my notes" }', "digraph { a -> b }", 'digraph { rankdir=LR; "x y" }'],
)
def test_a_dot_the_tool_cannot_read_as_a_graph_is_refused_and_left_as_it_is(paths, foreign):
    dot, js, svg = paths
    dot.parent.mkdir(parents=True)
    dot.write_text(foreign, encoding="utf-8")
    svg.write_text("<svg>the user's own drawing</svg>", encoding="utf-8")
    with pytest.raises(GraphFileError, match=str(dot)) as refused:
        update_graph_files(run_graph(), dot, svg)
    assert "left as it is" in str(refused.value)
    assert dot.read_text(encoding="utf-8") == foreign
    assert svg.read_text(encoding="utf-8") == "<svg>the user's own drawing</svg>" and not js.exists()


@pytest.mark.parametrize(
    ("dot_name", "image_name", "message"),
    [
        ("same.svg", "same.svg", "would overwrite the graph file same.svg"),
        ("g.dot", "g.json", "would overwrite the graph file g.json"),
        ("g.json", "g.svg", "the name of its own canonical .json"),
        ("g.dot", "g.jpg", r"\.jpg"),
    ],
)
def test_colliding_output_names_are_refused_before_any_work(tmp_path, dot_name, image_name, message):
    with pytest.raises(GraphFileError, match=message):
        check_output_names(tmp_path / dot_name, tmp_path / image_name)
    with pytest.raises(GraphFileError, match=message):
        update_graph_files(run_graph(), tmp_path / dot_name, tmp_path / image_name)
    assert list(tmp_path.iterdir()) == []
    check_output_names(tmp_path / "g.dot", tmp_path / "g.svg")


def test_a_full_disk_is_a_clear_error_naming_the_folder_and_the_old_files_stay(paths, monkeypatch):
    dot, js, svg = paths
    update_graph_files(run_graph(prompt="old"), dot, svg)
    before = snapshot(dot, js, svg)

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "open", lambda *a, **k: FullDisk(), raising=False)
    with pytest.raises(StorageError) as full:
        update_graph_files(run_graph(prompt="new", extra="attn_5.7"), dot, svg)
    assert str(dot.parent) in str(full.value) and "No space left on device" in str(full.value)
    assert "previous files there were left as they were" in str(full.value)
    assert snapshot(dot, js, svg) == before
    assert no_temp_files(dot.parent)


def test_a_format_1_pair_loads_from_its_dot_through_the_import_keeping_its_run(paths):
    dot, js, svg = paths
    dot.parent.mkdir(parents=True)
    shutil.copy(OLD_FILES / "graph.dot", dot)  # the .dot carried the data then
    stale = run_graph(prompt="old run", effect=9.0).to_json()  # a crash between the old two renames
    js.write_text(stale, encoding="utf-8")  # no "format": written by the old code
    loaded = load_graph(dot)
    (run,) = loaded.runs
    assert run["id"] == "r1" and run["prompt"] == "old run"
    assert loaded.edges[("resid_3.331", "resid_4.2")].runs == {"r1": 0.5}
    assert loaded == Graph.from_json((OLD_FILES / "graph.json").read_text(encoding="utf-8"))


def test_an_old_dot_value_edited_by_hand_belongs_to_no_run_the_others_keep_theirs():
    text = (OLD_FILES / "graph.dot").read_text(encoding="utf-8")
    edited = text.replace('activation="1.0", attribution="-1e-12"', 'activation="1.5", attribution="-1e-12"')
    edited = edited.replace('effect="0.5", sc_runs', 'effect="0.7", sc_runs')
    assert 'activation="1.5"' in edited and 'effect="0.7"' in edited
    graph = graph_from_dot(edited)
    assert graph.nodes["resid_4.2"].activation == 1.5 and graph.nodes["resid_4.2"].runs == {}
    assert graph.nodes["resid_3.331"].runs == {"r1": {"activation": 2.5, "attribution": 0.1 + 0.2}}
    assert graph.edges[("resid_3.331", "resid_4.2")].effect == 0.7
    assert graph.edges[("resid_3.331", "resid_4.2")].runs == {}
    assert graph.edges[("mlp_error_3", "resid_4.2")].runs == {"r1": -0.2}


def test_a_format_2_pair_loads_from_its_json_and_its_dot_is_redrawn_not_moved_aside(paths, caplog):
    dot, js, svg = paths
    shutil.copytree(OLD_FILES, dot.parent)  # written by the version before (.json format 2)
    svg.write_text("<svg>drawn by the older version</svg>", encoding="utf-8")
    graph = load_graph(dot)
    assert [r["id"] for r in graph.runs] == ["r1"] and graph.edges[("resid_3.331", "resid_4.2")].effect == 0.5
    merged = update_graph_files(run_graph(prompt="new"), dot, svg)
    assert len(merged.runs) == 2 and "moved aside" not in caplog.text
    assert sorted(p.name for p in dot.parent.iterdir() if not p.name.startswith(".")) == [
        "graph.dot",
        "graph.html",
        "graph.json",
        "graph.svg",
    ]
