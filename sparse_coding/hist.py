"""hist.py: precluster DATASET and cache percentile SAE activation thresholds.

k-means on neuron-basis residual activations at the first layer of
ACTS_LAYERS_SLICE picks the sequences that reach KEEPER_CLUSTER_INDEX; each
spliced SAE feature's threshold is the THRESHOLD_PERCENTILE (99.99th) percentile
of its activation at their cut ends, with a warning when too few sequences were
kept for it to resolve (see `sparse_coding.algorithms.thresholds`). fast.py reads
the cache (`sparse_coding.pipelines.threshold_cache`).
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.cli import build_parser, run_script
from sparse_coding.config import Config

DESCRIPTION = "Precluster DATASET and cache percentile SAE activation thresholds for fast.py."


def main(config: Config, args: argparse.Namespace) -> None:
    with args.phases.phase("import"):
        from sparse_coding.pipelines.hist import run_hist

    path = run_hist(config, args.phases)
    print(f"hist.py: wrote {path}" if path else "hist.py: DATASET is unset; nothing written")


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse the common arguments and run; `sparse-coding hist` calls this too."""
    run_script(main, DESCRIPTION, argv, parser=build_parser(DESCRIPTION, prog))


if __name__ == "__main__":
    run()
