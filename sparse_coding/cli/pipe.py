"""The pipe.py command: ablation cognition graph on the residual-stream SAEs
(`sparse_coding.algorithms.ablation_graph`)."""

import argparse

from sparse_coding.cli import build_parser
from sparse_coding.config import Config

DESCRIPTION = "Ablation cognition graph on the residual-stream SAEs."


def main(config: Config, args: argparse.Namespace) -> str:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.preflight import preflight

        preflight(config, graph_files=(config.GRAPH_DOT_FILE, config.GRAPH_FILE), sites=("resid",))
    with args.phases.phase("import"):
        from sparse_coding.pipelines.pipe import run_pipe

    return run_pipe(
        config, args.phases, new_graph=args.new_graph, allow_empty=args.allow_empty, resume=args.resume
    )


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    parser = build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        graph_output=True,
        outputs=["GRAPH_DOT_FILE (.dot) + .json + .html, GRAPH_FILE (image), merged into earlier runs'"],
        script="pipe",
        section="pipe.py — ablation cognition graph",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="when THRESHOLD_EXP keeps no edge, warn and write the graph anyway (default: exit 1)",
    )
    return parser
