"""The hist.py command: precluster DATASET and cache percentile SAE activation thresholds."""

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
    return build_parser(
        DESCRIPTION,
        prog,
        dataset_passes=True,
        outputs=["thresholds.safetensors + thresholds.json (read by fast.py)"],
        script="hist",
        section="hist.py — dataset thresholds for fast.py",
    )
