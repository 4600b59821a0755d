"""Benchmark trace.py's phases on GPT-2-small-shaped random weights with real-size transcoders.

    python3 benchmarks/bench_trace.py [--device cuda] [--tokens 16 64] [--kinds tc clt]
                                      [--active 64] [--cap 2048] [--batch 256]

Random weights: GPT2Config() defaults. Per-layer transcoders ("tc"): 12 x 24576
ReLU features reading ln2.hook_normalized, as Dunefsky et al.'s; a cross-layer
transcoder ("clt"): 12 x 16384 TopK-128 features reading hook_resid_mid, as
EleutherAI's, whose 78 decoder blocks (3.9 GB) are read row by row on demand
from a fixed random table (real ones stay on disk the same way). Encoder
biases are calibrated so that about --active features fire per token and
layer on each prompt. --cap is TRACE_MAX_FEATURE_NODES ("none": every active
feature). Prints, per (kind, tokens): time per phase (forward = clean run,
features and source vectors; edges; pruning and scores; labels = logit
cells; write = graph files with the image), the process's CPU seconds (user +
system: on a shared machine the wall times swing with other processes' load,
CPU time much less), peak memory, active features, rows computed and batched
backward passes per row.
"""

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import IdNames, random_gpt2  # noqa: E402

from sparse_coding.algorithms import trace_edges  # noqa: E402
from sparse_coding.algorithms.trace_graph import TraceOptions, trace_graph  # noqa: E402
from sparse_coding.graphs.graph_files import save_graph  # noqa: E402
from sparse_coding.pipelines.trace import add_logit_cells, to_graph  # noqa: E402
from sparse_coding.runtime.allocator import keep_freed_memory  # noqa: E402
from sparse_coding.transcoders.layouts import LayerConfig, LayerWeights  # noqa: E402
from sparse_coding.transcoders.replacement import clean_run  # noqa: E402
from sparse_coding.transcoders.transcoder import TranscoderSet  # noqa: E402

D_MODEL, N_LAYERS = 768, 12
WIDTHS = {"tc": 24576, "clt": 16384}


class GeneratedRows:
    """Decoder rows made on demand: row r is a fixed random vector (stands in for rows read from disk)."""

    TABLE = 4096

    def __init__(self, n_rows: int, gen: torch.Generator) -> None:
        self.shape = (n_rows, D_MODEL)
        self.table = torch.randn(self.TABLE, D_MODEL, generator=gen) * 0.05 / D_MODEL**0.5

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows.cpu() % self.TABLE]


def random_transcoders(kind: str, device: str) -> TranscoderSet:
    """GPT-2-small-sized transcoders of `kind` with zero encoder biases (calibrate them with `calibrate`)."""
    gen, width = torch.Generator().manual_seed(0), WIDTHS[kind]
    layers = {}
    for layer in range(N_LAYERS):
        clt = kind == "clt"
        n_sources = layer + 1 if clt else 1
        hook = "hook_resid_mid" if clt else "ln2.hook_normalized"
        activation, k = ("topk", 128) if clt else ("relu", None)
        cfg = LayerConfig(D_MODEL, width, D_MODEL, activation, k, hook, n_sources)
        decoder = (GeneratedRows(n_sources * width, gen) if clt else
                   torch.randn(width, D_MODEL, generator=gen) * 0.05 / D_MODEL**0.5)  # fmt: skip
        w_enc = torch.randn(D_MODEL, width, generator=gen) / D_MODEL**0.5
        layers[layer] = LayerWeights(cfg, w_enc.to(device), torch.zeros(width, device=device), None, None,
                                     decoder, torch.zeros(D_MODEL, device=device), None)  # fmt: skip
    return TranscoderSet(layers, N_LAYERS, f"random {kind}")


@torch.no_grad()
def calibrate(model, transcoders: TranscoderSet, ids: torch.Tensor, active: int) -> None:
    """Encoder biases set so that about `active` features fire per token and layer on `ids`."""
    _, inputs, _, _ = clean_run(model, transcoders, ids)
    for layer, weights in transcoders.layers.items():
        weights.b_enc.zero_()
        pre = transcoders.pre_activations(layer, inputs[layer][1:]).flatten().float()
        keep = torch.randperm(len(pre), generator=torch.Generator().manual_seed(layer))[:4_000_000]
        weights.b_enc -= torch.quantile(pre[keep.to(pre.device)], 1 - active / transcoders.d_sae)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench(model, kind: str, n_tokens: int, args) -> None:
    transcoders = random_transcoders(kind, args.device)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size - 1, (n_tokens,), generator=gen)
    ids[0] = model.config.bos_token_id
    ids = ids.to(args.device)
    calibrate(model, transcoders, ids, args.active)
    rows_before = trace_edges.COUNTS["rows"], trace_edges.COUNTS["passes"]
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    options = TraceOptions(max_feature_nodes=args.cap, batch_size=args.batch)
    graph = trace_graph(model, transcoders, ids, bos_token_id=model.config.bos_token_id, options=options)
    compute = time.perf_counter() - start
    start = time.perf_counter()
    drawn = to_graph(graph, IdNames())
    add_logit_cells(drawn, graph, transcoders, model, IdNames(), n_tokens=10)
    labels = time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_graph(drawn, Path(tmp) / "trace_graph.dot", Path(tmp) / "trace_graph.svg")
    write = time.perf_counter() - start
    rows = trace_edges.COUNTS["rows"] - rows_before[0]
    passes = trace_edges.COUNTS["passes"] - rows_before[1]
    phases = graph.phases | {"labels": labels, "write": write}
    cpu = cpu_seconds() - cpu_before
    print(
        f"{kind:>3} {n_tokens:>3} tokens: {compute + labels + write:6.1f} s (cpu {cpu:.0f} s)  "
        + "  ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
        + f"  | active {len(graph.replacement.features.layer)}, rows {rows}, passes {passes} "
        f"({passes / max(rows, 1):.4f} per row), kept {int(graph.pruned.node_mask.sum())} nodes / "
        f"{int(graph.pruned.edge_mask.sum())} edges, peak {peak_memory_gib(args.device):.1f} GiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--kinds", nargs="+", default=["tc", "clt"], choices=list(WIDTHS))
    parser.add_argument("--active", type=int, default=64, help="features firing per token and layer")
    parser.add_argument("--cap", default="2048", help="TRACE_MAX_FEATURE_NODES, or 'none'")
    parser.add_argument("--batch", type=int, default=256, help="TRACE_BATCH_SIZE")
    args = parser.parse_args()
    args.cap = None if args.cap == "none" else int(args.cap)
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()
    torch.manual_seed(0)
    model = random_gpt2(args.device)
    threads = torch.get_num_threads()
    print(f"device {args.device}, {threads} threads, ~{args.active} active features per token and layer, "
          f"cap {args.cap}, batch {args.batch}")  # fmt: skip
    for kind in args.kinds:
        for n_tokens in args.tokens:
            bench(model, kind, n_tokens, args)


if __name__ == "__main__":
    main()
