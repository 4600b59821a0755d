"""Graph files under real processes: concurrent merges, SIGKILL and SIGTERM mid-write."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import load_graph, update_graph_files

ROOT = Path(__file__).resolve().parents[1]

# One process: wait for the start signal, then merge `runs` runs into the graph,
# run k adding node resid_{k}.{index} and an edge into the shared resid_0.0.
WORKER = """
import logging, sys, time
from pathlib import Path
from sparse_coding.files import storage
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.graph_files import update_graph_files

logging.basicConfig(level=logging.INFO)
storage.exit_cleanly_on_sigterm()
dot, index, runs, image = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "image"
go = dot.parent / "go"
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for k in range(runs):
    graph = Graph(metadata={"prompt": f"worker {index} run {k}", "summary": "s"})
    graph.add_node(Node.from_id(f"resid_{k + 1}.{index}", activation=1.0))
    graph.add_node(Node.from_id("resid_0.0", activation=1.0))
    graph.add_edge(f"resid_{k + 1}.{index}", "resid_0.0", float(index))
    update_graph_files(graph, dot, dot.with_suffix(".svg") if image else None)
    print("merged", k, flush=True)
"""


def start(dot: Path, index: int, runs: int, image: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", WORKER, str(dot), str(index), str(runs), "image" if image else "none"]
    worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "ready\n"
    return worker


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".commit")))


def seed_graph(dot: Path) -> None:
    graph = Graph(metadata={"prompt": "first", "summary": "s"})
    graph.add_node(Node.from_id("resid_0.0", activation=1.0))
    update_graph_files(graph, dot, None)


def test_concurrent_runs_all_merge_into_one_graph(tmp_path):
    dot, n = tmp_path / "graph.dot", 4
    workers = [start(dot, index, runs=1, image=True) for index in range(n)]
    (tmp_path / "go").touch()
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * n, errors
    graph = load_graph(dot)
    assert set(graph.nodes) == {"resid_0.0"} | {f"resid_1.{i}" for i in range(n)}
    assert len(graph.runs) == n and len({r["id"] for r in graph.runs}) == n
    shared = graph.nodes["resid_0.0"]
    assert len(shared.runs) == n
    assert sorted(e.effect for e in graph.edges.values()) == [float(i) for i in range(n)]
    assert any("waiting for another run" in e for e in errors)  # the lock made someone wait
    assert len(json.loads(dot.with_suffix(".json").read_text())["metadata"]["runs"]) == n


def consistent_state(dot: Path, caplog) -> int:
    """Load after a kill: the graph of exactly k whole runs (files agreeing); returns k."""
    caplog.clear()
    graph = load_graph(dot)
    assert "moved aside" not in caplog.text  # the derived files are this tool's (current or stale)
    k = len(graph.runs) - 1  # minus the seed run
    assert set(graph.nodes) == {"resid_0.0"} | {f"resid_{j + 1}.0" for j in range(k)}
    assert len(graph.nodes["resid_0.0"].runs) == k + 1
    return k


@pytest.mark.parametrize("delay_s", [0.0, 0.01, 0.03, 0.07, 0.15])
def test_a_run_killed_at_any_moment_leaves_whole_runs_and_the_next_run_clears_its_temps(
    tmp_path, caplog, delay_s
):
    dot = tmp_path / "graph.dot"
    seed_graph(dot)
    worker = start(dot, 0, runs=1000, image=False)
    (tmp_path / "go").touch()
    time.sleep(delay_s)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    k = consistent_state(dot, caplog)
    graph = Graph(metadata={"prompt": "after the kill", "summary": "s"})
    graph.add_node(Node.from_id("resid_0.0", activation=1.0))
    update_graph_files(graph, dot, None)
    assert litter(tmp_path) == []
    assert "moved aside" not in caplog.text  # a derived file the kill left behind is known for stale
    assert len(load_graph(dot).runs) == k + 2


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.08])
def test_sigterm_leaves_whole_runs_and_no_temp_files(tmp_path, caplog, delay_s):
    dot = tmp_path / "graph.dot"
    seed_graph(dot)
    worker = start(dot, 0, runs=1000, image=False)
    (tmp_path / "go").touch()
    time.sleep(delay_s)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    assert worker.returncode != 0
    assert litter(tmp_path) == []  # before any other run cleans up
    consistent_state(dot, caplog)
