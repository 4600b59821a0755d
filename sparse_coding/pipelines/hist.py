"""hist.py's run: DATASET's preclustered thresholds, computed and cached for fast.py.

The maths (k-means preclustering, exact percentiles from a running top-m)
is `sparse_coding.algorithms.thresholds`; the cache format is
`sparse_coding.pipelines.threshold_cache`.
"""

import logging

from sparse_coding.algorithms.thresholds import ThresholdResult, compute_thresholds
from sparse_coding.algorithms.top_percentile import samples_to_resolve
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.pipelines.inputs import config_batches, expected_batches
from sparse_coding.pipelines.loading import load_spliced_model, settled
from sparse_coding.pipelines.resume import run_checkpoint
from sparse_coding.pipelines.threshold_cache import METADATA_FILE, save_thresholds
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_hist(config: Config, phases: PhaseTimer | None = None, *, resume: bool = False) -> str:
    """Compute and cache the thresholds of every site of the slice (DATASET set); returns the closing line.

    `resume` continues the passes of a killed run from their checkpoint (`sparse_coding.runtime.checkpoints`).
    Under torchrun the ranks share the passes and rank 0 writes (the other ranks return "").
    """
    phases = phases or PhaseTimer()
    spliced, tokenizer = load_spliced_model(config, phases=phases, script="hist")
    config = settled(config, spliced)
    with run_checkpoint(config, "hist.py", spliced, resume=resume):
        with phases.phase("compute: thresholds"):
            result = thresholds_from_config(config, spliced, tokenizer)
        if not distributed.is_main():
            return ""
        with phases.phase("write"):
            path = save_thresholds(config, spliced, result)
    return (
        f"hist.py: thresholds for {len(result.thresholds)} sites from {result.n_kept} of "
        f"{len(result.cut_positions)} sequences (cluster {config.KEEPER_CLUSTER_INDEX} of "
        f"{config.NUM_CLUSTERS}); wrote {path}, {METADATA_FILE}"
    )


def thresholds_from_config(config: Config, spliced: SplicedModel, tokenizer: Tokenizer) -> ThresholdResult:
    """`compute_thresholds` over DATASET with the config's batching and cluster settings."""
    if config.DATASET is None:
        raise ConfigError(
            "DATASET is unset; thresholds need a dataset (a hub name or a .txt/.jsonl/.parquet file)"
        )
    result = compute_thresholds(
        spliced,
        lambda: config_batches(config, tokenizer, spliced.model),
        cluster_layer=config.layer_range(spliced.n_layers).start,
        n_clusters=config.NUM_CLUSTERS,
        keeper_cluster=config.KEEPER_CLUSTER_INDEX,
        seed=config.SEED,
        percentile=config.THRESHOLD_PERCENTILE,
        n_batches=expected_batches(config),
    )
    needed = samples_to_resolve(config.THRESHOLD_PERCENTILE)
    if result.n_kept < needed:
        logger.warning(
            "THRESHOLD_PERCENTILE %s needs at least %d kept sequences to resolve, but only %d of %d "
            "(NUM_SEQUENCES_EVALED) reached KEEPER_CLUSTER_INDEX %d: each threshold is about its "
            "feature's maximum over those %d. Raise NUM_SEQUENCES_EVALED or lower THRESHOLD_PERCENTILE",
            config.THRESHOLD_PERCENTILE,
            needed,
            result.n_kept,
            len(result.cut_positions),
            config.KEEPER_CLUSTER_INDEX,
            result.n_kept,
        )
    return result
