"""Time building, saving and rendering a random 1,000-node / 5,000-edge graph.

Not a test: run ``python3 benchmarks/bench_render.py [--nodes N --edges M
--format svg|png --out DIR]`` and quote the printed times. Every node gets
full labels (5 contexts of 17 tokens, 10 up- and 10 down-weighted tokens, an
explanation), so the render exercises the big-graph degradation path.

``--budget`` measures the layout budget instead: a pipe.py-shaped graph
(``--nodes`` features on two resid layers, compact labels) drawn with
500 .. 4,000 of its strongest edges, one ``dot`` run each; the largest count
drawn within ``--budget-s`` is what ``RenderOptions.max_drawn_edges`` should be
on this CPU.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import tempfile
import time
from pathlib import Path

from sparse_coding.graphs.drawing import draw_image
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.graph_files import load_graph, save_graph
from sparse_coding.graphs.graphviz import RenderTimeout
from sparse_coding.graphs.render import RenderOptions
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


def pipe_shaped_graph(n_nodes: int, n_edges: int, seed: int = 0) -> Graph:
    """Half the features at resid layer 9, half at 10, edges 9 -> 10 only, as pipe.py draws."""
    rng = random.Random(seed)
    graph = Graph(metadata={"script": "pipe.py", "prompt": "benchmark", "config": {"THRESHOLD_EXP": None}})
    for i in range(n_nodes):
        graph.add_node(random_node(rng, 9 + i % 2, "resid", i))
    ups, downs = (
        [n.id for n in graph.nodes.values() if n.layer == 9],
        [n.id for n in graph.nodes.values() if n.layer == 10],
    )
    while len(graph.edges) < min(n_edges, len(ups) * len(downs)):
        graph.add_edge(rng.choice(ups), rng.choice(downs), rng.gauss(0, 1))
    return graph


def measure_budget(n_nodes: int, budget_s: float, fmt: str, out: Path) -> None:
    """Time one dot layout per drawn-edge count; print the largest count within the budget."""
    graph = pipe_shaped_graph(n_nodes, 40_000)
    fits = 0
    for n_edges in (500, 1000, 2000, 3000, 4000):
        start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        try:
            draw_image(
                graph,
                out / f"budget_{n_edges}.{fmt}",
                fmt=fmt,
                timeout_s=3 * budget_s,
                options=RenderOptions(max_drawn_edges=n_edges, fallback_drawn_edges=n_edges),
            )
        except RenderTimeout:
            print(f"{n_nodes} nodes, {n_edges:5d} edges drawn: over {3 * budget_s:.0f} s")
            break
        took = time.perf_counter() - start
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu
        print(f"{n_nodes} nodes, {n_edges:5d} edges drawn: {took:6.1f} s ({cpu:.1f} s Graphviz CPU)")
        fits = n_edges if took <= budget_s else fits
    print(f"largest measured edge count drawn within {budget_s:.0f} s: {fits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--edges", type=int, default=5000)
    parser.add_argument("--format", choices=["svg", "png"], default="svg")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget", action="store_true", help="measure the layout budget (see above)")
    parser.add_argument("--budget-s", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_render_"))
    if args.budget:
        measure_budget(args.nodes, args.budget_s, args.format, out)
        return

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
