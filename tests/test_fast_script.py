"""fast.py end to end: files written, merging across runs, clean errors."""

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import yaml
from conftest import tiny_config_dict

REPO = Path(__file__).resolve().parents[1]


def _write_config(tmp_path: Path, tiny_model_dir: Path, sae_templates: dict, **overrides) -> Path:
    raw = (
        tiny_config_dict(tmp_path, tiny_model_dir, sae_templates)
        | {
            "NUM_DOWN_NODES": 2,
            "NUM_UP_NODES": 2,
            "PROMPT": "When Mary and John went to the store, John gave a drink to Mary",
        }
        | overrides
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_fast_writes_dot_json_and_svg_and_a_second_prompt_merges_into_them(
    tmp_path, tiny_model_dir, sae_templates
):
    config = _write_config(tmp_path, tiny_model_dir, sae_templates)
    first = _run("sparse_coding/fast.py", "--config", str(config))
    assert first.returncode == 0, first.stderr
    out_dir = next((tmp_path / "data").iterdir())
    dot, js, svg = (out_dir / f"grads_graph.{ext}" for ext in ("dot", "json", "svg"))
    assert dot.exists() and svg.exists()
    ElementTree.parse(svg)
    graph = json.loads(js.read_text())
    assert graph["nodes"] and graph["edges"]
    assert all(isinstance(edge["effect"], float) for edge in graph["edges"])
    assert 'effect="' in dot.read_text()
    first_edges = {(e["source"], e["target"]) for e in graph["edges"]}

    config = _write_config(
        tmp_path, tiny_model_dir, sae_templates, PROMPT="The quick brown fox jumps over the lazy"
    )
    second = _run("-m", "sparse_coding.fast", "--config", str(config))
    assert second.returncode == 0, second.stderr
    merged = json.loads(js.read_text())
    merged_edges = [(e["source"], e["target"]) for e in merged["edges"]]
    assert len(merged_edges) == len(set(merged_edges)), "an edge measured again must not be duplicated"
    assert first_edges < set(merged_edges)
    assert len(merged["metadata"]["runs"]) == 2


def test_fast_runs_from_inside_the_package_folder(tmp_path, tiny_model_dir, sae_templates):
    config = _write_config(tmp_path, tiny_model_dir, sae_templates, ACTS_LAYERS_SLICE="1:3")
    result = _run("fast.py", "--config", str(config), cwd=REPO / "sparse_coding")
    assert result.returncode == 0, result.stderr
    assert "features explain ~" in result.stdout


def test_a_one_token_prompt_exits_with_one_paragraph_and_no_traceback(
    tmp_path, tiny_model_dir, sae_templates
):
    config = _write_config(tmp_path, tiny_model_dir, sae_templates, PROMPT="a", PREPEND_BOS=False)
    result = _run("sparse_coding/fast.py", "--config", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "PROMPT" in result.stderr.strip().splitlines()[-1]


def test_a_slice_outside_the_model_exits_with_a_message_naming_the_key(
    tmp_path, tiny_model_dir, sae_templates
):
    config = _write_config(tmp_path, tiny_model_dir, sae_templates, ACTS_LAYERS_SLICE="5:9")
    result = _run("sparse_coding/fast.py", "--config", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ACTS_LAYERS_SLICE" in result.stderr


def _pairs_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


PAIR = {
    "clean_prefix": "When Mary and John went to the store, John gave a drink",
    "patch_prefix": "When John and Mary went to the store, Mary gave a drink",
    "clean_answer": " to",
    "patch_answer": " the",
}


def test_fast_on_a_pairs_file_records_metric_baseline_examples_and_exact_check(
    tmp_path, tiny_model_dir, sae_templates
):
    rows = [
        PAIR,
        PAIR
        | {
            "clean_prefix": "The quick brown fox jumps over",
            "patch_prefix": "The quick brown dog jumps over",
        },
    ]
    config = _write_config(
        tmp_path,
        tiny_model_dir,
        sae_templates,
        PAIRS_FILE=str(_pairs_file(tmp_path, rows)),
        METRIC="logit_diff",
        BASELINE="patch",
        SELECTION="threshold",
        NODE_THRESHOLD=0.1,
        EDGE_THRESHOLD=0.05,
        NODE_ESTIMATOR="exact",
        IG_STEPS=2,
        BATCH_SIZE=1,
    )
    result = _run("sparse_coding/fast.py", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "correlation of the estimates with the exact effects" in result.stderr
    out_dir = next((tmp_path / "data").iterdir())
    metadata = json.loads((out_dir / "grads_graph.json").read_text())["metadata"]
    run = metadata["runs"][-1] if "runs" in metadata else metadata
    assert run["n_examples"] == 2 and run["metric"] == "logit_diff" and run["baseline"] == "patch"
    meaning = run["sign_convention"]["node attribution"]
    assert "logit difference" in meaning and "patch prompt" in meaning and "integrated-gradients" in meaning
    assert "|attribution| > 0.1" in run["sign_convention"]["nodes"]
    assert -1 <= run["exact"]["correlation"] <= 1
    checked = set(run["exact"]["effects"])
    assert {"resid_error_0", "attn_error_1", "mlp_error_2"} <= checked  # every site's error node
    assert any("_error_" not in node_id for node_id in checked)
    assert set(run["node_std"]) and all(value >= 0 for value in run["node_std"].values())


def test_a_pairs_file_row_with_a_multi_token_answer_exits_1_naming_the_row(
    tmp_path, tiny_model_dir, sae_templates
):
    rows = [PAIR, PAIR | {"clean_answer": " 1969 the first humans"}]
    config = _write_config(
        tmp_path, tiny_model_dir, sae_templates, PAIRS_FILE=str(_pairs_file(tmp_path, rows))
    )
    result = _run("sparse_coding/fast.py", "--config", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "PAIRS_FILE pairs.jsonl line 2 clean answer" in result.stderr
