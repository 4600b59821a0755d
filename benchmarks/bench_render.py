"""Time building, saving and rendering a random 1,000-node / 5,000-edge graph.

Not a test: run ``python3 benchmarks/bench_render.py [--nodes N --edges M
--format svg|png --out DIR]`` and quote the printed times. Every node gets
full labels (5 contexts of 17 tokens, 10 up- and 10 down-weighted tokens, an
explanation), so the render exercises the big-graph degradation path.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import load_graph, save_graph
from sparse_coding.nodes import SITES

_WORDS = [
    "Ġthe",
    "Ġcat",
    "Ċ",
    "&",
    "<",
    ">",
    '"',
    "'",
    "\\",
    "{",
    "}",
    "😀",
    "\t",
    "Ġ<|endoftext|>",
    "ing",
    "ĠParis",
]


def random_node(rng: random.Random, layer: int, site: str, index: int) -> Node:
    """A feature node with full, randomly filled annotations."""
    contexts = [
        Context(
            [rng.choice(_WORDS) for _ in range(17)],
            [rng.random() * 5 for _ in range(17)],
        )
        for _ in range(5)
    ]
    return Node.from_id(
        f"{site}_{layer}.{index}",
        activation=rng.random() * 10,
        attribution=rng.gauss(0, 1),
        neuronpedia_id=f"gpt2-small/{layer}-res-jb",
        contexts=contexts,
        logits_up=[(rng.choice(_WORDS), rng.random()) for _ in range(10)],
        logits_down=[(rng.choice(_WORDS), -rng.random()) for _ in range(10)],
        explanation="mentions of " + " ".join(rng.choice(_WORDS) for _ in range(6)),
    )


def random_graph(n_nodes: int, n_edges: int, seed: int = 0) -> Graph:
    """Nodes spread over 12 layers x 3 sites; edges always point forward."""
    rng = random.Random(seed)
    graph = Graph(
        metadata={
            "prompt": "benchmark",
            "summary": "features explain ~50% of the effect",
        }
    )
    for i in range(n_nodes):
        graph.add_node(random_node(rng, rng.randrange(12), rng.choice(SITES), i))
    ordered = graph.sorted_nodes()
    while len(graph.edges) < n_edges:
        a, b = sorted(rng.sample(range(len(ordered)), 2))
        if ordered[a].rank_key() < ordered[b].rank_key():
            graph.add_edge(ordered[a].id, ordered[b].id, rng.gauss(0, 1))
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--edges", type=int, default=5000)
    parser.add_argument("--format", choices=["svg", "png"], default="svg")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_render_"))

    start = time.perf_counter()
    graph = random_graph(args.nodes, args.edges)
    built = time.perf_counter()
    save_graph(graph, out / "graph.dot", None)
    saved = time.perf_counter()
    save_graph(graph, out / "graph.dot", out / f"graph.{args.format}")
    rendered = time.perf_counter()
    assert load_graph(out / "graph.dot") == graph
    loaded = time.perf_counter()

    print(f"graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges, full labels; files in {out}")
    print(f"build:               {built - start:6.2f} s")
    size_mb = (out / "graph.dot").stat().st_size / 1e6
    print(f"save .dot + .json:   {saved - built:6.2f} s  ({size_mb:.1f} MB .dot)")
    print(f"save + render {args.format}:  {rendered - saved:6.2f} s")
    print(f"load (parse .dot + .json): {loaded - rendered:6.2f} s")


if __name__ == "__main__":
    main()
