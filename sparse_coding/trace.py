"""trace.py: attribution graph through transcoders (Ameisen et al. 2025, "Circuit Tracing").

Run as `python3 trace.py`, `python3 sparse_coding/trace.py` or `python3 -m sparse_coding.trace`.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.cli import build_parser, run_as_program, run_script
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


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse trace.py's arguments and run it; `sparse-coding trace` calls this too."""
    parser = build_parser(
        DESCRIPTION,
        prog,
        graph_output=True,
        outputs=["TRACE_DOT_FILE (.dot) + .json + .html, TRACE_FILE (image), merged into earlier runs'"],
        keys=[
            "TRACE_PROMPT (else PROMPT)",
            "TRANSCODERS",
            "TRACE_NODE_THRESHOLD",
            "TRACE_EDGE_THRESHOLD",
            "TRACE_LOGIT_MASS",
            "TRACE_MAX_LOGITS",
            "TRACE_MAX_FEATURE_NODES",
            "TRACE_BATCH_SIZE",
            "TRANSCODER_LAZY_DECODERS",
            "SAE_DTYPE",
        ],
        section="trace.py — transcoder attribution graph",
    )
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.trace")
