"""steer.py end to end on the planted-circuit demo, its bad-input errors, and --from-graph.

Expectations come from sparse_coding/demo/circuit.json only: a circuit
feature with effect_on_target +1 raises p("hot") after "... the sun is",
so setting it to 0 lowers p("hot") and adding its decoder row raises it; a
distractor changes nothing there.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_coding.cli import run_script
from sparse_coding.config import Config, config_from_dict
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.pipelines.steer_report import curve_images
from sparse_coding.runtime.phases import PhaseTimer

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"
TRUTH = json.loads((REPO / "sparse_coding" / "demo" / "circuit.json").read_text())
RELATIVE_KEYS = ("MODEL_DIR", "DATASET", "RESID_SAES", "ATTN_SAES", "MLP_SAES")


def demo_raw(data_dir: Path, **overrides) -> dict:
    """demo_config.yaml's keys with its paths made absolute (they are relative to its folder) and
    DATA_DIR moved."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw |= {key: os.path.normpath(DEMO_CONFIG.parent / raw[key]) for key in RELATIVE_KEYS}
    return raw | {"DATA_DIR": str(data_dir), "MAX_NEW_TOKENS": 2} | overrides


def run_steer(config: Config, **args) -> None:
    from sparse_coding.cli.steer import main

    defaults = {"phases": PhaseTimer(), "from_graph": None, "node": None, "top": None, "curve": False}
    defaults |= {"set": None, "scale": None, "add": None}
    main(config, argparse.Namespace(**(defaults | args)))


def output(config: Config, name: str) -> dict:
    return json.loads((config.model_data_dir(config.MODEL_DIR) / name).read_text())


def first_step(tmp_path: Path, steer: list[dict]) -> dict:
    config = config_from_dict(demo_raw(tmp_path, STEER=steer))
    run_steer(config)
    return output(config, "steering.json")["sequences"][0]["steps"][0]


def test_the_demo_steers_on_the_text_before_hot():
    config = config_from_dict(demo_raw(Path("unused")))
    assert config.interp_source == "dataset" and config.NUM_SEQUENCES_INTERPED == 1
    assert TRUTH["prompt"].startswith(Path(config.DATASET).read_text().splitlines()[0])


def test_setting_the_sun_copier_to_zero_lowers_p_hot_as_circuit_json_predicts(tmp_path):
    assert TRUTH["features"]["attn_0.4"]["effect_on_target"] == 1
    step = first_step(tmp_path, [{"node": "attn_0.4", "set": 0.0}])
    assert step["token"] == TRUTH["target"]
    assert step["p_steered"] < step["p_clean"] - 0.5
    assert step["fell"][0]["token"] == TRUTH["target"] and step["kl"] > 1


def test_adding_the_says_hot_direction_raises_p_hot(tmp_path):
    assert TRUTH["features"]["mlp_1.6"]["effect_on_target"] == 1
    step = first_step(tmp_path, [{"node": "mlp_1.6", "add": 2.0}])
    assert step["token"] == TRUTH["target"] and step["p_steered"] > step["p_clean"]


def test_a_distractor_set_to_zero_changes_nothing_at_the_last_position(tmp_path):
    assert TRUTH["features"]["resid_0.9"]["role"] == "distractor"
    step = first_step(tmp_path, [{"node": "resid_0.9", "set": 0.0}])
    assert step["p_steered"] == pytest.approx(step["p_clean"], abs=1e-6)


def test_the_response_curve_of_mlp_0_4_to_mlp_1_6_is_monotone_and_drawn(tmp_path):
    curve = {"node": "mlp_0.4", "from": 0.0, "to": 2.0, "steps": 9, "watch": ["mlp_1.6"], "answer": "hot"}
    config = config_from_dict(demo_raw(tmp_path, CURVE=curve))
    run_steer(config, curve=True)
    data = output(config, "response_curve.json")
    (says_hot,) = data["watched"]["mlp_1.6"]
    (log_p,) = data["answer_logprob"]
    assert data["values"] == pytest.approx([0.25 * i for i in range(9)])
    for series in (says_hot, log_p):
        assert all(b >= a for a, b in zip(series, series[1:], strict=False)) and series[-1] > series[0]
    folder = config.model_data_dir(config.MODEL_DIR)
    assert (folder / "response_curve.png").read_bytes().startswith(b"\x89PNG")
    svg = (folder / "response_curve.svg").read_bytes()
    assert b"mlp_1.6" in svg
    assert curve_images(data)["svg"] == svg  # the same curve, the same bytes (no date, no random ids)


def steer_error(tmp_path, capsys, monkeypatch, argv=(), **overrides) -> str:
    """The one-paragraph error of a steer.py run that must stop before the model loads."""
    import sparse_coding.pipelines.loading as loading
    from sparse_coding.cli import run

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_model", never)
    path = tmp_path / "steer.yaml"
    path.write_text(yaml.safe_dump(demo_raw(tmp_path, **overrides)))
    with pytest.raises(SystemExit) as info:
        run("steer", ["--config", str(path), "-q", *argv])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]  # log lines may precede it
    return line


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"STEER": [{"node": "attn_0.x", "set": 0}]}, ["unknown node", "attn_0.x"]),
        ({"STEER": [{"node": "tc_0.4@3", "set": 0}], "TRANSCODERS": None}, ["TRANSCODERS", "tc_0.4"]),
        ({"STEER": [{"node": "embed@3", "set": 0}]}, ["unknown node", "embed"]),
        ({"STEER": [{"node": "attn_0.99", "set": 0}]}, ["attn_0.99", "beyond its SAE", "0..7"]),
        ({"STEER": [{"node": "attn_0.4", "set": 0, "positions": [40]}]}, ["beyond the prompt", "-9..8"]),
        ({"STEER": [{"node": "attn_0.4@12", "add": 1}]}, ["beyond the prompt"]),
        ({"STEER": [{"node": "attn_0.4", "set": 0, "positions": "later"}]}, ["positions", "generated"]),
        ({"STEER": [{"node": "attn_0.4", "set": 0, "scale": 2}]}, ["exactly one of set, scale, add"]),
        ({"STEER": []}, ["Nothing to steer"]),
        ({"ATTN_SAES": None}, ["ATTN_SAES", "attn_0.4"]),
        ({"CURVE": {"node": "mlp_0.4", "steps": -3, "answer": "hot"}}, ["steps", "-3"]),
        ({"CURVE": {"node": "mlp_0.4", "answer": "hot hot"}}, ["answer", "2 tokens"]),
    ],
)
def test_bad_input_is_one_paragraph_before_anything_loads(tmp_path, capsys, monkeypatch, overrides, words):
    argv = ["--curve"] if "CURVE" in overrides else []
    line = steer_error(tmp_path, capsys, monkeypatch, argv, **overrides)
    assert line.startswith("error: ") and all(word in line for word in words), line


def test_graph_options_without_a_graph_are_an_error(tmp_path, capsys, monkeypatch):
    line = steer_error(tmp_path, capsys, monkeypatch, ["--top", "3", "--scale", "2"])
    assert "--from-graph" in line


def write_graph(path: Path) -> Path:
    graph = Graph()
    attributions = {"attn_0.4": -2.0, "mlp_1.6": 1.5, "resid_0.16": 0.5, "mlp_0.3": 0.1, "mlp_error_1": 9.0}
    for node_id, attribution in attributions.items():
        graph.add_node(Node.from_id(node_id, attribution=attribution))
    path.write_text(graph.to_json())
    return path


def test_from_graph_steers_its_strongest_features_and_watches_the_others(tmp_path):
    graph = write_graph(tmp_path / "grads_graph.json")
    config = config_from_dict(demo_raw(tmp_path / "out"))
    run_steer(config, from_graph=graph, top=2, scale=0.5)
    data = output(config, "steering.json")
    assert [(e["node"], e["kind"], e["value"]) for e in data["interventions"]] == [
        ("attn_0.4", "scale", 0.5),
        ("mlp_1.6", "scale", 0.5),
    ]
    assert data["watched"] == ["resid_0.16", "mlp_0.3"]
    assert set(data["sequences"][0]["activations"]) == {"attn_0.4", "mlp_1.6", "resid_0.16", "mlp_0.3"}
    assert data["sequences"][0]["activations"]["attn_0.4"]["steered_last_prompt"] == pytest.approx(
        0.5, abs=1e-3
    )


def test_python_m_sparse_coding_steer_runs_the_demo_and_writes_steering_json(tmp_path):
    path = tmp_path / "steer.yaml"
    path.write_text(yaml.safe_dump(demo_raw(tmp_path / "out")))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "sparse_coding.steer", "--config", str(path), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "clean:" in done.stdout and "steered:" in done.stdout and "steering.json" in done.stdout
    files = list((tmp_path / "out").rglob("steering.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["sign_convention"]


def test_a_bad_steer_key_names_the_key_through_the_wrapper(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("STEER: {node: resid_9.1}\n")
    with pytest.raises(SystemExit):
        run_script(lambda config, args: None, "probe", argv=["--config", str(path), "-q"])
    assert "STEER" in capsys.readouterr().err


def test_node_on_the_command_line_replaces_steer(tmp_path):
    config = config_from_dict(demo_raw(tmp_path))
    run_steer(config, node=["mlp_1.6", "attn_0.4@8", "mlp_1.6"], add=1.5)
    data = output(config, "steering.json")
    assert data["source"] == "--node"
    assert [(e["node"], e["kind"], e["value"], e["positions"]) for e in data["interventions"]] == [
        ("mlp_1.6", "add", 1.5, "all"),
        ("attn_0.4", "add", 1.5, [8]),
    ]


def test_the_viewers_commands_run_as_given(tmp_path):
    from sparse_coding.cli import run
    from sparse_coding.config.steering import FeatureEdit, steer_commands

    lines = dict(steer_commands("attn_0.4"))
    path = tmp_path / "steer.yaml"
    path.write_text(yaml.safe_dump(demo_raw(tmp_path)))
    command = lines["ablate"].split()
    assert command[:2] == ["sparse-coding", "steer"]
    run(command[1], [*command[2:], "--config", str(path), "-q"])
    data = json.loads(next(tmp_path.rglob("steering.json")).read_text())
    assert [(e["node"], e["kind"], e["value"]) for e in data["interventions"]] == [("attn_0.4", "set", 0.0)]
    pasted = config_from_dict(demo_raw(tmp_path) | yaml.safe_load(lines["config"]))
    assert pasted.STEER == (FeatureEdit("attn_0.4", "set", 0.0),)
