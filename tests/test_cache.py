"""cache: one Cache type (key, load, save, why stale) and the fingerprints its keys are built from."""

import json
import os
import time
from pathlib import Path

import pytest

from sparse_coding.errors import StorageError
from sparse_coding.files import cache


def json_cache(path: Path, key: dict, **kwargs) -> cache.Cache:
    def encode(value, key):
        return json.dumps({"key": key, "value": value}).encode()

    def decode(data):
        stored = json.loads(data)
        return stored["key"], stored["value"]

    return cache.Cache(path, key, encode=encode, decode=decode, **kwargs)


def test_a_cache_serves_its_own_key_and_says_why_not_another(tmp_path):
    key = {"model": {"name": "gpt2"}, "saes": {}, "text": {"MAX_SEQ_LEN": 64}}
    assert json_cache(tmp_path / "c.json", key).load() == cache.Lookup(None, "absent")
    json_cache(tmp_path / "c.json", key).save([1, 2])
    assert json_cache(tmp_path / "c.json", key).load().value == [1, 2]
    other = key | {"text": {"MAX_SEQ_LEN": 32}}
    assert json_cache(tmp_path / "c.json", other).load() == cache.Lookup(
        None, "stale: text.MAX_SEQ_LEN was 64, now 32"
    )
    (tmp_path / "c.json").write_bytes(b"\x00garbage")
    lookup = json_cache(tmp_path / "c.json", key).load()
    assert lookup.value is None and lookup.problem.startswith("unreadable")


def test_a_cache_may_go_stale_by_age(tmp_path):
    def too_old(stored, key):
        return [f"{stored.age_s / 3600:.0f} h old"] if stored.age_s > 3600 else []

    path = tmp_path / "c.json"
    json_cache(path, {}, why_stale=too_old).save("answer")
    assert json_cache(path, {}, why_stale=too_old).load().value == "answer"
    stamp = time.time() - 7200
    os.utime(path, (stamp, stamp))
    assert json_cache(path, {}, why_stale=too_old).load().problem == "stale: 2 h old"


def test_a_cache_never_reads_or_writes_through_a_link_out_of_its_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    (outside / "c.json").write_text(json.dumps({"key": {}, "value": "planted"}))
    data.mkdir()
    (data / "contexts").symlink_to(outside)
    linked = json_cache(data / "contexts" / "c.json", {}, inside=data)
    assert linked.load().value is None and "outside" in linked.load().problem
    with pytest.raises(StorageError, match="outside"):
        linked.save("new")
    assert json.loads((outside / "c.json").read_text())["value"] == "planted"


def fingerprint(corpus: Path, weights: Path, **settings) -> dict:
    saes = {"resid_0": cache.sae_identity("my/saes_{layer}", weights)}
    return cache.cache_fingerprint(model="gpt2", saes=saes, dataset=str(corpus), settings=settings)


def test_the_fingerprint_sees_a_corpus_or_weights_file_edited_in_place(tmp_path):
    corpus, weights = tmp_path / "corpus.txt", tmp_path / "sae_weights.safetensors"
    corpus.write_text("one\n")
    weights.write_bytes(b"w1")
    before = fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})
    assert cache.fingerprint_differences(before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})) == []
    stat = corpus.stat()
    corpus.write_text("two\n")  # same size, same name: only the mtime tells
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    (difference,) = cache.fingerprint_differences(
        before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})
    )
    assert difference.startswith("dataset_identity.local was")
    weights.write_bytes(b"w22")
    changed = cache.fingerprint_differences(before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 32}))
    assert "text.MAX_SEQ_LEN was 64, now 32" in changed and any(
        "resid_0 SAE weights changed" in c for c in changed
    )
    assert cache.dataset_identity("Skylion007/openwebtext", revision="abc") == {
        "hub": "Skylion007/openwebtext",
        "revision": "abc",
    }
