"""The config's text as the corpus' sources and batches (PROMPT, DATASET, INTERP_SOURCE and their keys)."""

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator

from sparse_coding.config import Config
from sparse_coding.models.transformer import GPT2
from sparse_coding.text.batches import TokenBatch, text_ids
from sparse_coding.text.corpus import TextSource, count_texts, iter_batches, load_texts
from sparse_coding.text.tokenizer import Tokenizer

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


def interpreted_texts(config: Config, *, announce: bool = True) -> Iterator[str]:
    """The texts pipe.py and val.py explain (INTERP_SOURCE); `announce` logs which, with the first one."""
    source = config.interp_source
    texts = iter([config.PROMPT]) if source == "prompt" else load_texts(text_source(config))
    if not announce:
        return texts
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
    config: Config, tokenizer: Tokenizer, model: GPT2, texts: Iterable[str] | None = None
) -> Iterator[TokenBatch]:
    """`texts` (default: the config's DATASET, else PROMPT) as BATCH_SIZE batches on `model`'s device, of
    <= MAX_SEQ_LEN tokens and at most its n_positions (no sequence overruns its position embeddings)."""
    return iter_batches(
        load_texts(text_source(config)) if texts is None else texts,
        tokenizer,
        batch_size=config.BATCH_SIZE,
        max_len=min(config.MAX_SEQ_LEN, model.config.n_positions),
        prepend_bos=config.prepend_bos,
        device=model.device,
    )


class BatchStream:
    """Batches that are read again, from their texts, each time they are iterated: a pass that walks
    the data twice (val.py) holds one batch at a time, never the whole dataset."""

    def __init__(self, make: Callable[[], Iterator[TokenBatch]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[TokenBatch]:
        return self._make()


def expected_batches(config: Config) -> int:
    """How many batches `config_batches` yields, for progress totals: from the data where it can be
    counted (`corpus.count_texts`), else NUM_SEQUENCES_EVALED / BATCH_SIZE (an upper bound)."""
    source = text_source(config)
    count = count_texts(source)
    return math.ceil((source.max_sequences if count is None else count) / config.BATCH_SIZE)


def warn_unknown_words(tokenizer: Tokenizer, text: str, key: str = "PROMPT") -> list[str]:
    """Warn when words of `text` are unknown to the tokenizer (read as a special token such as
    ``<|endoftext|>``, as a small word-level vocabulary does); returns those words.

    GPT-2's byte-level tokenizer knows every string, so this only fires for
    other vocabularies, where such a prompt explains little.
    """
    specials = {token for token in (tokenizer.bos_token, tokenizer.eos_token) if token}
    special_ids = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}
    unknown = [
        word
        for word in text.split()
        if word not in specials and special_ids & set(text_ids(tokenizer, word, prepend_bos=False))
    ]
    if unknown:
        total = len(text.split())
        logger.warning(
            "%s: %d of its %d words are unknown to MODEL_DIR's tokenizer and are read as %s: %s; "
            "results on it say little. Use words the tokenizer knows",
            key,
            len(unknown),
            total,
            " / ".join(sorted(specials)),
            ", ".join(repr(word) for word in unknown[:10]),
        )
    return unknown


def warn_unknown_prompts(config: Config, tokenizer: Tokenizer, *, examples: bool = False) -> None:
    """`warn_unknown_words` on the prompts a run explains: fast.py's PROMPT and PATCH_PROMPT
    (`examples`, unless PAIRS_FILE gives them), pipe.py's and val.py's PROMPT when INTERP_SOURCE picks it."""
    if examples and config.PAIRS_FILE is None:
        prompts = {"PROMPT": config.PROMPT, "PATCH_PROMPT": config.PATCH_PROMPT}
    elif not examples and config.interp_source == "prompt":
        prompts = {"PROMPT": config.PROMPT}
    else:
        prompts = {}
    for key, text in prompts.items():
        if text:
            warn_unknown_words(tokenizer, text, key)
