"""The steer.py command: test what a graph claims by intervening on features and generating, or
draw the response curve of one intervention (``--curve``)."""

import argparse
from pathlib import Path

from sparse_coding.cli import build_parser
from sparse_coding.config import Config
from sparse_coding.config.steering import KINDS
from sparse_coding.errors import ConfigError

DESCRIPTION = "Set, scale or steer features and generate; or draw a response curve (--curve)."


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

    given = [f"--{kind}" for kind in KINDS if getattr(args, kind) is not None]
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
    kind = next((kind for kind in KINDS if getattr(args, kind) is not None), "set")
    value = getattr(args, kind) if getattr(args, kind) is not None else 0.0
    top = DEFAULT_TOP if args.top is None else args.top
    return CommandLineEdits(nodes, args.from_graph, top, kind, value)


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    parser = build_parser(
        DESCRIPTION,
        prog,
        outputs=["steering.json", "with --curve: response_curve.json, .png, .svg"],
        script="steer",
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
    return parser
