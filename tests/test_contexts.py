"""contexts: streamed top-k contexts against a brute-force scan of a small .txt dataset."""

import pytest
import torch

from sparse_coding.corpus import iter_batches, load_texts
from sparse_coding.labels.context_cache import ContextCache
from sparse_coding.labels.contexts import cache_path, collect_contexts, fingerprint, load_or_collect
from sparse_coding.models.loading import load_spliced_model
from sparse_coding.models.saes import load_sae

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


def _collect(config, spliced, tokenizer):
    batches = iter_batches(
        load_texts(config),
        tokenizer,
        batch_size=config.BATCH_SIZE,
        max_len=config.MAX_SEQ_LEN,
        prepend_bos=True,
        device="cpu",
    )
    return collect_contexts(spliced, tokenizer, batches, per_feature=config.SEQ_PER_DIM_CAP, view=config.VIEW)


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


def test_top_contexts_equal_a_brute_force_scan_without_padding_leaks(dataset_config):
    config = dataset_config
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    cache = _collect(config, spliced, tokenizer)
    k, view = config.SEQ_PER_DIM_CAP, config.VIEW
    for layer in (0, 1):
        scans = _brute_force(config, spliced.model, tokenizer, layer)
        for feature in range(spliced.by_key[f"resid_{layer}"].sae.d_sae):
            peaks = [(float(acts[:, feature].max()), s) for s, (_, acts) in enumerate(scans)]
            expected = sorted((p[0] for p in peaks if p[0] > 0), reverse=True)[:k]
            got = cache.contexts(f"resid_{layer}", feature, k)
            assert [max(c.activations) for c in got] == pytest.approx(expected, abs=1e-5)
            chosen = cache.arrays[f"resid_{layer}"]["seq"][feature]  # ties may pick either sequence
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
    cache.save(tmp_path / "c.npz")
    loaded = ContextCache.load(tmp_path / "c.npz")
    for feature in range(8):
        assert loaded.contexts("resid_1", feature, 3) == cache.contexts("resid_1", feature, 3)
    current = fingerprint(dataset_config, spliced)
    cache.fingerprint = current
    cache.save(tmp_path / "c.npz")
    loaded = ContextCache.load(tmp_path / "c.npz")
    assert loaded.stale_reasons(current, 3, 2) == []
    moved = current | {
        "saes": current["saes"] | {"resid_0": {"source": "/elsewhere/resid_{layer}", "weights": None}}
    }
    assert loaded.stale_reasons(moved, 3, 2) == [
        f"resid_0 SAE was {cache.sources['resid_0']!r}, now '/elsewhere/resid_{{layer}}'"
    ]
    assert loaded.stale_reasons(current, 5, 2) == ["SEQ_PER_DIM_CAP was 3, now 5"]


def test_load_or_collect_writes_once_and_reuses_the_cache(dataset_config):
    spliced, tokenizer = load_spliced_model(dataset_config, sites=("resid",))
    first = load_or_collect(dataset_config, spliced, tokenizer)
    path = cache_path(dataset_config)
    assert path.is_file() and not path.with_suffix(".json").exists()  # one file: header inside
    stamp = path.stat().st_mtime_ns
    again = load_or_collect(dataset_config, spliced, tokenizer)
    assert path.stat().st_mtime_ns == stamp
    assert again.contexts("resid_0", 3, 3) == first.contexts("resid_0", 3, 3)
