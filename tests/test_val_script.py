"""val.py end to end: a subprocess on the tiny model with a temporary YAML config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sparse_coding" / "val.py"
TEXTS = ["The quick brown fox jumps", "1 2 3", "When Mary and John went to the store"]


@pytest.fixture
def write_config(tmp_path, tiny_model_dir, sae_templates):
    """write_config(**keys) -> path of a YAML config for the tiny model."""

    def write(**keys) -> Path:
        values = {
            "MODEL_DIR": str(tiny_model_dir),
            "RESID_SAES": sae_templates["resid"],
            "ATTN_SAES": sae_templates["attn"],
            "MLP_SAES": sae_templates["mlp"],
            "ACTS_LAYERS_SLICE": "0:3",
            "DATA_DIR": str(tmp_path / "data"),
            "DEVICE": "cpu",
            "NEURONPEDIA": False,
            "LOGIT_TOKENS": 3,
            "PROMPT": "When Mary and John went to the store, John gave a drink to",
        } | keys
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


def run_val(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def stored_report(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "data").glob("*/validation.json")
    return json.loads(path.read_text())


def test_val_prints_the_report_and_writes_validation_json_over_a_dataset(tmp_path, write_config):
    dataset = tmp_path / "texts.txt"
    dataset.write_text("\n".join(TEXTS) + "\n")
    config = write_config(
        VALIDATION_DIMS_PINNED={0: [1, 2], "attn_1": [3], "mlp_2": [4, 5]}, DATASET=str(dataset), BATCH_SIZE=2
    )
    done = run_val(str(SCRIPT), "--config", str(config), "-q")

    assert done.returncode == 0, done.stderr
    for words in (
        "base (clean) top tokens",
        "largest increases",
        "largest decreases",
        "altered (ablated) top tokens",
        "Mean cross-entropy",
        "KL(clean || ablated)",
        "faithfulness =",
        "completeness =",
        "baseline: mean ablation",
        "M = the model with every SAE site of the slice spliced (9: ",
        "errors: SAE error terms kept at every site",
    ):
        assert words in done.stdout
    report = stored_report(tmp_path)
    assert report["circuit"] == {"resid_0": [1, 2], "attn_1": [3], "mlp_2": [4, 5]}
    assert report["n_sequences"] == len(TEXTS)
    assert set(report["metric"]) == {"full", "circuit", "without_circuit", "empty"}
    assert report["ce_clean"] == pytest.approx(report["metric"]["full"])
    assert report["config"]["DATASET"] == str(dataset)
    assert len(report["next_token"]["clean_top"]) == 3


def test_val_from_graph_validates_the_feature_nodes_of_a_hand_written_graph(tmp_path, write_config):
    graph = {
        "nodes": [
            {"id": "resid_1.7", "site": "resid", "layer": 1, "feature": 7},
            {"id": "mlp_2.3", "site": "mlp", "layer": 2, "feature": 3},
            {"id": "mlp_error_2", "site": "mlp", "layer": 2, "feature": None},
        ],
        "edges": [{"source": "resid_1.7", "target": "mlp_2.3", "effect": 0.5}],
        "metadata": {},
    }
    graph_path = tmp_path / "graph.json"
    graph_path.write_text(json.dumps(graph))
    config = write_config()  # no VALIDATION_DIMS_PINNED: the graph is the circuit
    done = run_val(
        "-m",
        "sparse_coding.val",
        "--config",
        str(config),
        "--from-graph",
        str(graph_path),
        "-q",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert f"graph file {graph_path}" in done.stdout
    report = stored_report(tmp_path)
    assert report["circuit"] == {"mlp_2": [3], "resid_1": [7]}
    assert report["circuit_errors"] == ["mlp_2"]
    assert report["n_sequences"] == 1


def test_bad_pins_exit_non_zero_with_one_paragraph_and_no_traceback(tmp_path, write_config):
    config = write_config(VALIDATION_DIMS_PINNED={"attn_1": [3, 999]})
    done = run_val("val.py", "--config", str(config), "-q", cwd=REPO / "sparse_coding")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (message,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "'attn_1' index 999 (width 64, valid 0..63)" in message
    assert not list((tmp_path / "data").glob("*/validation.json"))
