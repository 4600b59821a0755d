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

from sparse_coding.cli import build_parser, run_script
from sparse_coding.config import Config

logger = logging.getLogger("sparse_coding.hist")
DESCRIPTION = __doc__.splitlines()[0]


def main(config: Config, args: argparse.Namespace) -> None:
    if config.DATASET is None:
        logger.warning(
            "DATASET is unset, so there is nothing to precluster. "
            "Set DATASET to a hub dataset or a .txt/.jsonl/.parquet file"
        )
        print("hist.py: DATASET is unset; nothing was written")
        return
    # Checks first, heavy imports after: importing torch alone takes seconds, --help none.
    from sparse_coding.pipelines.preflight import preflight

    preflight(config)

    from sparse_coding.algorithms.threshold_cache import METADATA_FILE, save_thresholds
    from sparse_coding.algorithms.thresholds import thresholds_from_config
    from sparse_coding.models.loading import load_spliced_model

    spliced, tokenizer = load_spliced_model(config)
    result = thresholds_from_config(config, spliced, tokenizer)
    path = save_thresholds(config, spliced, result)
    print(
        f"hist.py: thresholds for {len(result.thresholds)} sites from {result.n_kept} of "
        f"{len(result.cut_positions)} sequences (cluster {config.KEEPER_CLUSTER_INDEX} of "
        f"{config.NUM_CLUSTERS}); wrote {path}, {METADATA_FILE}"
    )


if __name__ == "__main__":
    parser = build_parser(
        DESCRIPTION,
        outputs=["thresholds.safetensors + thresholds.json (read by fast.py)"],
        keys=[
            "DATASET",
            "DATASET_CONFIG",
            "DATASET_SPLIT",
            "DATASET_TEXT_COLUMN",
            "NUM_SEQUENCES_EVALED",
            "MAX_SEQ_LEN",
            "ACTS_LAYERS_SLICE",
            "NUM_CLUSTERS",
            "KEEPER_CLUSTER_INDEX",
            "SEED",
            "RESID_SAES",
            "ATTN_SAES",
            "MLP_SAES",
        ],
        section="hist.py — dataset thresholds for fast.py",
    )
    run_script(main, DESCRIPTION, parser=parser)
