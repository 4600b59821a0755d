"""The config's text as the corpus' sources and batches (PROMPT, DATASET and their keys)."""

from collections.abc import Iterator

import torch
from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.corpus import TextSource, TokenBatch, iter_batches, load_texts


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


def config_batches(
    config: Config, tokenizer: PreTrainedTokenizerBase, *, device: torch.device | str, context_len: int
) -> Iterator[TokenBatch]:
    """The config's text (DATASET, else PROMPT) as BATCH_SIZE batches of at most MAX_SEQ_LEN tokens.

    `context_len` (the model's n_positions) caps MAX_SEQ_LEN so no sequence
    overruns the model's position embeddings.
    """
    return iter_batches(
        load_texts(text_source(config)),
        tokenizer,
        batch_size=config.BATCH_SIZE,
        max_len=min(config.MAX_SEQ_LEN, context_len),
        prepend_bos=config.PREPEND_BOS,
        device=device,
    )
