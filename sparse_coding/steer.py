"""steer.py: test what a graph claims by intervening: set, scale or steer features and generate.

Applies the STEER interventions (or a graph's strongest feature nodes,
``--from-graph PATH``) while generating from PROMPT or DATASET rows, and
prints the clean and steered continuations side by side with the tokens whose
probability rose and fell most at each step; ``--curve`` sweeps the CURVE key's
intervention instead and draws the response of watched features and the
answer. Writes DATA_DIR/<model>/steering.json (or response_curve.{json,png,svg}).
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
from sparse_coding.errors import ConfigError

DESCRIPTION = "Set, scale or steer features and generate; or draw a response curve (--curve)."
GRAPH_EDITS = ("set", "scale", "add")


def main(config: Config, args: argparse.Namespace) -> None:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.steer_plan import plan_steering

        plan = plan_steering(config, graph=graph_choice(args), curve=args.curve)
    with args.phases.phase("import"):
        from sparse_coding.pipelines.steer import run_steer

    print(run_steer(config, plan, args.phases))


def graph_choice(args: argparse.Namespace):
    """--from-graph and its options as a GraphChoice (None without a graph)."""
    from sparse_coding.pipelines.steer_plan import DEFAULT_TOP, GraphChoice

    given = [f"--{kind}" for kind in GRAPH_EDITS if getattr(args, kind) is not None]
    if args.from_graph is None:
        if given or args.top is not None:
            raise ConfigError(
                f"{', '.join(given + ['--top'] * (args.top is not None))} choose(s) a graph's nodes; "
                f"give the graph with --from-graph PATH, or put the interventions in STEER"
            )
        return None
    if args.curve:
        raise ConfigError("--curve sweeps the CURVE key's node; drop --from-graph, or drop --curve")
    kind = next((kind for kind in GRAPH_EDITS if getattr(args, kind) is not None), "set")
    value = getattr(args, kind) if getattr(args, kind) is not None else 0.0
    return GraphChoice(args.from_graph, DEFAULT_TOP if args.top is None else args.top, kind, value)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse steer.py's arguments and run it; `sparse-coding steer` calls this too."""
    parser = build_parser(
        DESCRIPTION,
        prog,
        outputs=["steering.json", "with --curve: response_curve.json, .png, .svg"],
        keys=[
            "STEER (or --from-graph)",
            "CURVE (with --curve)",
            "MAX_NEW_TOKENS",
            "NUM_RETURN_SEQUENCES",
            "TEMPERATURE",
            "TOP_P",
            "SEED",
            "PROMPT",
            "DATASET",
            "INTERP_SOURCE",
            "NUM_SEQUENCES_INTERPED",
            "MAX_SEQ_INTERPED_LEN",
            "RESID_SAES",
            "ATTN_SAES",
            "MLP_SAES",
            "LOGIT_TOKENS",
        ],
        section="steer.py — intervene and generate",
    )
    parser.add_argument(
        "--from-graph",
        type=Path,
        metavar="GRAPH",
        help="intervene on the strongest feature nodes of a pipe.py/fast.py graph (.json or .dot) "
        "instead of STEER; its other feature nodes are watched",
    )
    parser.add_argument("--top", type=int, metavar="K", help="with --from-graph: how many nodes (default 5)")
    edit = parser.add_mutually_exclusive_group()
    edit.add_argument("--set", type=float, metavar="V", help="with --from-graph: set them to V (default: 0)")
    edit.add_argument("--scale", type=float, metavar="X", help="with --from-graph: multiply them by X")
    edit.add_argument(
        "--add", type=float, metavar="X", help="with --from-graph: add X times their decoder rows"
    )
    parser.add_argument(
        "--curve", action="store_true", help="draw the response curve of the CURVE key instead of generating"
    )
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.steer")
