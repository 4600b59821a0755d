"""hist.py: precluster DATASET and cache percentile SAE activation thresholds.

k-means on neuron-basis residual activations at the first layer of
ACTS_LAYERS_SLICE picks the sequences that reach KEEPER_CLUSTER_INDEX; each
spliced SAE feature's threshold is the THRESHOLD_PERCENTILE (99.99th) percentile
of its activation at their cut ends, with a warning when too few sequences were
kept for it to resolve (see `sparse_coding.algorithms.thresholds`). fast.py reads
the cache (`sparse_coding.pipelines.threshold_cache`).
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.cli import build_parser, run_as_program, run_script
from sparse_coding.config import Config

logger = logging.getLogger("sparse_coding.hist")
DESCRIPTION = "Precluster DATASET and cache percentile SAE activation thresholds for fast.py."


def main(config: Config, args: argparse.Namespace) -> str:
    if config.DATASET is None:
        logger.warning(
            "DATASET is unset, so there is nothing to precluster. "
            "Set DATASET to a hub dataset or a .txt/.jsonl/.parquet file"
        )
        return "hist.py: DATASET is unset; nothing was written"
    with args.phases.phase("preflight"):
        from sparse_coding.pipelines.preflight import preflight

        preflight(config)
    with args.phases.phase("import"):
        from sparse_coding.pipelines.hist import run_hist

    return run_hist(config, args.phases, resume=args.resume)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse hist.py's arguments and run it; `sparse-coding hist` calls this too."""
    parser = build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        outputs=["thresholds.safetensors + thresholds.json (read by fast.py)"],
        script="hist",
        section="hist.py — dataset thresholds for fast.py",
    )
    run_script(main, DESCRIPTION, argv, parser=parser)


if __name__ == "__main__":
    run_as_program(run, __file__, "sparse_coding.hist")
