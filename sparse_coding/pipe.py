"""pipe.py: ablation cognition graph on the residual-stream SAEs.

Zero-ablates resid features at each layer of ACTS_LAYERS_SLICE and draws their
effects on the next layer's features and on the next-token log-probabilities
(see `sparse_coding.algorithms.ablation_graph`). Run as `python3 pipe.py`,
`python3 sparse_coding/pipe.py` or `python3 -m sparse_coding.pipe`.
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


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse pipe.py's arguments and run it; `sparse-coding pipe` calls this too."""
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
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.pipe")
