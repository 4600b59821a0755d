"""val.py: validate a circuit by ablating it whole (faithfulness and completeness).

Ablates every feature of VALIDATION_DIMS_PINNED (or of a graph's feature nodes,
``--from-graph PATH``) over DATASET or PROMPT (INTERP_SOURCE), prints how
next-token probabilities and loss change, and writes DATA_DIR/<model>/validation.json.
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


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse val.py's arguments (the common ones, `--from-graph`, `--run`) and run it."""
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
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.val")
