"""The contexts cache: stale with what it was collected from, written after the graph, inside DATA_DIR."""

import logging
import os

import pytest

from sparse_coding.errors import StorageError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.pipelines import publish
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


def _small_graph() -> Graph:
    graph = Graph(metadata={"summary": "s"})
    graph.add_node(Node.from_id("resid_0.3", activation=1.0))
    graph.add_node(Node.from_id("resid_1.5", activation=1.0))
    graph.add_edge("resid_0.3", "resid_1.5", 0.5)
    return graph


def test_the_contexts_cache_is_replaced_only_after_the_graph_is_saved(make_config, monkeypatch):
    config = make_config(ACTS_LAYERS_SLICE="0:2", NEURONPEDIA=False)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    load_or_collect(config, spliced, tokenizer, features={"resid_0": [1]})
    before = cache_path(config).read_bytes()

    def full_disk(*args, **kwargs):
        raise StorageError("could not write graph.json: No space left on device")

    monkeypatch.setattr(publish, "update_graph_files", full_disk)
    with pytest.raises(StorageError):
        publish.publish_graph(
            _small_graph(), config, spliced, tokenizer, dot_name="g.dot", image_name="g.svg", script="pipe.py"
        )
    assert cache_path(config).read_bytes() == before  # the run failed: the grown cache was not written
    monkeypatch.undo()
    publish.publish_graph(
        _small_graph(), config, spliced, tokenizer, dot_name="g.dot", image_name="g.svg", script="pipe.py"
    )
    assert cache_path(config).read_bytes() != before


def test_a_contexts_folder_that_links_out_of_data_dir_is_not_written_through(make_config, tmp_path, caplog):
    config = make_config(ACTS_LAYERS_SLICE="0:2")
    outside = tmp_path / "outside"
    outside.mkdir()
    cache_path(config).parent.parent.mkdir(parents=True)
    cache_path(config).parent.symlink_to(outside)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    with caplog.at_level(logging.WARNING):
        cache = load_or_collect(config, spliced, tokenizer, features={"resid_0": [1, 2]})
    assert cache.missing("resid_0", [1, 2]) == [] and list(outside.iterdir()) == []
    assert "leads outside" in caplog.text
