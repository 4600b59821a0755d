"""steer.py: test what a graph claims by intervening: set, scale or steer features and generate.

Applies the STEER interventions (or ``--node ID``'s, or a graph's strongest
feature nodes, ``--from-graph PATH``) while generating from PROMPT or DATASET rows, and
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
EDIT_KINDS = ("set", "scale", "add")


def main(config: Config, args: argparse.Namespace) -> str:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.steer_plan import plan_steering

        plan = plan_steering(config, command_line=command_line_edits(args), curve=args.curve)
    with args.phases.phase("import"):
        from sparse_coding.pipelines.steer import run_steer

    return run_steer(config, plan, args.phases)


def command_line_edits(args: argparse.Namespace):
    """--node or --from-graph with their options as CommandLineEdits (None: the STEER key)."""
    from sparse_coding.pipelines.steer_plan import DEFAULT_TOP, CommandLineEdits

    given = [f"--{kind}" for kind in EDIT_KINDS if getattr(args, kind) is not None]
    nodes = tuple(args.node or ())
    if args.from_graph is None and not nodes:
        if given or args.top is not None:
            raise ConfigError(
                f"{', '.join([*given, *['--top'] * (args.top is not None)])} choose(s) the intervention of "
                f"--node ID or --from-graph PATH; give one of those, or put the interventions in STEER"
            )
        return None
    if args.from_graph is not None and nodes:
        raise ConfigError("--node and --from-graph both choose the nodes to steer; give one of them")
    if args.top is not None and not args.from_graph:
        raise ConfigError("--top picks a graph's strongest nodes; give the graph with --from-graph PATH")
    if args.curve:
        raise ConfigError("--curve sweeps the CURVE key's node; drop --node/--from-graph, or drop --curve")
    kind = next((kind for kind in EDIT_KINDS if getattr(args, kind) is not None), "set")
    value = getattr(args, kind) if getattr(args, kind) is not None else 0.0
    top = DEFAULT_TOP if args.top is None else args.top
    return CommandLineEdits(nodes, args.from_graph, top, kind, value)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse steer.py's arguments and run it; `sparse-coding steer` calls this too."""
    parser = build_parser(
        DESCRIPTION,
        prog,
        outputs=["steering.json", "with --curve: response_curve.json, .png, .svg"],
        keys=[
            "STEER (or --node, --from-graph)",
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
            "TRANSCODERS (tc_, clt_ nodes)",
            "LOGIT_TOKENS",
        ],
        section="steer.py — test a graph by intervening",
    )
    parser.add_argument(
        "--from-graph",
        type=Path,
        metavar="GRAPH",
        help="intervene on the strongest feature nodes of a pipe.py/fast.py graph (.json or .dot) "
        "instead of STEER; its other feature nodes are watched",
    )
    parser.add_argument("--top", type=int, metavar="K", help="with --from-graph: how many nodes (default 5)")
    parser.add_argument(
        "--node",
        action="append",
        metavar="ID",
        help="intervene on this feature (e.g. resid_9.331, or resid_9.331@7 at one position) instead of "
        "STEER; repeat for several",
    )
    edit = parser.add_mutually_exclusive_group()
    edit.add_argument("--set", type=float, metavar="V", help="with --node/--from-graph: set to V (default 0)")
    edit.add_argument("--scale", type=float, metavar="X", help="with --node/--from-graph: multiply by X")
    edit.add_argument("--add", type=float, metavar="X", help="with --node/--from-graph: add X * decoder row")
    parser.add_argument(
        "--curve", action="store_true", help="draw the response curve of the CURVE key instead of generating"
    )
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.steer")
