"""The hist.py command: precluster DATASET and cache percentile SAE activation thresholds.

k-means on neuron-basis residual activations at the first layer of
ACTS_LAYERS_SLICE picks the sequences that reach KEEPER_CLUSTER_INDEX; each
spliced SAE feature's threshold is the THRESHOLD_PERCENTILE (99.99th) percentile
of its activation at their cut ends, with a warning when too few sequences were
kept for it to resolve (see `sparse_coding.algorithms.thresholds`). fast.py reads
the cache (`sparse_coding.pipelines.threshold_cache`).

Run as sparse_coding/hist.py or `sparse-coding hist`; `sparse_coding.cli` adds the shared options.
"""

import argparse
import logging

from sparse_coding.cli import build_parser
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


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    """hist's command line: the options every script takes (`build_parser`) and its own."""
    return build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        outputs=["thresholds.safetensors + thresholds.json (read by fast.py)"],
        script="hist",
        section="hist.py — dataset thresholds for fast.py",
    )
