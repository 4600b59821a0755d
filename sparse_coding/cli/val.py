"""The val.py command: validate a circuit by ablating it whole (faithfulness and completeness)."""

import argparse
from pathlib import Path

from sparse_coding.cli import build_parser
from sparse_coding.config import Config

DESCRIPTION = "Ablate a circuit whole: next-token change, faithfulness, completeness."


def main(config: Config, args: argparse.Namespace) -> str:
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.circuit import (
            check_pins_before_loading,
            circuit_and_source,
            config_for_graph,
            transcoder_keys,
        )
        from sparse_coding.pipelines.preflight import preflight

        if args.from_graph is not None:
            config = config_for_graph(config, args.from_graph, explicit=args.config_given)
        circuit, errors, source = circuit_and_source(config, args.from_graph, args.run)
        check_pins_before_loading(config, [*circuit, *errors], source)
        if transcoder_keys(circuit):  # M: every transcoder layer, no SAE
            from sparse_coding.pipelines.trace import transcoder_downloads

            preflight(config, examples=True, sites=(), extra_downloads=transcoder_downloads(config))
        else:
            preflight(config, examples=True)
    with args.phases.phase("import"):
        from sparse_coding.pipelines.val import run_val

    return run_val(config, args.phases, from_graph=args.from_graph, run=args.run, resume=args.resume)


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    parser = build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        outputs=["validation.json"],
        script="val",
        section="val.py — validate a circuit",
    )
    parser.add_argument(
        "--from-graph",
        type=Path,
        metavar="PATH",
        help="validate the feature nodes of a pipe.py/fast.py graph (.json or .dot); without --config, with "
        "the settings of the graph's latest run (its model, SAEs, slice and text)",
    )
    parser.add_argument(
        "--run",
        metavar="ID",
        help="with --from-graph: only the nodes of this run (ids are listed in the graph's .json and "
        "summary node); default: the nodes of all runs",
    )
    return parser
