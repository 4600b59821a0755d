"""The config's schema is its fields: the shipped YAML, the README's table and --help follow them."""

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from sparse_coding.config import DEFAULT_CONFIG_PATH, FIELDS, Config, config_from_dict, load_config
from sparse_coding.config.schema import choices, config_table, script_keys, yaml_text

REPO = Path(__file__).resolve().parents[1]
NAMES = [f.name for f in FIELDS]


def yaml_blocks() -> dict[str, str]:
    """key -> the comment lines above the run of keys it belongs to in the shipped YAML."""
    blocks, comment, run_started = {}, [], False
    for line in DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            if run_started:
                comment, run_started = [], False
            comment.append(line.lstrip("# "))
        elif re.match(r"[A-Z_]+:", line):
            blocks[line.split(":")[0]] = " ".join(comment)
            run_started = True
        elif not line.strip():
            comment, run_started = [], False
    return blocks


def test_the_readme_table_is_generated_from_the_fields():
    assert config_table(FIELDS) in (REPO / "README.md").read_text(encoding="utf-8")


def test_every_default_reads_back_as_written_in_the_table():
    default = config_from_dict({}, source_path=DEFAULT_CONFIG_PATH)
    for field in FIELDS:
        written = {field.name: yaml.safe_load(yaml_text(field.default))}
        assert getattr(config_from_dict(written, source_path=DEFAULT_CONFIG_PATH), field.name) == getattr(
            default, field.name
        ), field.name


def test_every_field_has_a_one_line_meaning_and_names_real_scripts():
    for field in FIELDS:
        assert 10 < len(field.metadata["meaning"]) <= 95 and "\n" not in field.metadata["meaning"], field.name
        assert field.metadata["scripts"] and set(field.metadata["scripts"]) <= {
            "pipe", "fast", "val", "hist", "steer", "trace"
        }  # fmt: skip


def test_the_shipped_config_restates_the_defaults_in_the_fields_order():
    assert list(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))) == NAMES
    shipped = load_config(DEFAULT_CONFIG_PATH)
    keys = [key for key in NAMES if key != "DATA_DIR"]  # the shipped config writes to sparse_coding/data
    assert {key: getattr(shipped, key) for key in keys} == {key: getattr(Config(), key) for key in keys}
    assert shipped.DATA_DIR == DEFAULT_CONFIG_PATH.parent.parent / "data"


def test_the_shipped_config_comments_every_key_and_names_every_choice():
    blocks = yaml_blocks()
    for field in FIELDS:
        assert blocks[field.name], f"{field.name} has no comment in central_config.yaml"
        missing = [c for c in choices(field.type) if c not in blocks[field.name]]
        assert not missing, f"central_config.yaml's comment on {field.name} does not name {missing}"


def test_help_lists_the_keys_the_fields_give_each_script():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "1000"}
    done = subprocess.run(
        [sys.executable, str(REPO / "sparse_coding" / "fast.py"), "--help"], capture_output=True, text=True,
        env=env, check=True, timeout=60,
    )  # fmt: skip
    listed = re.search(r"config keys that matter: (.+?) \(and those", " ".join(done.stdout.split("\n  ")))[1]
    assert listed.split(", ") == script_keys(FIELDS, "fast")
    assert "NUM_UP_NODES" in listed and "TRACE_PROMPT" not in listed


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
