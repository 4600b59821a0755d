"""Graph files under faults and hostile folders: planted files, full disks, kills, links, bad values.

Each test here is a failure a fault campaign found: what DATA_DIR holds never
makes a run write outside it, and a run that fails changes nothing.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_coding.errors import GraphFileError, StorageError
from sparse_coding.files import storage
from sparse_coding.graphs import drawing
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import load_graph, save_graph, update_graph_files

ROOT = Path(__file__).resolve().parents[1]


def run_graph(prompt: str = "p", n_features: int = 3) -> Graph:
    """A run of `n_features` labelled features in layer 1, each feeding resid_2.0."""
    graph = Graph(metadata={"prompt": prompt, "summary": "s"})
    graph.add_node(Node.from_id("resid_2.0", activation=1.0))
    for i in range(n_features):
        tokens = [f"token{j}" for j in range(12)]
        graph.add_node(
            Node.from_id(f"resid_1.{i}", activation=1.0 + i, contexts=[Context(tokens, [0.5] * 12)] * 4)
        )
        graph.add_edge(f"resid_1.{i}", "resid_2.0", 0.1 * (i + 1))
    return graph


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- what DATA_DIR holds


def test_a_planted_commit_journal_moves_no_file_anywhere(tmp_path):
    """Security: an older version rolled any (temp, target) pair of `.<name>.dot.commit` forward, so
    anyone able to write into a shared DATA_DIR could replace files the user can write."""
    data, elsewhere = tmp_path / "data" / "gpt2", tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim, source = elsewhere / "victim.txt", elsewhere / "planted.txt"
    victim.write_text("the user's file")
    source.write_text("the attacker's file")
    dot = data / "graph.dot"
    update_graph_files(run_graph("first"), dot, None)
    renames = [[str(source), str(victim)], [str(source), str(data / "../../elsewhere/victim.txt")]]
    (data / ".graph.dot.commit").write_text(json.dumps({"renames": renames}))
    load_graph(dot)  # a reader, e.g. val.py --from-graph
    update_graph_files(run_graph("second"), dot, None)  # a writer
    save_graph(run_graph("third"), dot, None)
    assert victim.read_text() == "the user's file" and source.read_text() == "the attacker's file"


def test_a_graph_with_a_dangling_edge_is_refused_and_no_run_merges_into_it(tmp_path):
    dot = tmp_path / "graph.dot"
    update_graph_files(run_graph("first"), dot, dot.with_suffix(".svg"))
    data = json.loads(dot.with_suffix(".json").read_text())
    data["edges"].append({"source": "resid_1.0", "target": "resid_9.9", "effect": 0.5})
    dot.with_suffix(".json").write_text(json.dumps(data))
    before = files_of(tmp_path)
    for attempt in range(3):
        with pytest.raises(GraphFileError) as refused:
            update_graph_files(run_graph(f"retry {attempt}"), dot, dot.with_suffix(".svg"))
        assert "resid_9.9" in str(refused.value) and "graph.json" in str(refused.value)
    assert files_of(tmp_path) == before


def test_a_value_no_graph_file_may_hold_is_refused_before_anything_is_written(tmp_path):
    graph = run_graph()
    graph.nodes["resid_1.1"].activation = float("nan")
    with pytest.raises(GraphFileError, match=r"resid_1\.1 activation is nan"):
        update_graph_files(graph, tmp_path / "graph.dot", tmp_path / "graph.svg")
    graph = run_graph()
    graph.add_edge("resid_1.0", "resid_5.5", 1.0)  # an edge to no node
    with pytest.raises(GraphFileError, match=r"resid_5\.5"):
        save_graph(graph, tmp_path / "graph.dot", None)
    assert list(tmp_path.iterdir()) == [tmp_path / ".graph.dot.lock"]


# ---------------------------------------------------------------- full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs where this machine lets the test mount one (root on Linux), else None."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    yield folder if mounted.returncode == 0 else None
    if mounted.returncode == 0:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_that_fills_while_the_graph_is_drawn_changes_nothing_and_a_retry_adds_the_run_once(
    small_disk, tmp_path, monkeypatch
):
    folder = small_disk or tmp_path / "fake_disk"
    dot, svg = folder / "graph.dot", folder / "graph.svg"
    update_graph_files(run_graph("first"), dot, svg)
    before = files_of(folder)
    big = run_graph("second", n_features=120)
    if small_disk is None:  # no tmpfs here: Graphviz fails as on a full disk, and the disk says so
        monkeypatch.setattr(storage, "free_space", lambda folder: 1000)

        def no_space(*args, **kwargs):
            raise GraphFileError("dot could not draw drawing.dot: gvwrite_no_z problem 1")

        monkeypatch.setattr(drawing, "render_image", no_space)
    with pytest.raises(StorageError) as full:
        update_graph_files(big, dot, svg)
    message = str(full.value)
    assert str(folder) in message and "B are free" in message and "need" in message
    assert files_of(folder) == before  # the old graph, page and image: all of them, unchanged
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    if small_disk is not None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    update_graph_files(big, dot, svg)
    assert [run["prompt"] for run in load_graph(dot).runs] == ["first", "second"]


def test_the_image_and_texts_must_fit_before_anything_is_replaced(tmp_path, monkeypatch):
    dot = tmp_path / "graph.dot"
    update_graph_files(run_graph("first"), dot, None)
    before = files_of(tmp_path)
    monkeypatch.setattr(storage, "free_space", lambda folder: 10)
    with pytest.raises(StorageError, match="lacks the room") as full:
        update_graph_files(run_graph("second"), dot, None)
    assert "0 kB are free" in str(full.value) and str(tmp_path) in str(full.value)
    assert files_of(tmp_path) == before


# ---------------------------------------------------------------- kills and --new-graph

# A run whose Graphviz call says "drawing" and then waits to be killed.
KILLED_WHILE_DRAWING = """
import sys, time
from pathlib import Path
from sparse_coding.graphs import drawing
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import update_graph_files

def stuck(*args, **kwargs):
    print("drawing", flush=True)
    time.sleep(60)

drawing.render_image = stuck
graph = Graph(metadata={"prompt": "secret prompt", "summary": "s"})
graph.add_node(Node.from_id("resid_1.0", activation=1.0))
update_graph_files(graph, Path(sys.argv[1]), Path(sys.argv[1]).with_suffix(".svg"))
"""


def test_a_run_killed_while_drawing_leaves_nothing_outside_data_dir_and_the_next_run_clears_it(tmp_path):
    data, system_tmp = tmp_path / "data", tmp_path / "system_tmp"
    system_tmp.mkdir()
    dot = data / "graph.dot"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(system_tmp)}
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_DRAWING, str(dot)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout.readline() == "drawing\n"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert (
        list(system_tmp.iterdir()) == []
    )  # Graphviz's sources (the prompt is in their labels) stay in DATA_DIR
    assert [p.name for p in data.iterdir() if p.name.endswith(".tmp")]  # ... where the kill left them
    update_graph_files(run_graph(), dot, None)
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]


def test_new_graph_keeps_the_old_graph_whole_until_the_new_one_is_committed(tmp_path, monkeypatch):
    dot, svg = tmp_path / "graph.dot", tmp_path / "graph.svg"
    update_graph_files(run_graph("old"), dot, svg)
    before = files_of(tmp_path)
    real = os.replace

    def refuse_the_json(src, dst):
        if Path(dst).name == "graph.json":
            raise OSError(5, "injected I/O error")
        real(src, dst)

    monkeypatch.setattr(storage.os, "replace", refuse_the_json)
    with pytest.raises(StorageError):
        update_graph_files(run_graph("new"), dot, svg, new_graph=True)
    monkeypatch.undo()
    assert {name: data for name, data in files_of(tmp_path).items() if ".before-" not in name} == before
    fresh = update_graph_files(run_graph("new"), dot, svg, new_graph=True)
    assert [run["prompt"] for run in fresh.runs] == ["new"]
    kept = {name for name in files_of(tmp_path) if ".before-" in name}
    assert {Path(name).suffix for name in kept} == {".json", ".dot", ".svg", ".html"}


# ---------------------------------------------------------------- links out of DATA_DIR


def test_a_link_at_the_lock_file_is_refused_and_nothing_is_created_at_its_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / ".graph.dot.lock").symlink_to(outside / "created-through-the-link")
    with pytest.raises(StorageError, match="symbolic link"):
        update_graph_files(run_graph(), data / "graph.dot", None)
    assert list(outside.iterdir()) == []
