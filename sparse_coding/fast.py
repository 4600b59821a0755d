"""fast.py: gradient cognition graph (Marks et al. 2024) over resid, attn and mlp SAEs.

Run as `python3 fast.py`, `python3 sparse_coding/fast.py` or `python3 -m sparse_coding.fast`.
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


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse fast.py's arguments and run it; `sparse-coding fast` calls this too."""
    parser = build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        graph_output=True,
        outputs=["GRADS_DOT_FILE (.dot) + .json + .html, GRADS_FILE (image), merged into earlier runs'"],
        script="fast",
        section="fast.py — gradient cognition graph",
    )
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.fast")
