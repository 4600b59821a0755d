"""The contexts cache goes stale with what it was collected from: a corpus edited in place is read again."""

import logging
import os

from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.publish import cache_path, load_or_collect

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "In 1969 the first humans walked on the moon",
]


FEATURES = {f"resid_{layer}": list(range(16)) for layer in (0, 1)}


def all_contexts(cache) -> list:
    return [cache.contexts(key, f, 3) for key, features in FEATURES.items() for f in features]


def test_editing_a_local_corpus_in_place_recollects_the_contexts(make_config, tmp_path, caplog):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    settings = {
        "DATASET": str(corpus),
        "BATCH_SIZE": 3,
        "SEQ_PER_DIM_CAP": 3,
        "VIEW": 2,
        "ACTS_LAYERS_SLICE": "0:2",
    }
    config = make_config(**settings)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    before = all_contexts(load_or_collect(config, spliced, tokenizer, features=FEATURES))
    stat = corpus.stat()
    corpus.write_text("\n".join(text[::-1] for text in TEXTS) + "\n")  # same name, same size
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO):
        after = all_contexts(load_or_collect(config, spliced, tokenizer, features=FEATURES))
    assert "is stale: dataset_identity.local was" in caplog.text
    # The reference: the edited corpus collected from scratch, in a folder with no cache.
    fresh_config = make_config(**settings, DATA_DIR=str(tmp_path / "fresh"))
    assert not cache_path(fresh_config).exists()
    assert (
        after == all_contexts(load_or_collect(fresh_config, spliced, tokenizer, features=FEATURES))
        and after != before
    )
