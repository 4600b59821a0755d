"""The config's text: unknown words warned about, progress totals counted from the data."""

import json
import logging
from pathlib import Path

from sparse_coding.algorithms.top_percentile import samples_to_resolve
from sparse_coding.config import load_config
from sparse_coding.pipelines.inputs import expected_batches, warn_unknown_words
from sparse_coding.text.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sparse_coding" / "demo"
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"


def test_words_a_word_level_vocabulary_lacks_are_named_in_one_warning(caplog):
    vocabulary = json.loads((DEMO / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    prompt = "the cat sat on the sun"
    expected = [word for word in prompt.split() if word not in vocabulary]
    with caplog.at_level(logging.WARNING):
        assert warn_unknown_words(load_tokenizer(str(DEMO / "model")), prompt) == expected
    (record,) = caplog.records
    assert f"{len(expected)} of its 6 words are unknown" in record.getMessage()
    assert all(repr(word) in record.getMessage() for word in expected)


def test_a_prompt_of_known_words_and_a_byte_level_tokenizer_warn_of_nothing(caplog, tiny_model_dir):
    with caplog.at_level(logging.WARNING):
        assert (
            warn_unknown_words(load_tokenizer(str(DEMO / "model")), "the sky is blue and the sun is hot")
            == []
        )
        assert warn_unknown_words(load_tokenizer(str(tiny_model_dir)), "zyxxy qwop ünïcode 😀") == []
    assert not caplog.records


def test_progress_totals_count_a_local_corpus_not_num_sequences_evaled():
    config = load_config(DEMO_CONFIG)
    lines = [line for line in (DEMO / "corpus.txt").read_text().splitlines() if line.strip()]
    assert config.NUM_SEQUENCES_EVALED > len(lines)
    assert expected_batches(config) == -(-len(lines) // config.BATCH_SIZE)


def test_the_demo_percentile_resolves_with_the_demo_corpus():
    """hist.py warns when a percentile needs more kept sequences than it had: not on the demo."""
    config = load_config(DEMO_CONFIG)
    lines = [line for line in (DEMO / "corpus.txt").read_text().splitlines() if line.strip()]
    assert samples_to_resolve(config.THRESHOLD_PERCENTILE) <= len(lines)
