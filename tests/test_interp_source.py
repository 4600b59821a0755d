"""INTERP_SOURCE: what pipe.py and val.py explain is chosen, logged and recorded."""

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

from sparse_coding.errors import ConfigError
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.pipe import pipe_graph

REPO = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store, John gave a drink to"
LINES = ["The quick brown fox jumps over the lazy dog", "Copyright (C) 2024 the authors"]


@pytest.fixture
def dataset(tmp_path) -> str:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return str(path)


def _pipe_metadata(config, caplog) -> dict:
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    with caplog.at_level(logging.INFO, logger="sparse_coding"):
        return pipe_graph(config, spliced, tokenizer).metadata


@pytest.mark.parametrize(
    ("source", "explained", "first"),
    [(None, LINES[0], LINES[0]), ("dataset", LINES[0], LINES[0]), ("prompt", PROMPT, PROMPT)],
)
def test_pipe_explains_the_chosen_text_logs_it_and_records_it(
    make_config, dataset, caplog, source, explained, first
):
    config = make_config(DATASET=dataset, INTERP_SOURCE=source, ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None)
    metadata = _pipe_metadata(config, caplog)
    assert metadata["interpreted"] == ["<|endoftext|>" + explained]
    assert metadata["interp_source"] == (source or "dataset")
    assert any(f"first sequence: {first!r}" in r.getMessage() for r in caplog.records)


def test_without_a_dataset_pipe_explains_the_prompt(make_config, caplog):
    metadata = _pipe_metadata(make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None), caplog)
    assert metadata["interpreted"] == ["<|endoftext|>" + PROMPT] and metadata["interp_source"] == "prompt"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [({"INTERP_SOURCE": "dataset"}, "DATASET is unset"), ({"INTERP_SOURCE": "text"}, "prompt, dataset")],
)
def test_an_impossible_interp_source_is_a_config_error(make_config, overrides, words):
    with pytest.raises(ConfigError, match=words):
        make_config(**overrides)


def test_val_validates_over_the_prompt_when_asked_though_a_dataset_is_set(
    tmp_path, tiny_model_dir, sae_templates, dataset, monkeypatch
):
    raw = tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {
        "DATASET": dataset,
        "INTERP_SOURCE": "prompt",
        "VALIDATION_DIMS_PINNED": {1: [0, 1, 2]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(sys, "argv", ["val.py", "--config", str(path), "-q"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(str(REPO / "sparse_coding" / "val.py"), run_name="__main__")
    report = json.loads(next((tmp_path / "data").glob("*/validation.json")).read_text())
    assert report["n_sequences"] == 1 and report["data"] == f"PROMPT {PROMPT!r}"
