"""contexts: streamed top-k contexts against a brute-force scan of a small .txt dataset."""

import logging
import random

import pytest
import torch
from conftest import hooks

from sparse_coding.labels.context_cache import contexts_cache
from sparse_coding.labels.contexts import collect_contexts
from sparse_coding.models.saes import load_sae
from sparse_coding.pipelines.inputs import text_source
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.publish import cache_path, fingerprint, load_or_collect
from sparse_coding.text.corpus import iter_batches, load_texts

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Copyright (C) 2024 the authors. All rights reserved.",
    "1 2 3 4 5",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "def forward(self, x): return x",
    "In 1969 the first humans walked on the moon",
]


@pytest.fixture
def dataset_config(make_config, tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return make_config(DATASET=str(path), BATCH_SIZE=3, SEQ_PER_DIM_CAP=3, VIEW=2, ACTS_LAYERS_SLICE="0:2")


def _collect(config, spliced, tokenizer, features=None):
    batches = iter_batches(
        load_texts(text_source(config)),
        tokenizer,
        batch_size=config.BATCH_SIZE,
        max_len=config.MAX_SEQ_LEN,
        prepend_bos=True,
        device="cpu",
    )
    return collect_contexts(
        spliced, tokenizer, batches, features=features, per_feature=config.SEQ_PER_DIM_CAP, view=config.VIEW
    )


def _brute_force(config, model, tokenizer, layer):
    """Each sequence alone (no padding): the resid SAE's activations at every token."""
    sae = load_sae(config.RESID_SAES, layer)
    out = []
    for text in TEXTS:
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
        )
        seen = {}
        handle = model.transformer.h[layer].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))  # noqa: B023
        with torch.no_grad():
            model(ids)
        handle.remove()
        x = seen["x"]
        out.append((ids[0].tolist(), sae.encode(x - x.mean(-1, keepdim=True))[0]))  # (pos, d_sae)
    return out


@pytest.mark.parametrize("asked", [None, {"resid_1": [40, 3, 17, 3]}], ids=["every_feature", "some_features"])
def test_top_contexts_equal_a_brute_force_scan_without_padding_leaks(dataset_config, asked):
    config = dataset_config
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    cache = _collect(config, spliced, tokenizer, asked)
    k, view = config.SEQ_PER_DIM_CAP, config.VIEW
    d_sae = spliced.by_key["resid_0"].sae.d_sae
    wanted = asked or {f"resid_{layer}": list(range(d_sae)) for layer in (0, 1)}
    assert set(cache.arrays) == set(wanted)
    for key, features in wanted.items():
        layer = int(key.split("_")[1])
        scans = _brute_force(config, spliced.model, tokenizer, layer)
        rows = {int(f): row for row, f in enumerate(cache.arrays[key]["features"])}
        assert sorted(rows) == sorted(set(features))
        for feature in features:
            peaks = [(float(acts[:, feature].max()), s) for s, (_, acts) in enumerate(scans)]
            expected = sorted((p[0] for p in peaks if p[0] > 0), reverse=True)[:k]
            got = cache.contexts(key, feature, k)
            assert [max(c.activations) for c in got] == pytest.approx(expected, abs=1e-5)
            chosen = cache.arrays[key]["seq"][rows[feature]]  # ties may pick either sequence
            for context, seq in zip(got, chosen, strict=False):
                ids, acts = scans[seq]
                pos = int(acts[:, feature].argmax())
                lo, hi = max(pos - view, 0), min(pos + view + 1, len(ids))
                assert context.tokens == [tokenizer.decode([i]) for i in ids[lo:hi]]
                assert context.activations == pytest.approx(acts[lo:hi, feature].tolist(), abs=1e-5)


def test_fewer_contexts_are_returned_when_top_k_is_smaller(dataset_config):
    spliced, tokenizer = load_spliced_model(dataset_config, sites=("resid",))
    cache = _collect(dataset_config, spliced, tokenizer)
    three = cache.contexts("resid_0", 0, 3)
    assert cache.contexts("resid_0", 0, 1) == three[:1]
    assert cache.contexts("attn_0", 0, 3) == []  # a site the cache does not hold


def test_only_sequences_some_context_points_to_are_kept(dataset_config):
    spliced, tokenizer = load_spliced_model(dataset_config, sites=("resid",))
    cache = _collect(dataset_config, spliced, tokenizer)
    referenced = {
        int(s)
        for site in cache.arrays.values()
        for s, a in zip(site["seq"].ravel(), site["act"].ravel(), strict=True)
        if a > 0
    }
    assert set(cache.sequences) == referenced


def test_the_cache_round_trips_and_detects_stale_sources(dataset_config, tmp_path):
    spliced, tokenizer = load_spliced_model(dataset_config, sites=("resid",))
    cache = _collect(dataset_config, spliced, tokenizer)
    current = fingerprint(dataset_config, spliced)
    cache.fingerprint = current
    store = contexts_cache(tmp_path / "c.npz", current, per_feature=3, view=2, inside=tmp_path)
    store.save(cache)
    loaded = store.read().value
    for feature in range(8):
        assert loaded.contexts("resid_1", feature, 3) == cache.contexts("resid_1", feature, 3)
    assert loaded.stale_reasons(current, 3, 2) == []
    assert loaded.stale_reasons(current, 5, 2) == ["SEQ_PER_DIM_CAP was 3, now 5"]
    other_text = current | {"text": current["text"] | {"MAX_SEQ_LEN": 7}}
    assert loaded.stale_reasons(other_text, 3, 2) == [
        f"text.MAX_SEQ_LEN was {dataset_config.MAX_SEQ_LEN}, now 7"
    ]
    moved = current["saes"] | {"resid_0": {"source": "/elsewhere/resid_{layer}", "weights": None}}
    kept = loaded.for_saes(moved)
    assert set(kept.arrays) == {"resid_1"} and kept.contexts("resid_0", 3, 3) == []


def test_load_or_collect_reads_the_text_only_for_features_it_lacks(dataset_config, monkeypatch):
    import sparse_coding.pipelines.publish as publish

    spliced, tokenizer = load_spliced_model(dataset_config, sites=("resid",))
    asked = []

    def recording(*args, features, **kwargs):
        asked.append(features)
        return collect_contexts(*args, features=features, **kwargs)

    monkeypatch.setattr(publish, "collect_contexts", recording)
    first = load_or_collect(dataset_config, spliced, tokenizer, features={"resid_0": [1, 2]})
    path = cache_path(dataset_config)
    assert path.is_file() and not path.with_suffix(".json").exists()  # one file: header inside
    grown = load_or_collect(dataset_config, spliced, tokenizer, features={"resid_0": [2, 3], "resid_1": [5]})
    stamp = path.stat().st_mtime_ns
    again = load_or_collect(dataset_config, spliced, tokenizer, features={"resid_0": [1, 3], "resid_1": [5]})
    assert asked == [{"resid_0": [1, 2]}, {"resid_0": [3], "resid_1": [5]}]  # the third read no text
    assert path.stat().st_mtime_ns == stamp
    full = _collect(dataset_config, spliced, tokenizer)  # every feature at once, as a reference
    for key, feature in [("resid_0", 1), ("resid_0", 2), ("resid_0", 3), ("resid_1", 5)]:
        got, expected = again.contexts(key, feature, 3), full.contexts(key, feature, 3)
        assert [c.tokens for c in got] == [c.tokens for c in expected]
        for context, reference in zip(got, expected, strict=True):
            assert context.activations == pytest.approx(reference.activations, abs=1e-5)
    assert first.contexts("resid_0", 2, 3) == grown.contexts("resid_0", 2, 3)


def _topk_texts(n: int) -> list[str]:
    words = "the cat dog sat ran on a mat rug and then it was red blue big small over under".split()
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def test_topk_contexts_equal_a_full_encode_of_every_token(make_config, tmp_path, caplog):
    """TopK sites: most tokens read a fraction of the encoder, and the result is still exact."""
    texts = _topk_texts(150)
    path = tmp_path / "many.txt"
    path.write_text("\n".join(texts) + "\n")
    config = make_config(
        DATASET=str(path),
        NUM_SEQUENCES_EVALED=len(texts),
        BATCH_SIZE=4,
        SEQ_PER_DIM_CAP=3,
        VIEW=2,
        ACTS_LAYERS_SLICE="0:2",
    )
    spliced, tokenizer = load_spliced_model(config, sites=("attn", "mlp"))
    asked = {"attn_0": [5, 1, 9], "mlp_1": [0, 7]}
    with caplog.at_level(logging.DEBUG, logger="sparse_coding.labels.contexts"):
        cache = _collect(config, spliced, tokenizer, asked)
    reads = [r.getMessage() for r in caplog.records if "exact TopK membership" in r.getMessage()]
    assert len(reads) == 2
    for message in reads:  # "<site>: <m> of <n> tokens needed ...; encoder columns read: <p>% of ..."
        used, of = (int(w) for w in message.split(":")[1].split()[:3:2])
        share = float(message.split("read: ")[1].split("%")[0])
        assert used < of / 2 and share < 50, message

    k, view = config.SEQ_PER_DIM_CAP, config.VIEW
    scans = {key: [] for key in asked}  # per text: (ids, SAE activations (pos, d_sae)) at each site
    for text in texts:
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[tokenizer.bos_token_id, *text_ids]])
        seen = {}
        record = {key: (lambda key: lambda x: seen.__setitem__(key, x) or x)(key) for key in asked}
        with hooks(spliced.model, record), torch.no_grad():
            spliced.model(ids)
        for key in asked:
            scans[key].append((ids[0].tolist(), spliced.by_key[key].sae.encode(seen[key])[0]))
    for key, features in asked.items():
        assert any(cache.contexts(key, feature, k) for feature in features)
        for feature in features:  # sorted is stable: on ties the earlier sequence comes first
            peaks = [float(acts[:, feature].max()) for _, acts in scans[key]]
            order = sorted((s for s in range(len(peaks)) if peaks[s] > 0), key=lambda s: -peaks[s])[:k]
            got = cache.contexts(key, feature, k)
            assert [max(c.activations) for c in got] == pytest.approx([peaks[s] for s in order], abs=1e-5)
            for context, seq in zip(got, order, strict=True):
                ids, acts = scans[key][seq]
                pos = int(acts[:, feature].argmax())
                lo, hi = max(pos - view, 0), min(pos + view + 1, len(ids))
                assert context.tokens == [tokenizer.decode([i]) for i in ids[lo:hi]]
                assert context.activations == pytest.approx(acts[lo:hi, feature].tolist(), abs=1e-5)
