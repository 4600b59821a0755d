"""The trace.py command: attribution graph through transcoders (Ameisen et al. 2025, "Circuit Tracing")."""

import argparse

from sparse_coding.cli import build_parser
from sparse_coding.config import Config

DESCRIPTION = "Attribution graph through transcoders: features, errors, tokens and logits per position."


def main(config: Config, args: argparse.Namespace) -> str:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.preflight import preflight
        from sparse_coding.pipelines.trace import transcoder_downloads

        preflight(
            config,
            graph_files=(config.TRACE_DOT_FILE, config.TRACE_FILE),
            sites=(),
            min_prompt_tokens=1,
            prompt_key="PROMPT" if config.TRACE_PROMPT is None else "TRACE_PROMPT",
            prompt_use="trace.py explains the token after it",
            extra_downloads=transcoder_downloads(config),
            transcoders=True,
        )
    with args.phases.phase("import"):
        from sparse_coding.pipelines.trace import run_trace

    return run_trace(config, args.phases, new_graph=args.new_graph)


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    return build_parser(
        DESCRIPTION,
        prog,
        graph_output=True,
        outputs=["TRACE_DOT_FILE (.dot) + .json + .html, TRACE_FILE (image), merged into earlier runs'"],
        script="trace",
        section="trace.py — transcoder attribution graph",
    )
