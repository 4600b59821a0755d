"""pipe.py's run: the config glue of `sparse_coding.algorithms.ablation_graph`: which sequences
are interpreted, which resid features DIMS_PINNED pins, the graph's summary, and publishing it."""

import itertools
import logging
import math

import torch

from sparse_coding.algorithms.ablation_graph import AblationResult, ablation_graph
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, DatasetError, EmptyResultError
from sparse_coding.graphs.graph import Graph
from sparse_coding.nodes import site_key
from sparse_coding.pipelines.inputs import interpreted_texts, warn_unknown_prompts
from sparse_coding.pipelines.loading import load_spliced_model, settled
from sparse_coding.pipelines.publish import publish_graph
from sparse_coding.pipelines.resume import run_checkpoint
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import TokenBatch
from sparse_coding.text.corpus import iter_batches
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_pipe(
    config: Config,
    phases: PhaseTimer | None = None,
    *,
    new_graph: bool = False,
    allow_empty: bool = False,
    resume: bool = False,
) -> str:
    """Build pipe.py's graph on the resid SAEs and publish it; returns the closing line.

    Under torchrun every rank computes the (one-batch) ablation graph and the
    ranks share the contexts pass; rank 0 writes. `resume` continues that pass
    from its checkpoint.
    """
    phases = phases or PhaseTimer()
    spliced, tokenizer = load_spliced_model(config, sites=("resid",), phases=phases, script="pipe")
    config = settled(config, spliced)
    warn_unknown_prompts(config, tokenizer)
    with run_checkpoint(config, "pipe.py", spliced, resume=resume):
        with phases.phase("compute: ablation graph"):
            graph = pipe_graph(config, spliced, tokenizer, allow_empty=allow_empty)
        return publish_graph(
            graph,
            config,
            spliced,
            tokenizer,
            dot_name=config.GRAPH_DOT_FILE,
            image_name=config.GRAPH_FILE,
            script="pipe.py",
            phases=phases,
            new_graph=new_graph,
        )


def interpreted_batch(config: Config, tokenizer: Tokenizer, device: torch.device) -> TokenBatch:
    """The first NUM_SEQUENCES_INTERPED sequences (PROMPT or DATASET, per INTERP_SOURCE), right-padded.

    Dataset sequences are truncated to MAX_SEQ_INTERPED_LEN tokens; PROMPT is
    never truncated (that would change the token whose prediction is explained).
    """
    limit = config.MAX_SEQ_INTERPED_LEN
    from_dataset = config.interp_source == "dataset"
    texts = itertools.islice(interpreted_texts(config), config.NUM_SEQUENCES_INTERPED)
    batches = iter_batches(
        texts,
        tokenizer,
        batch_size=config.NUM_SEQUENCES_INTERPED,
        max_len=limit if from_dataset else limit + 1,
        prepend_bos=config.prepend_bos,
        device=device,
    )
    batch = next(batches, None)
    if batch is None:
        raise DatasetError(
            f"{config.DATASET if from_dataset else 'PROMPT'} holds no text with tokens to interpret"
        )
    if batch.input_ids.shape[1] > limit:
        raise ConfigError(
            f"PROMPT is more than MAX_SEQ_INTERPED_LEN={limit} tokens; "
            f"shorten it or raise MAX_SEQ_INTERPED_LEN"
        )
    if len(batch.input_ids) < config.NUM_SEQUENCES_INTERPED:
        logger.warning(
            "NUM_SEQUENCES_INTERPED is %d but only %d sequences were read (PROMPT is one; "
            "NUM_SEQUENCES_EVALED caps a DATASET)",
            config.NUM_SEQUENCES_INTERPED,
            len(batch.input_ids),
        )
    return batch


def resid_pins(config: Config) -> dict[int, int]:
    """DIMS_PINNED as layer -> feature; pipe.py ablates resid features only."""
    pins = {}
    for (site, layer), feature in config.pinned_dims.items():
        if site != "resid":
            raise ConfigError(
                f"DIMS_PINNED pins {site_key(site, layer)}; pipe.py ablates resid features only, so keys "
                f"must be int layers or 'resid_{{layer}}', e.g. {{{layer}: {feature}}}"
            )
        pins[layer] = feature
    return pins


def pipe_graph(
    config: Config, spliced: SplicedModel, tokenizer: Tokenizer, *, allow_empty: bool = False
) -> Graph:
    """pipe.py's graph: the ablation graph of the config's sequences, with its summary.

    Raises:
        EmptyResultError: THRESHOLD_EXP dropped every edge and `allow_empty`
            is false (with it, the same message is a warning).
    """
    layers = config.layer_range(spliced.n_layers)
    batch = interpreted_batch(config, tokenizer, spliced.device)
    result = ablation_graph(
        spliced,
        batch,
        tokenizer=tokenizer,
        layers=list(layers),
        thinning=config.INIT_THINNING_FACTOR,
        pinned=resid_pins(config),
        threshold_exp=config.THRESHOLD_EXP,
        logit_tokens=config.LOGIT_TOKENS,
        seed=config.SEED,
    )
    if len(layers) > 1 and not result.graph.edges:
        message = empty_graph_message(config.THRESHOLD_EXP, result.largest_effects)
        if not allow_empty:
            raise EmptyResultError(f"{message}; or pass --allow-empty to write the graph without edges")
        logger.warning("%s; writing the graph without edges (--allow-empty)", message)
    graph = result.graph
    graph.metadata = {
        "dataset": config.DATASET,
        "interp_source": config.interp_source,
        "interpreted": [
            tokenizer.decode(ids[mask.bool()])
            for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)
        ],
        "sequences": len(batch.input_ids),
        "summary": summary(result),
    }
    return graph


def empty_graph_message(threshold_exp: float | None, largest: list[float]) -> str:
    """Why no edge was kept, and the THRESHOLD_EXP that would keep the largest effects measured."""
    nonzero = [e for e in largest if e > 0]
    if not nonzero:
        return "No ablation changed any next-layer feature, so the graph has no edges"
    kept = nonzero[-1]  # the smallest of the (up to LARGEST_KEPT) largest effects
    exponent = math.floor(10 * math.log2(kept)) / 10
    if 2.0**exponent >= kept:  # edges need |e| > 2**THRESHOLD_EXP
        exponent = round(exponent - 0.1, 1)
    return (
        f"THRESHOLD_EXP {threshold_exp} (|effect| > {2.0**threshold_exp:.3g}) keeps no edge: the largest "
        f"effect measured is {nonzero[0]:.3g}; THRESHOLD_EXP: {exponent} would keep the top {len(nonzero)} "
        f"edges (null keeps every non-zero effect)"
    )


def summary(result: AblationResult) -> str:
    """'effects plotted out of collected: ~X%': X = drawn share of total |feature effect|.

    Collected is the sum of |e| over every non-zero feature-to-feature effect
    measured; plotted is that sum over the edges above the threshold.
    """
    share = 100.0 * result.plotted / result.collected if result.collected > 0 else 0.0
    return f"effects plotted out of collected: ~{share:.0f}%"
