"""fast.py's pipeline: config -> examples -> gradient graph (Marks et al. 2024) -> graph files."""

import logging
from pathlib import Path

import torch

from sparse_coding.algorithms.attribution_graph import GraphOptions, gradient_graph
from sparse_coding.algorithms.feature_means import feature_means
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.config import Config
from sparse_coding.graphs.graph import Graph
from sparse_coding.models.transformer import GPT2
from sparse_coding.pipelines.inputs import config_batches, warn_unknown_prompts
from sparse_coding.pipelines.loading import load_spliced_model, settled
from sparse_coding.pipelines.publish import publish_graph
from sparse_coding.pipelines.resume import file_input, run_checkpoint
from sparse_coding.pipelines.threshold_cache import Thresholds, load_thresholds
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import TokenBatch, pad_id
from sparse_coding.text.pairs import Pair, example_batches, read_pairs_file, tokenize_pair
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def config_pairs(config: Config) -> list[Pair]:
    """NUM_EXAMPLES rows of PAIRS_FILE, else the one example PROMPT (+ PATCH_PROMPT, answers) gives."""
    if config.PAIRS_FILE is not None:
        return read_pairs_file(Path(config.PAIRS_FILE).expanduser(), config.NUM_EXAMPLES)
    return [Pair(config.PROMPT, config.PATCH_PROMPT, config.ANSWER, config.PATCH_ANSWER)]


def config_example_batches(config: Config, tokenizer: Tokenizer, model: GPT2) -> list[TokenBatch]:
    """The config's examples, tokenized by `pairs`' rule (at most `model`'s n_positions tokens) and
    right-padded into BATCH_SIZE batches on its device."""
    examples = [
        tokenize_pair(pair, tokenizer, prepend_bos=config.prepend_bos, max_len=model.config.n_positions)
        for pair in config_pairs(config)
    ]
    return example_batches(
        examples, batch_size=config.BATCH_SIZE, pad_id=pad_id(tokenizer), device=model.device
    )


def baseline_means(
    config: Config, spliced: SplicedModel, tokenizer: Tokenizer
) -> dict[str, torch.Tensor] | None:
    """BASELINE mean: every site's feature means over DATASET (else PROMPT), as val.py computes them."""
    if config.BASELINE != "mean":
        return None
    batches = config_batches(config, tokenizer, spliced.model)
    return feature_means(spliced, batches, spliced.by_key).features


def fast_graph(config: Config, spliced: SplicedModel, tokenizer: Tokenizer) -> Graph:
    """The gradient graph of the config's examples, unlabelled."""
    batches = config_example_batches(config, tokenizer, spliced.model)
    options = config.options(GraphOptions, metric=METRICS[config.METRIC])
    thresholds = shared_thresholds(config, spliced)
    logger.info("Down-nodes: %s", thresholds.description if thresholds else options.selection)
    graph = gradient_graph(
        spliced,
        batches,
        options,
        means=baseline_means(config, spliced, tokenizer),
        thresholds=thresholds.values if thresholds else None,
    )
    graph.metadata["examples"] = examples_source(config)
    graph.metadata |= prompt_metadata(spliced, batches[0], tokenizer)
    return graph


def shared_thresholds(config: Config, spliced: SplicedModel) -> Thresholds | None:
    """hist.py's cached thresholds (when they match the run, they choose down-nodes) as rank 0 reads them
    from its DATA_DIR, on every rank's device."""
    thresholds = distributed.broadcast(load_thresholds(config, spliced) if distributed.is_main() else None)
    return None if thresholds is None else distributed.move(thresholds, spliced.device)


def prompt_metadata(spliced: SplicedModel, batch: TokenBatch, tokenizer: Tokenizer) -> dict:
    """The first example's tokens (BOS = position 0 when prepended), the answer the metric explains
    and the model's probability of it."""
    ids = batch.input_ids[0, : int(batch.attention_mask[0].sum())].tolist()
    answer = int(batch.answers[0])
    with torch.no_grad():
        logits = spliced(batch.input_ids[:1], batch.attention_mask[:1])[0, batch.last[0]]
    return {
        "prompt_tokens": [tokenizer.decode([token]) for token in ids],
        "answer_token": tokenizer.decode([answer]),
        "answer_token_id": answer,
        "answer_probability": float(torch.softmax(logits.float(), -1)[answer]),
    }


def examples_source(config: Config) -> str:
    """Where the examples came from, for the graph's metadata."""
    if config.PAIRS_FILE:
        return f"PAIRS_FILE {config.PAIRS_FILE}"
    return "PROMPT + PATCH_PROMPT" if config.PATCH_PROMPT else "PROMPT"


def run_fast(
    config: Config, phases: PhaseTimer | None = None, *, new_graph: bool = False, resume: bool = False
) -> str:
    """Build fast.py's graph over every configured site of the slice and publish it; the closing line.

    Under torchrun the ranks share the examples, the feature means and the
    contexts pass, and rank 0 writes; `resume` continues those passes from
    their checkpoint (`sparse_coding.runtime.checkpoints`).
    """
    phases = phases or PhaseTimer()
    spliced, tokenizer = load_spliced_model(config, phases=phases, script="fast")
    config = settled(config, spliced)
    warn_unknown_prompts(config, tokenizer, examples=True)
    inputs = {"PAIRS_FILE": file_input(config.PAIRS_FILE)}
    with run_checkpoint(config, "fast.py", spliced, resume=resume, inputs=inputs):
        with phases.phase("compute: gradient graph"):
            graph = fast_graph(config, spliced, tokenizer)
        return publish_graph(
            graph,
            config,
            spliced,
            tokenizer,
            dot_name=config.GRADS_DOT_FILE,
            image_name=config.GRADS_FILE,
            script="fast.py",
            phases=phases,
            new_graph=new_graph,
        )
