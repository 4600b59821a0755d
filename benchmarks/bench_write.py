"""Time pipe.py's "write and render" phase on a GPT-2-sized graph with every non-zero edge.

    python3 benchmarks/bench_write.py [--runs 5] [--nodes 612] [--edges 40811] [--repo PATH ...]

Builds a pipe.py-shaped graph (resid features of layers 9-11, 203 or 204 per
layer, plus their error nodes; edges from each layer to the next; each
feature labelled as pipe.py labels it: 6 contexts of 11 tokens, 10 up- and
10 down-weighted tokens) and times `update_graph_files` writing it as a new
graph (.json, .dot, SVG image, .html), as the phase does. Each `--repo`
(default: this checkout) is timed in its own subprocess, the repos taking
turns, so that every figure comes from the same machine state; prints the
minimum and median seconds per repo (wall clock, and CPU seconds of all threads
and of Graphviz, which a busy machine stretches less) and the file sizes.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside a subprocess with the repo under test first on sys.path.
ONE_RUN = r"""
import json, random, resource, sys, tempfile, time
from pathlib import Path
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import update_graph_files

n_nodes, n_edges = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
words = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", ",", "Ċ", "Ġ<", "&", "Ġ1969", "ing", "Ġmoon"]
metadata = {"script": "pipe.py", "prompt": "The Eiffel Tower is in the city of Paris", "summary": "bench",
            "model": "bench/model", "sae_sources": {f"resid_{l}": "bench/resid_{layer}" for l in (9, 10, 11)},
            "config": {"THRESHOLD_EXP": None, "TOP_K": 6, "LOGIT_TOKENS": 10}}
graph = Graph(metadata=metadata)
layers = {9: [], 10: [], 11: []}
for i in range(n_nodes - 3):
    layer = 9 + i % 3
    contexts = [Context([rng.choice(words) for _ in range(11)], [rng.random() * 3 for _ in range(11)])
                for _ in range(6)]
    node = Node.from_id(f"resid_{layer}.{37 * i % 24576}", activation=rng.random() * 5,
                        hook=f"blocks.{layer}.hook_resid_pre", contexts=contexts,
                        logits_up=[(rng.choice(words), rng.random()) for _ in range(10)],
                        logits_down=[(rng.choice(words), -rng.random()) for _ in range(10)])
    graph.add_node(node)
    layers[layer].append(node.id)
for layer in layers:
    graph.add_node(Node.from_id(f"resid_error_{layer}", activation=1.0))
    layers[layer].append(f"resid_error_{layer}")
while len(graph.edges) < n_edges:
    layer = rng.choice((9, 10))
    graph.add_edge(rng.choice(layers[layer]), rng.choice(layers[layer + 1]), rng.gauss(0, 1e-3))
out = Path(tempfile.mkdtemp()) / "cognition_graph.dot"
def cpu():  # this process's threads and its children (Graphviz)
    return time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + \
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
start, start_cpu = time.perf_counter(), cpu()
update_graph_files(graph, out, out.with_suffix(".svg"))
seconds, cpu_seconds = time.perf_counter() - start, cpu() - start_cpu
sizes = {p.name: p.stat().st_size for p in sorted(out.parent.iterdir()) if not p.name.startswith(".")}
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "nodes": len(graph.nodes),
                  "edges": len(graph.edges), "sizes": sizes}))
"""


def run_once(repo: Path, nodes: int, edges: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(repo)!r})\n" + ONE_RUN,
            str(nodes),
            str(edges),
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        sys.exit(f"{repo}: exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=612)
    parser.add_argument("--edges", type=int, default=40_811)
    parser.add_argument("--repo", type=Path, action="append", help="a checkout to time (repeatable)")
    args = parser.parse_args()
    repos = [path.resolve() for path in args.repo or [REPO]]
    results: dict[Path, list[dict]] = {repo: [] for repo in repos}
    for _ in range(args.runs):
        for repo in repos:  # turns: a busy moment of the machine hits every repo alike
            results[repo].append(run_once(repo, args.nodes, args.edges))
    for repo, runs in results.items():
        seconds, cpu = [run["seconds"] for run in runs], [run["cpu_seconds"] for run in runs]
        first = runs[0]
        print(
            f"{repo}: {first['nodes']} nodes, {first['edges']:,} edges, {args.runs} runs: write and render "
            f"min {min(seconds):.2f} s, median {statistics.median(seconds):.2f} s; "
            f"CPU (all threads and Graphviz) min {min(cpu):.2f} s, median {statistics.median(cpu):.2f} s"
        )
        print("  files: " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in first["sizes"].items()))


if __name__ == "__main__":
    main()
