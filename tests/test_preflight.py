"""Fail before the work: what the config and the files can tell stops a run before anything loads."""

import json
import runpy
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

from sparse_coding.config import config_from_dict
from sparse_coding.errors import SparseCodingError
from sparse_coding.graphs.graph import Graph, Node, run_record
from sparse_coding.pipelines.preflight import preflight

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading the model at all fails the test: every check must come first."""
    import sparse_coding.pipelines.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the failing check")

    monkeypatch.setattr(loading, "load_model", refuse)


def _fail_script(tmp_path, capsys, monkeypatch, script: str, raw: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--config", str(path), "-q"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "sparse_coding" / f"{script}.py"), run_name="__main__")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def _raw(tmp_path, tiny_model_dir, sae_templates, **overrides) -> dict:
    return tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | overrides


def _out_dir(tmp_path) -> Path:
    return next(iter((tmp_path / "data").iterdir()), None) or (tmp_path / "data")


@pytest.mark.parametrize(
    ("script", "overrides", "words"),
    [
        ("pipe", {"GRAPH_FILE": "graph.jpg"}, "'.jpg'"),
        ("fast", {"GRADS_FILE": "graph.pdf"}, "'.pdf'"),
        ("fast", {"PROMPT": "a", "PREPEND_BOS": False}, "needs at least 2"),
        ("pipe", {"MODEL_DIR": "./no_such_model"}, "folder"),
        ("hist", {"DATASET": "x.txt", "MODEL_DIR": "/no/such/model"}, "not found"),
        ("fast", {"GRADS_FILE": "../../escape.svg"}, "Config key GRADS_FILE"),
        ("pipe", {"GRAPH_DOT_FILE": "sub/graph.dot"}, "Config key GRAPH_DOT_FILE"),
        ("pipe", {"TRACE_FILE": "../trace.svg"}, "Config key TRACE_FILE"),
        ("fast", {"GRADS_FILE": "graph.jpg"}, "Config key GRADS_FILE"),
        ("pipe", {"NEURONPEDIA_URL": "http://[::1"}, "Config key NEURONPEDIA_URL"),
        ("fast", {"NODE_THRESHOLD": float("nan")}, "must be a finite number, got nan"),
        ("fast", {"EDGE_THRESHOLD": float("inf")}, "must be a finite number, got inf"),
        ("pipe", {"DATA_DIR": "/tmp/data\x00dir"}, "holds a NUL byte"),
    ],
)
def test_a_check_from_the_config_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads, script, overrides, words
):
    line = _fail_script(
        tmp_path, capsys, monkeypatch, script, _raw(tmp_path, tiny_model_dir, sae_templates, **overrides)
    )
    assert words in line, line


def test_an_existing_graph_file_that_cannot_be_read_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads
):
    raw = _raw(tmp_path, tiny_model_dir, sae_templates)
    out = config_from_dict(raw).model_data_dir(raw["MODEL_DIR"])
    out.mkdir(parents=True)
    (out / "grads_graph.dot").write_text("this is { not a graph")
    line = _fail_script(tmp_path, capsys, monkeypatch, "fast", raw)
    assert "grads_graph.dot" in line


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda data: data["metadata"].update(runs="a string"), "metadata.runs is 'a string', not a list"),
        (lambda data: data["edges"][0].update(target="resid_9.9"), "names the node resid_9.9"),
        (lambda data: data["nodes"][0].update(activation=1e400), "not a finite number"),
    ],
)
def test_a_stored_graph_json_of_the_wrong_shape_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads, change, words
):
    raw = _raw(tmp_path, tiny_model_dir, sae_templates)
    out = config_from_dict(raw).model_data_dir(raw["MODEL_DIR"])
    graph = Graph(metadata={"prompt": "p"})
    graph.add_node(Node.from_id("resid_1.0", activation=1.0))
    graph.add_node(Node.from_id("resid_2.0", activation=1.0))
    graph.add_edge("resid_1.0", "resid_2.0", 0.5)
    graph.add_run(run_record(graph.metadata, "r1"))
    data = json.loads(graph.to_json())
    change(data)
    out.mkdir(parents=True)
    (out / "grads_graph.json").write_text(json.dumps(data).replace("Infinity", "1e400"))
    line = _fail_script(tmp_path, capsys, monkeypatch, "fast", raw)
    assert "grads_graph.json" in line and words in line, line


def test_a_binary_pairs_file_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads
):
    (tmp_path / "pairs.jsonl").write_bytes(bytes(range(256)) * 4)
    raw = _raw(tmp_path, tiny_model_dir, sae_templates, PAIRS_FILE=str(tmp_path / "pairs.jsonl"))
    line = _fail_script(tmp_path, capsys, monkeypatch, "fast", raw)
    assert "PAIRS_FILE" in line and "not UTF-8 text" in line and "JSON Lines" in line


def test_an_output_folder_a_link_leads_out_of_data_dir_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads
):
    raw = _raw(tmp_path, tiny_model_dir, sae_templates)
    out = config_from_dict(raw).model_data_dir(raw["MODEL_DIR"])
    (tmp_path / "elsewhere").mkdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(tmp_path / "elsewhere")
    line = _fail_script(tmp_path, capsys, monkeypatch, "pipe", raw)
    assert "leads outside" in line and str(out) in line
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_an_output_folder_that_cannot_be_written_fails_before_the_model_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads
):
    (tmp_path / "a_file").write_text("")
    raw = _raw(tmp_path, tiny_model_dir, sae_templates, DATA_DIR=str(tmp_path / "a_file"))
    line = _fail_script(tmp_path, capsys, monkeypatch, "pipe", raw)
    assert "cannot be written" in line and "DATA_DIR" in line


def test_offline_a_model_missing_from_the_cache_fails_in_seconds_naming_it_and_the_cache(tmp_path, hub_cache):
    config = config_from_dict({"DATA_DIR": str(tmp_path / "data")})  # the default hub model and SAEs
    start = time.perf_counter()
    with pytest.raises(SparseCodingError) as info:
        preflight(config)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert (
        "HF_HUB_OFFLINE" in message
        and "openai-community/gpt2" in message
        and str(tmp_path / "hub") in message
    )


def test_offline_a_missing_sae_is_named_once_with_its_repo(tmp_path, hub_cache, tiny_model_dir):
    hub_cache("openai-community/gpt2", tiny_model_dir, "")
    config = config_from_dict({"DATA_DIR": str(tmp_path / "data"), "ACTS_LAYERS_SLICE": "1:2"})
    with pytest.raises(SparseCodingError) as info:
        preflight(config, sites=("resid",))
    message = str(info.value)
    assert message.count("gpt2-small-resid-post-v5-32k layer 1") == 1
    assert "jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs" in message
    assert "attn" not in message


def test_without_network_a_missing_model_fails_in_seconds(tmp_path, unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(SparseCodingError, match="cannot be reached"):
        preflight(config_from_dict({"DATA_DIR": str(tmp_path / "data")}))
    assert time.perf_counter() - start < 5


def test_a_run_whose_files_are_all_there_passes(tmp_path, tiny_model_dir, sae_templates, make_config):
    preflight(make_config(), graph_files=("g.dot", "g.svg"), min_prompt_tokens=2)


@pytest.mark.parametrize("script", ["pipe", "fast", "hist"])
def test_offline_a_missing_model_fails_before_torch_is_even_imported(tmp_path, script):
    import os
    import subprocess

    (tmp_path / "c.yaml").write_text("DATA_DIR: out\nDATASET: d.txt\n")
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(REPO / "sparse_coding" / f"{script}.py"),
            "--config",
            "c.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "openai-community/gpt2" in errors[0] and str(tmp_path / "hub") in errors[0]
    imported = {
        line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" not in imported


def test_a_too_short_prompt_fails_before_torch_is_imported(tmp_path, tiny_model_dir, sae_templates):
    import subprocess

    raw = _raw(tmp_path, tiny_model_dir, sae_templates, PROMPT="a", PREPEND_BOS=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "sparse_coding" / "fast.py"), "--config", "c.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1 and "needs at least 2" in done.stderr
    imported = {
        line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" not in imported and "transformers" not in imported


def _sae_mb(d_sae: int, d_in: int = 768) -> float:
    """sae_weights.safetensors of a float32 SAE: W_enc, W_dec, b_enc, b_dec."""
    return 4 * (2 * d_in * d_sae + d_sae + d_in) / 1e6


def test_offline_one_message_lists_every_download_with_sizes_and_the_demo(tmp_path, hub_cache):
    from sparse_coding.models.sae_sources import RELEASES

    with pytest.raises(SparseCodingError) as info:
        preflight(config_from_dict({"DATA_DIR": str(tmp_path / "data")}))  # default model, SAEs, 9:12
    message = str(info.value)
    assert "lacks 10 of the downloads" in message and "openai-community/gpt2" in message
    defaults = ("gpt2-small-resid-post-v5-32k", "gpt2-small-attn-out-v5-32k", "gpt2-small-mlp-out-v5-32k")
    for release in defaults:
        for layer in (9, 10, 11):
            assert f"{release} layer {layer}" in message
            assert f"'{RELEASES[release].folder.format(layer=layer)}/*'" in message  # in its hf command
    # GPT-2 small's weights (~550 MB) and nine float32 SAEs, 32768 latents wide.
    total_gb = (550 + 9 * _sae_mb(32768)) / 1000
    assert f"about {total_gb:.1f} GB" in message
    assert "hf download openai-community/gpt2 config.json" in message
    assert "demo_config.yaml" in message


def test_offline_a_cached_model_config_without_its_weights_is_still_a_missing_download(
    tmp_path, hub_cache, tiny_model_dir
):
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    hub_cache("openai-community/gpt2", only_config, "")
    config = config_from_dict(
        {"DATA_DIR": str(tmp_path / "data"), "ACTS_LAYERS_SLICE": "1:2", "ATTN_SAES": None}
    )
    with pytest.raises(SparseCodingError) as info:
        preflight(config)
    message = str(info.value)
    assert "model openai-community/gpt2" in message and "gpt2-small-resid-post-v5-32k layer 1" in message
    assert "lacks 3 of the downloads" in message  # the model, resid 1, mlp 1: all at once


@pytest.mark.parametrize("script", ["pipe", "fast", "hist", "val"])
def test_a_config_with_transcoders_alone_is_valid_and_serves_trace_only(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads, script
):
    from transcoder_files import write_set

    template, _ = write_set(tmp_path / "tc", "dunefsky", 3)
    unset = {"RESID_SAES": None, "ATTN_SAES": None, "MLP_SAES": None}
    (tmp_path / "d.txt").write_text("the sky is blue\nthe sun is hot\n")
    raw = _raw(
        tmp_path,
        tiny_model_dir,
        sae_templates,
        **unset,
        TRANSCODERS=template,
        DATASET=str(tmp_path / "d.txt"),
    )
    config_from_dict(raw)  # valid: trace.py runs on it (tests/test_trace_script.py)
    raw["VALIDATION_DIMS_PINNED"] = {"resid_0": [1]}
    line = _fail_script(tmp_path, capsys, monkeypatch, script, raw)
    assert "unset: this script splices SAEs there" in line and "trace.py only" in line, line
    with pytest.raises(SparseCodingError, match="TRANSCODERS are all unset"):
        config_from_dict(raw | {"TRANSCODERS": None})


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"TRACE_PROMPT": "x " * 80}, "more than the model's context of 64 positions"),
        ({"PROMPT": "x " * 80, "TRACE_PROMPT": None}, "PROMPT 'x x"),
    ],
)
def test_trace_checks_the_prompt_it_explains_before_anything_loads(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, nothing_loads, overrides, words
):
    from transcoder_files import write_set

    import sparse_coding.pipelines.trace as trace

    monkeypatch.setattr(trace, "load_model", nothing_loads_either)
    template, _ = write_set(tmp_path / "tc", "dunefsky", 3)
    raw = _raw(tmp_path, tiny_model_dir, sae_templates, TRANSCODERS=template, **overrides)
    line = _fail_script(tmp_path, capsys, monkeypatch, "trace", raw)
    assert words in line, line


def nothing_loads_either(*args, **kwargs):
    raise AssertionError("the model was loaded before the failing check")
