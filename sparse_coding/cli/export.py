"""`sparse-coding export GRAPH --to neuronpedia|csv|parquet [--slug S] [--out DIR]`: a thin front door.

Writes beside the graph (or into --out): ``<stem>.neuronpedia.json`` (Neuronpedia's
attribution-graph file, `neuronpedia_graph`), or ``<stem>.nodes.csv`` +
``<stem>.edges.csv`` (``.parquet``): the tables of `Graph.to_pandas`. Files are
written atomically; the graph itself is only read.
"""

import argparse
import json
import logging
import re
from pathlib import Path

from sparse_coding.cli import build_parser
from sparse_coding.config import Config
from sparse_coding.errors import GraphFileError
from sparse_coding.files import storage
from sparse_coding.pipelines.circuit import read_graph

logger = logging.getLogger(__name__)

DESCRIPTION = "Export a graph to Neuronpedia's attribution-graph JSON, or to CSV / parquet tables."
FORMATS = ("neuronpedia", "csv", "parquet")


def export_graph(path: Path, fmt: str, *, slug: str | None = None, out_dir: Path | None = None) -> list[Path]:
    """Write `path`'s graph in format `fmt`; the files written."""
    graph = read_graph(path)
    folder = out_dir or path.parent
    stem = path.stem
    if fmt == "neuronpedia":
        from sparse_coding.sharing.neuronpedia_graph import to_neuronpedia

        target = folder / f"{stem}.neuronpedia.json"
        data = to_neuronpedia(graph, slug=slug or re.sub(r"[^A-Za-z0-9_.-]", "-", stem) or "graph")
        storage.write_atomic(target, json.dumps(data, indent=1, allow_nan=False))
        return [target]
    nodes, edges = graph.to_pandas()
    written = []
    for name, frame in (("nodes", nodes), ("edges", edges)):
        target = folder / f"{stem}.{name}.{fmt}"
        storage.write_atomic(
            target, frame.to_csv(index=False) if fmt == "csv" else frame.to_parquet(index=False)
        )
        written.append(target)
    return written


def main(config: Config, args: argparse.Namespace) -> str:
    del config  # the graph carries its own settings
    if args.to == "parquet":
        _require("pyarrow", "parquet")
    if args.to in ("csv", "parquet"):
        _require("pandas", args.to)
    written = export_graph(Path(args.graph), args.to, slug=args.slug, out_dir=args.out)
    return f"export: wrote {', '.join(str(p) for p in written)}"


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise GraphFileError(f'--to {what} needs {module}: pip install -e ".[analysis]"')


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    parser = build_parser(DESCRIPTION, prog, section="Sharing graphs")
    parser.add_argument("graph", help="the graph's .json (or .dot)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument("--slug", help="Neuronpedia slug ([A-Za-z0-9_.-]; default: the file's stem)")
    parser.add_argument("--out", type=Path, help="folder to write into (default: beside the graph)")
    return parser
