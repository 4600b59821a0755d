"""Every relative path in a config is read against the config file, never the working directory."""

import logging
from pathlib import Path

import pytest

from sparse_coding.config import config_from_dict, load_config, paths

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"


def test_relative_paths_are_read_against_the_config_file_from_any_folder(tmp_path, monkeypatch):
    conf = tmp_path / "project" / "configs"
    (conf / "model").mkdir(parents=True)
    (tmp_path / "project" / "saes" / "resid_0").mkdir(parents=True)
    (conf / "corpus.txt").write_text("a text\n")
    path = conf / "mine.yaml"
    path.write_text(
        'MODEL_DIR: "model"\nDATASET: "corpus.txt"\nPAIRS_FILE: "pairs.jsonl"\n'
        'RESID_SAES: "../saes/resid_{layer}"\nDATA_DIR: "../out"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert Path(config.MODEL_DIR) == conf / "model"
    assert Path(config.DATASET) == conf / "corpus.txt"
    assert Path(config.PAIRS_FILE) == conf / "pairs.jsonl"  # a file to come is still a path
    assert config.RESID_SAES == str(tmp_path / "project" / "saes") + "/resid_{layer}"
    assert config.DATA_DIR == tmp_path / "project" / "out"


def test_hub_names_and_releases_are_left_for_the_hub(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        'MODEL_DIR: "openai-community/gpt2"\nDATASET: "NeelNanda/pile-10k"\n'
        'RESID_SAES: "gpt2-small-res-jb"\nATTN_SAES: "owner/repo/blocks.{layer}.hook_attn_out"\n'
    )
    config = load_config(path)
    assert config.MODEL_DIR == "openai-community/gpt2" and config.DATASET == "NeelNanda/pile-10k"
    assert config.RESID_SAES == "gpt2-small-res-jb"
    assert config.ATTN_SAES == "owner/repo/blocks.{layer}.hook_attn_out"


def test_a_config_without_data_dir_writes_beside_itself(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text("SEED: 1\n")
    monkeypatch.chdir(REPO)
    assert load_config(path).DATA_DIR == tmp_path / "conf" / "data"
    monkeypatch.chdir(tmp_path)
    assert config_from_dict({"SEED": 1}).DATA_DIR == tmp_path / "data"  # a dict: the working folder


def test_the_demo_config_gives_the_same_run_from_the_repo_and_from_the_package_folder(monkeypatch):
    monkeypatch.chdir(REPO)
    from_root = load_config("sparse_coding/config/demo_config.yaml")
    monkeypatch.chdir(REPO / "sparse_coding")
    from_package = load_config("config/demo_config.yaml")
    assert from_root == from_package
    assert Path(from_root.MODEL_DIR) == REPO / "sparse_coding" / "demo" / "model"
    assert from_root.DATA_DIR == REPO / "sparse_coding" / "demo" / "output"
    assert from_root.model_data_dir(from_root.MODEL_DIR) == from_root.DATA_DIR / "demo_model"


def test_an_installed_package_is_never_written_into(tmp_path, monkeypatch, caplog):
    package = tmp_path / "lib" / "python3.11" / "site-packages" / "sparse_coding"
    (package / "config").mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_DIR", package)
    (package / "config" / "shipped.yaml").write_text('DATA_DIR: "../data"\n')
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="sparse_coding.config.paths"):
        config = load_config(package / "config" / "shipped.yaml")
    assert config.DATA_DIR == tmp_path / "sparse_coding_data"
    assert str(package / "data") in caplog.text and "installed package" in caplog.text


@pytest.mark.parametrize("value", ["./model", "../model", "a/b/model"])
def test_a_model_dir_that_reads_as_a_path_is_one_even_before_it_exists(tmp_path, value):
    (tmp_path / "conf").mkdir()
    config = config_from_dict({"MODEL_DIR": value}, source_path=tmp_path / "conf" / "c.yaml")
    assert Path(config.MODEL_DIR) == (tmp_path / "conf" / value).resolve()
