"""The config's text as the corpus' sources and batches (PROMPT, DATASET, INTERP_SOURCE and their keys)."""

import itertools
import logging
from collections.abc import Iterable, Iterator

import torch

from sparse_coding.config import Config
from sparse_coding.corpus import TextSource, TokenBatch, iter_batches, load_texts
from sparse_coding.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def text_source(config: Config) -> TextSource:
    """PROMPT, or up to NUM_SEQUENCES_EVALED texts of DATASET."""
    return TextSource(
        prompt=config.PROMPT,
        dataset=config.DATASET,
        dataset_config=config.DATASET_CONFIG,
        split=config.DATASET_SPLIT,
        text_column=config.DATASET_TEXT_COLUMN,
        max_sequences=config.NUM_SEQUENCES_EVALED,
    )


def interpreted_texts(config: Config) -> Iterator[str]:
    """The texts pipe.py and val.py explain (INTERP_SOURCE), logging which, with the first one."""
    source = config.interp_source
    texts = iter([config.PROMPT]) if source == "prompt" else load_texts(text_source(config))
    first = next(texts, None)
    if first is None:
        return iter(())
    logger.info(
        "Interpreting %s (INTERP_SOURCE: %s); first sequence: %r",
        "PROMPT" if source == "prompt" else f"DATASET {config.DATASET!r}",
        source,
        first if len(first) <= 200 else first[:200] + "…",
    )
    return itertools.chain([first], texts)


def config_batches(
    config: Config,
    tokenizer: Tokenizer,
    *,
    device: torch.device | str,
    context_len: int,
    texts: Iterable[str] | None = None,
) -> Iterator[TokenBatch]:
    """`texts` (default: the config's DATASET, else PROMPT) as BATCH_SIZE batches of <= MAX_SEQ_LEN tokens.

    `context_len` (the model's n_positions) caps MAX_SEQ_LEN so no sequence
    overruns the model's position embeddings.
    """
    return iter_batches(
        load_texts(text_source(config)) if texts is None else texts,
        tokenizer,
        batch_size=config.BATCH_SIZE,
        max_len=min(config.MAX_SEQ_LEN, context_len),
        prepend_bos=config.prepend_bos,
        device=device,
    )
