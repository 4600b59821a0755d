"""hist.py: precluster DATASET and cache 99.99th-percentile SAE activation thresholds.

k-means on neuron-basis residual activations at the first layer of
ACTS_LAYERS_SLICE picks the sequences that reach KEEPER_CLUSTER_INDEX; each
spliced SAE feature's threshold is the 99.99th percentile of its activation at
their cut ends (see `sparse_coding.algorithms.thresholds`). fast.py reads the cache
(`sparse_coding.algorithms.threshold_cache`).
"""

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.algorithms.threshold_cache import save_thresholds
from sparse_coding.algorithms.thresholds import thresholds_from_config
from sparse_coding.cli import run_script
from sparse_coding.config import Config
from sparse_coding.models.loading import load_spliced_model
from sparse_coding.pipelines.preflight import preflight

logger = logging.getLogger("sparse_coding.hist")


def main(config: Config, args: argparse.Namespace) -> None:
    if config.DATASET is None:
        logger.warning(
            "DATASET is unset, so there is nothing to precluster; nothing was written. "
            "Set DATASET to a hub dataset or a .txt/.jsonl/.parquet file"
        )
        return
    preflight(config)
    spliced, tokenizer = load_spliced_model(config)
    result = thresholds_from_config(config, spliced, tokenizer)
    save_thresholds(config, spliced, result)


if __name__ == "__main__":
    run_script(main, __doc__)
