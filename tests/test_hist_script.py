"""hist.py as a researcher runs it: the three ways to start it, clean exits, its files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sparse_coding" / "hist.py"


@pytest.fixture
def write_config(make_config, tmp_path):
    """write_config(**overrides) -> path of a YAML config for the tiny model."""

    def write(**overrides) -> Path:
        values = make_config(ACTS_LAYERS_SLICE="1:3", NUM_CLUSTERS=3, **overrides).to_metadata()
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


def run_hist(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_jsonl(path: Path, column: str, n: int = 12) -> Path:
    texts = [f"Sequence {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(n)]
    path.write_text("".join(json.dumps({column: text}) + "\n" for text in texts))
    return path


def test_without_a_dataset_it_says_so_exits_zero_and_writes_nothing(write_config, tmp_path):
    config = write_config(DATASET=None)

    done = run_hist(["hist.py", "--config", str(config)], cwd=REPO / "sparse_coding")

    assert done.returncode == 0, done.stderr
    assert "DATASET is unset" in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_dataset_without_the_text_column_exits_nonzero_with_one_paragraph(write_config, tmp_path):
    config = write_config(DATASET=str(write_jsonl(tmp_path / "texts.jsonl", column="body")))

    done = run_hist([str(SCRIPT), "--config", str(config), "--quiet"], cwd=tmp_path)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'text'" in errors[0] and "body" in errors[0], done.stderr
    assert not list((tmp_path / "data").rglob("thresholds.*"))


def test_as_a_module_it_caches_thresholds_for_every_site(write_config, tmp_path):
    config = write_config(DATASET=str(write_jsonl(tmp_path / "texts.jsonl", column="text")))

    done = run_hist(["-m", "sparse_coding.hist", "--config", str(config)], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    (cache,) = (tmp_path / "data").rglob("thresholds.safetensors")
    thresholds = load_file(str(cache))
    assert set(thresholds) == {f"{site}_{layer}" for site in ("resid", "attn", "mlp") for layer in (1, 2)}
    assert all(values.shape == (64,) for values in thresholds.values())
    metadata = json.loads((cache.parent / "thresholds.json").read_text())
    assert metadata["dataset"]["NUM_SEQUENCES_EVALED"] == 100 and metadata["n_sequences"] == 12
    assert metadata["cluster"]["hook"] == "blocks.1.hook_resid_pre"
