"""What every run says: --help at once (no torch) with outputs, keys and README section."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("pipe", "fast", "val", "hist", "steer", "trace")


def _help(script: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "sparse_coding" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_torch_and_names_outputs_keys_and_its_readme_section(script):
    done = _help(script)
    assert done.returncode == 0, done.stderr
    imported = {
        line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    assert not {"torch", "transformers", "safetensors"} & imported
    text = done.stdout
    assert "writes (under DATA_DIR/<model>/)" in text and "config keys that matter" in text
    section = re.search(r'README: section "(.+)"', text)[1]
    assert f"### {section}" in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_closing_line_names_no_image_when_graphviz_is_missing(make_config, monkeypatch, capsys):
    """Without dot the image is not written, so the summary must not name it."""
    from sparse_coding import METRICS, GraphOptions, token_batch
    from sparse_coding.algorithms.attribution_graph import gradient_graph
    from sparse_coding.models.gpt2 import tokenize_prompt
    from sparse_coding.pipelines.loading import load_spliced_model
    from sparse_coding.pipelines.publish import publish_graph

    config = make_config(ACTS_LAYERS_SLICE="0:1", NUM_DOWN_NODES=1, NUM_UP_NODES=1)
    spliced, tokenizer = load_spliced_model(config)
    batch = token_batch(tokenize_prompt(tokenizer, config.PROMPT, prepend_bos=True))
    options = GraphOptions(METRICS["cross_entropy"], num_down_nodes=1, num_up_nodes=1)
    graph = gradient_graph(spliced, [batch], options)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "dot" else real_which(name))
    line = publish_graph(
        graph, config, spliced, tokenizer, dot_name="g.dot", image_name="g.svg", script="fast.py"
    )
    out = config.model_data_dir(config.MODEL_DIR)
    assert not (out / "g.svg").exists() and (out / "g.dot").exists()
    assert "g.svg" not in line and "g.json" in line


def test_hist_prints_one_summary_line_when_there_is_nothing_to_do(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("DATASET: null\n")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "sparse_coding" / "hist.py"), "--config", str(config), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip().splitlines() == [
        "hist.py: DATASET is unset; nothing was written"
    ]
