"""`sparse_coding.text.tokenizer.Tokenizer` against `AutoTokenizer.from_pretrained` of the same files.

The GPT-2 folders hold a byte-level BPE trained here; each variant changes
what transformers reads differently from tokenizer.json (the class, the
prefix space, the added and special tokens). Files outside the reproduced
cases must load through transformers (`load_tokenizer`) and say why.
"""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import CORPUS
from transformers import AutoTokenizer, GPT2Tokenizer

from sparse_coding.text.tokenizer import Tokenizer, UnreproducedTokenizer, load_tokenizer

DEMO_MODEL = Path(__file__).resolve().parents[1] / "sparse_coding" / "demo" / "model"
EOT = "<|endoftext|>"
TEXTS = [
    "",
    " ",
    "The quick brown fox",
    " leading space",
    "trailing space ",
    "double  space   and three",
    "line\nbreak\n\nand\r\nwindows",
    "tab\there\t",
    "naïve café, déjà vu",
    "an — em dash and “quotes”",
    "日本語のテキスト",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧",
    f"x{EOT}y",
    EOT,
    f" {EOT} the end {EOT}",
    "Copyright (C) 2024 the authors.",
    "\u00a0non-breaking\u2009thin space",
    "can't won't I'm they're",
    "the sky is blue and the sun is hot",
]
ADDED = {"single_word": False, "lstrip": False, "rstrip": False}
# A byte-level pre-tokenizer that adds a prefix space (tokenizer.json's own setting).
PREFIX_SPACE = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True}}


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory) -> Path:
    """tokenizer.json, vocab.json and merges.txt of a byte-level BPE, as `tokenizers` saves them."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=[EOT])
    bpe.save(str(folder / "tokenizer.json"))
    bpe.save_model(str(folder))
    return folder


def gpt2_folder(
    path: Path,
    bpe_files: Path,
    settings: dict | None,
    *,
    json_changes: dict | None = None,
    files: dict | None = None,
    vocab_files: bool = False,
    tokenizer_json: bool = True,
) -> Path:
    """A GPT-2 tokenizer folder: config.json (model_type gpt2), tokenizer.json changed as asked,
    tokenizer_config.json = `settings` (none if None) and `files` (name -> JSON)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 500}))
    if tokenizer_json:
        serialized = json.loads((bpe_files / "tokenizer.json").read_text()) | (json_changes or {})
        (path / "tokenizer.json").write_text(json.dumps(serialized))
    if vocab_files:
        for name in ("vocab.json", "merges.txt"):
            (path / name).write_bytes((bpe_files / name).read_bytes())
    if settings is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(settings))
    for name, content in (files or {}).items():
        (path / name).write_text(json.dumps(content))
    return path


def reference(model_dir) -> object:
    """transformers' tokenizer of `model_dir`, with load_tokenizer's pad rule."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def assert_same(ours, theirs) -> None:
    """Ids, decoding, vocabulary entries and special tokens all equal."""
    for text in TEXTS:
        for special in (False, True):
            ids = theirs(text, add_special_tokens=special)["input_ids"]
            assert ours(text, add_special_tokens=special)["input_ids"] == ids, (text, special)
            assert ours.decode(ids) == theirs.decode(ids), text
            assert ours.decode(torch.tensor(ids, dtype=torch.long)) == theirs.decode(ids), text
    assert len(ours) == len(theirs)
    every = list(range(len(theirs)))
    assert [ours.decode([i]) for i in every] == [theirs.decode([i]) for i in every]
    assert [ours.convert_ids_to_tokens(i) for i in every] == [theirs.convert_ids_to_tokens(i) for i in every]
    assert ours.convert_ids_to_tokens(torch.tensor(every)) == theirs.convert_ids_to_tokens(every)
    for name in ("bos_token", "eos_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name


def _added(content: str, **flags) -> dict:
    return {"content": content} | ADDED | flags


# name -> (tokenizer_config.json or None, tokenizer.json changes, other files); each as transformers reads it.
GPT2_CASES = {
    # The hub's openai-community/gpt2: no tokenizer_class (model_type gpt2 picks GPT2Tokenizer), and an
    # <|endoftext|> that tokenizer.json marks normalized.
    "hub_layout": (
        {"model_max_length": 1024},
        {"added_tokens": [{"id": 0} | _added(EOT, normalized=True, special=True)]},
        {},
    ),
    "no_tokenizer_config": (None, {}, {}),
    "gpt2_tokenizer_fast": ({"tokenizer_class": "GPT2TokenizerFast"}, {}, {}),
    # transformers takes add_prefix_space from tokenizer_config.json, not from tokenizer.json.
    "json_prefix_space_ignored": (
        {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False},
        PREFIX_SPACE,
        {},
    ),
    "config_prefix_space": ({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True}, {}, {}),
    # GPT2Tokenizer drops tokenizer.json's normalizer; a missing post-processor becomes an empty template.
    "json_normalizer_dropped": ({}, {"normalizer": {"type": "Lowercase"}, "post_processor": None}, {}),
    # A transformers 4 save: added_tokens_decoder, a serialized AddedToken, clean-up on (ignored for BPE).
    "transformers_4_save": (
        {
            "tokenizer_class": "GPT2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {"0": _added(EOT, normalized=True, special=True)},
            "bos_token": {"__type": "AddedToken"} | _added(EOT, normalized=True),
            "clean_up_tokenization_spaces": True,
            "eos_token": EOT,
            "errors": "replace",
            "model_max_length": 1024,
            "pad_token": None,
            "unk_token": EOT,
        },
        {},
        {},
    ),
    "special_tokens_map_pad": (
        {"tokenizer_class": "GPT2Tokenizer"},
        {},
        {"special_tokens_map.json": {"bos_token": EOT, "pad_token": _added("<pad>", lstrip=True)}},
    ),
    "added_token_beyond_the_vocabulary": (
        {},
        {
            "added_tokens": [
                {"id": 0} | _added(EOT, normalized=False, special=True),
                {"id": 400} | _added("<sep>", rstrip=True, normalized=False, special=False),
            ]
        },
        {},
    ),
}


@pytest.mark.parametrize("case", GPT2_CASES)
def test_a_gpt2_tokenizer_folder_equals_transformers(tmp_path, bpe_files, case):
    settings, json_changes, files = GPT2_CASES[case]
    folder = gpt2_folder(tmp_path / case, bpe_files, settings, json_changes=json_changes, files=files)
    assert_same(Tokenizer.from_pretrained(str(folder)), reference(folder))


def test_a_folder_saved_by_transformers_gpt2tokenizer_equals_transformers(tmp_path, bpe_files):
    source = gpt2_folder(tmp_path / "vocab_only", bpe_files, None, vocab_files=True, tokenizer_json=False)
    saved = tmp_path / "saved"
    GPT2Tokenizer.from_pretrained(source).save_pretrained(saved)
    (saved / "config.json").write_bytes((source / "config.json").read_bytes())
    assert json.loads((saved / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    assert_same(Tokenizer.from_pretrained(str(saved)), reference(saved))


@pytest.mark.parametrize("tokenizer_class", ["TokenizersBackend", "PreTrainedTokenizerFast"])
def test_a_tokenizers_backend_folder_keeps_tokenizer_json_as_it_is(tmp_path, bpe_files, tokenizer_class):
    settings = {"tokenizer_class": tokenizer_class, "bos_token": EOT, "eos_token": EOT, "pad_token": "<pad>"}
    folder = gpt2_folder(tmp_path / "as_is", bpe_files, settings, json_changes=PREFIX_SPACE)
    ours = Tokenizer.from_pretrained(str(folder))
    assert_same(ours, reference(folder))
    assert ours("hello", add_special_tokens=False) == ours(" hello", add_special_tokens=False)


def test_the_demo_model_equals_transformers():
    assert_same(load_tokenizer(str(DEMO_MODEL)), reference(DEMO_MODEL))
    assert isinstance(load_tokenizer(str(DEMO_MODEL)), Tokenizer)


def test_the_tiny_test_model_equals_transformers(tiny_model_dir):
    assert isinstance(load_tokenizer(str(tiny_model_dir)), Tokenizer)
    assert_same(load_tokenizer(str(tiny_model_dir)), reference(tiny_model_dir))


def test_a_hub_repo_loads_offline_from_the_cache(tmp_path, bpe_files, hub_cache):
    settings, json_changes, _ = GPT2_CASES["hub_layout"]
    folder = gpt2_folder(tmp_path / "repo", bpe_files, settings, json_changes=json_changes, vocab_files=True)
    hub_cache("someone/gpt2-like", folder, "")
    ours = Tokenizer.from_pretrained("someone/gpt2-like")
    assert isinstance(ours, Tokenizer)
    assert_same(ours, reference("someone/gpt2-like"))


def test_the_hubs_gpt2_layout_of_2020_takes_the_fast_path_and_equals_transformers(tmp_path, hub_cache):
    """openai-community/gpt2 as the hub serves it: a tokenizer.json whose model has no "type" (vocab and
    merges only), <|endoftext|> the last id with normalized true, tokenizer_config.json
    {"model_max_length": 1024}, no tokenizer_class anywhere."""
    from hub_layouts import GPT2_REPO, write_gpt2_repo

    folder = write_gpt2_repo(tmp_path / "gpt2")
    serialized = json.loads((folder / "tokenizer.json").read_text())
    assert "type" not in serialized["model"] and serialized["added_tokens"][0]["normalized"] is True
    assert serialized["added_tokens"][0]["id"] == max(serialized["model"]["vocab"].values())
    hub_cache(GPT2_REPO, folder, "")
    ours = load_tokenizer(GPT2_REPO)
    assert isinstance(ours, Tokenizer)
    assert_same(ours, reference(GPT2_REPO))
    assert ours.bos_token_id == ours.eos_token_id == len(ours) - 1


def test_a_hub_repo_missing_from_the_offline_cache_is_an_oserror(hub_cache):
    with pytest.raises(OSError):
        load_tokenizer("someone/not-downloaded")


# name -> (tokenizer_config.json, tokenizer.json changes, what the reason names); how the folder
# differs from the allow-list.
UNREPRODUCED = {
    "add_bos_token": ({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True}, {}, "add_bos_token"),
    "unknown_key": ({"do_lower_case": True}, {}, "do_lower_case"),
    "other_class": ({"tokenizer_class": "CodeGenTokenizer"}, {}, "CodeGenTokenizer"),
    "truncation": ({}, {"truncation": {"max_length": 4, "stride": 0, "strategy": "LongestFirst"}}, "trunc"),
    "extra_special_tokens": ({"extra_special_tokens": ["<x>"]}, {}, "extra_special_tokens"),
}


@pytest.mark.parametrize("case", UNREPRODUCED)
def test_files_outside_the_reproduced_cases_load_through_transformers(tmp_path, bpe_files, case, caplog):
    settings, json_changes, reason = UNREPRODUCED[case]
    folder = gpt2_folder(tmp_path / case, bpe_files, settings, json_changes=json_changes)
    with pytest.raises(UnreproducedTokenizer, match=reason):
        Tokenizer.from_pretrained(str(folder))
    with caplog.at_level(logging.DEBUG, logger="sparse_coding.text.tokenizer"):
        loaded = load_tokenizer(str(folder))
    assert not isinstance(loaded, Tokenizer) and reason in caplog.text
    assert_same(loaded, reference(folder))


def test_a_folder_with_only_vocab_json_and_merges_txt_loads_through_transformers(tmp_path, bpe_files):
    folder = gpt2_folder(tmp_path / "slow", bpe_files, {}, vocab_files=True, tokenizer_json=False)
    with pytest.raises(UnreproducedTokenizer, match="tokenizer.json"):
        Tokenizer.from_pretrained(str(folder))
    loaded = load_tokenizer(str(folder))
    assert not isinstance(loaded, Tokenizer)
    assert_same(loaded, reference(folder))


def test_clean_up_spaces_of_a_non_bpe_model_loads_through_transformers(tmp_path):
    folder = tmp_path / "demo_clean_up"
    folder.mkdir()
    for file in DEMO_MODEL.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    settings = folder / "tokenizer_config.json"
    settings.write_text(json.dumps(json.loads(settings.read_text()) | {"clean_up_tokenization_spaces": True}))
    with pytest.raises(UnreproducedTokenizer, match="clean_up_tokenization_spaces"):
        Tokenizer.from_pretrained(str(folder))
    assert_same(load_tokenizer(str(folder)), reference(folder))


def test_a_tokenizer_config_that_is_not_an_object_names_the_file(tmp_path, bpe_files):
    folder = gpt2_folder(tmp_path / "bad", bpe_files, [1])
    with pytest.raises(ValueError, match=r"tokenizer_config\.json holds a JSON list"):
        load_tokenizer(str(folder))
