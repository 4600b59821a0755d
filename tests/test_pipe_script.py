"""pipe.py end to end as a user runs it: a subprocess on the tiny model."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from sparse_coding.graphs.conventions import sentences

SCRIPT = Path(__file__).resolve().parents[1] / "sparse_coding" / "pipe.py"


def _write_config(tmp_path, tiny_model_dir, sae_templates, **overrides) -> Path:
    config = {
        "MODEL_DIR": str(tiny_model_dir),
        "RESID_SAES": sae_templates["resid"],
        "ATTN_SAES": None,
        "MLP_SAES": None,
        "ACTS_LAYERS_SLICE": "0:3",
        "DATA_DIR": str(tmp_path / "data"),
        "DEVICE": "cpu",
        "NEURONPEDIA": False,
        "THRESHOLD_EXP": -1.0,
        "PROMPT": "When Mary and John went to the store, John gave a drink to",
    } | overrides
    path = tmp_path / "tmp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config_path: Path) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(config_path), "-q"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=config_path.parent,
    )


def test_pipe_writes_dot_json_and_svg(tmp_path, tiny_model_dir, sae_templates):
    done = _run(_write_config(tmp_path, tiny_model_dir, sae_templates))
    assert done.returncode == 0, done.stderr
    # The process ends without Python's teardown (cli.run_as_program): its piped stdout still arrives.
    assert done.stdout.startswith("pipe.py: ") and "cognition_graph.dot" in done.stdout
    out = next((tmp_path / "data").iterdir())
    assert (out / "cognition_graph.dot").is_file() and (out / "cognition_graph.svg").is_file()
    graph = json.loads((out / "cognition_graph.json").read_text())
    assert graph["edges"] and all(abs(e["effect"]) > 0.5 for e in graph["edges"])
    assert graph["metadata"]["summary"].startswith("effects plotted out of collected: ~")
    (run,) = graph["metadata"]["runs"]
    assert run["sign_convention"] == sentences("pipe.py", run["config"])
    assert "act_d(clean) - act_d(u zero-ablated)" in run["sign_convention"]["edge"]
    assert "effect=" in (out / "cognition_graph.dot").read_text()
    phases = run["phases"]
    expected = [
        "preflight",
        "import",
        "model load",
        "SAE load",
        "compute: ablation graph",
        "labels: contexts",
    ]
    assert list(phases)[:6] == expected
    assert all(seconds >= 0 for seconds in phases.values())
    page = (out / "cognition_graph.html").read_text(encoding="utf-8")  # the viewer, beside the image
    assert all(node["id"] in page for node in graph["nodes"])
    svg = ET.parse(out / "cognition_graph.svg").getroot()
    drawn = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")).replace("\xa0", " ")
    assert "act_d(clean) - act_d(u zero-ablated)" in drawn  # the legend of pipe.py's sign convention


def test_a_bad_config_exits_nonzero_with_one_paragraph_and_no_traceback(
    tmp_path, tiny_model_dir, sae_templates
):
    done = _run(_write_config(tmp_path, tiny_model_dir, sae_templates, DIMS_PINNED={0: 10_000}))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "DIMS_PINNED" in done.stderr and "0..63" in done.stderr
