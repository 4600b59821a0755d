"""The fast.py command: gradient cognition graph (Marks et al. 2024) over resid, attn and mlp SAEs."""

import argparse

from sparse_coding.cli import build_parser
from sparse_coding.config import Config

DESCRIPTION = "Gradient cognition graph (Marks et al. 2024) over resid, attn and mlp SAEs."


def main(config: Config, args: argparse.Namespace) -> str:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.preflight import preflight

        preflight(
            config, graph_files=(config.GRADS_DOT_FILE, config.GRADS_FILE), min_prompt_tokens=2, examples=True
        )
    with args.phases.phase("import"):
        from sparse_coding.pipelines.fast import run_fast

    return run_fast(config, args.phases, new_graph=args.new_graph, resume=args.resume)


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    return build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        graph_output=True,
        outputs=["GRADS_DOT_FILE (.dot) + .json + .html, GRADS_FILE (image), merged into earlier runs'"],
        script="fast",
        section="fast.py — gradient cognition graph",
    )
