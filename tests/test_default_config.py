"""Defaults live in one place: the Config dataclass; the shipped YAML and the README restate them."""

import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import requests
import yaml

from sparse_coding.config import DEFAULT_CONFIG_PATH, Config, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(Config) if f.name != "source_path"]


def readme_defaults() -> dict[str, str]:
    """key -> the YAML text of its default, from the README's config table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    defaults = {}
    for row in table.strip().splitlines()[1:]:
        keys_cell, default_cell = re.split(r"(?<!\\)\|", row)[1:3]
        keys = re.findall(r"`([A-Z_]+)`", keys_cell)
        values = re.findall(r"`([^`]*)`", default_cell)
        assert len(keys) == len(values), f"README row {row!r}: one default per key"
        defaults |= dict(zip(keys, values, strict=True))
    return defaults


def test_the_readme_table_lists_every_key_with_the_dataclass_default():
    documented = readme_defaults()
    assert sorted(documented) == sorted(FIELDS)
    # As if written in the shipped config, so DATA_DIR resolves against its folder, as its default does.
    default = config_from_dict({}, source_path=DEFAULT_CONFIG_PATH)
    for key, text in documented.items():
        value = getattr(config_from_dict({key: yaml.safe_load(text)}, source_path=DEFAULT_CONFIG_PATH), key)
        assert value == getattr(default, key), f"README says {key} defaults to {text}"


def test_the_shipped_config_restates_the_dataclass_defaults():
    assert sorted(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))) == sorted(FIELDS)
    shipped = load_config(DEFAULT_CONFIG_PATH)
    keys = [key for key in FIELDS if key != "DATA_DIR"]  # the shipped config writes to sparse_coding/data
    assert {key: getattr(shipped, key) for key in keys} == {key: getattr(Config(), key) for key in keys}
    assert shipped.DATA_DIR == DEFAULT_CONFIG_PATH.parent.parent / "data"


def test_a_key_left_out_takes_the_default_and_null_unsets_where_unset_means_something(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("ACTS_LAYERS_SLICE: '0:2'\nTHRESHOLD_EXP: null\nATTN_SAES: null\nNUM_UP_NODES: null\n")
    config = load_config(path)
    assert config.THRESHOLD_EXP is None and config.ATTN_SAES is None
    assert config.NUM_UP_NODES == Config().NUM_UP_NODES
    assert config.sae_sources == {"resid": "gpt2-small-resid-post-v5-32k", "mlp": "gpt2-small-mlp-out-v5-32k"}
    path.write_text("ACTS_LAYERS_SLICE: '0:2'\n")
    assert load_config(path).THRESHOLD_EXP == 5.0


# --- A config holding only ACTS_LAYERS_SLICE runs on the default SAEs ----------


@pytest.fixture
def default_hub(real_hub, tmp_path, monkeypatch):
    """The default model and SAE releases served offline from a hub cache in their real layouts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A config without DATA_DIR (the tests' mine.yaml in tmp_path) writes to data/ beside itself.
    data_dir = tmp_path / "data"

    def no_network(*args, **kwargs):
        raise requests.ConnectionError("no network in tests")

    monkeypatch.setattr(requests.Session, "get", no_network)  # Neuronpedia is on by default
    return data_dir


@pytest.mark.parametrize(("script", "extra"), [("fast", []), ("pipe", ["--allow-empty"])])
def test_a_config_holding_only_the_slice_runs_on_the_default_saes(
    default_hub, tmp_path, monkeypatch, capsys, script, extra
):
    path = tmp_path / "mine.yaml"
    path.write_text('ACTS_LAYERS_SLICE: "0:3"\n')
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--config", str(path), "-q", *extra])
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(str(REPO / "sparse_coding" / f"{script}.py"), run_name="__main__")
    name = "grads_graph.json" if script == "fast" else "cognition_graph.json"
    graph = json.loads((default_hub / "openai-community_gpt2" / name).read_text())
    sites = ("resid", "attn", "mlp") if script == "fast" else ("resid",)
    wanted = {
        f"{site}_{layer}": f"{getattr(Config(), f'{site.upper()}_SAES')} layer {layer} "
        for site in sites
        for layer in range(3)
    }
    sources = graph["metadata"]["sae_sources"]
    assert sorted(sources) == sorted(wanted) and all(sources[key].startswith(wanted[key]) for key in wanted)
