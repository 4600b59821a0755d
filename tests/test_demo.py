"""The planted-circuit demo: the scripts recover what sparse_coding/demo/circuit.json says is there.

Expectations come from the documented truth only (features' roles and signs,
planted edges); the scripts run in-process on the committed demo files
through demo_config.yaml, writing under tmp_path.
"""

import argparse
import json
import random
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparse_coding.config import Config, config_from_dict
from sparse_coding.runtime.phases import PhaseTimer

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "sparse_coding" / "demo"
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"
TRUTH = json.loads((DEMO_DIR / "circuit.json").read_text())
FEATURES = TRUTH["features"]
CIRCUIT = {node for node, f in FEATURES.items() if f["role"] == "circuit"}


def demo_config(data_dir: Path, **overrides) -> Config:
    """demo_config.yaml (its paths read against its own folder) with DATA_DIR moved."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    return config_from_dict(raw | {"DATA_DIR": str(data_dir)} | overrides, source_path=DEMO_CONFIG)


def run(script: str, config: Config, **args) -> None:
    """A script's main() in-process, with the arguments its parser would give it."""
    module = __import__(f"sparse_coding.cli.{script}", fromlist=["main"])
    defaults = {
        "phases": PhaseTimer(),
        "new_graph": False,
        "allow_empty": False,
        "from_graph": None,
        "run": None,
        "resume": False,
    }
    module.main(config, argparse.Namespace(**(defaults | args)))


def grads_json(config: Config) -> str:
    """fast.py's canonical graph file name."""
    return Path(config.GRADS_DOT_FILE).with_suffix(".json").name


def output(config: Config, name: str) -> dict:
    return json.loads((config.model_data_dir(config.MODEL_DIR) / name).read_text())


def effect_sign(node: str) -> int:
    return FEATURES[node]["effect_on_target"]


# ------------------------------------------------------------------ the build


def test_build_reproduces_the_committed_files(tmp_path):
    from sparse_coding.demo.build import build

    build(tmp_path)
    committed = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed, "the build wrote nothing"
    for relative in committed:
        ours, theirs = DEMO_DIR / relative, tmp_path / relative
        assert ours.is_file(), f"{relative} is built but not committed"
        if relative.suffix == ".safetensors":
            a, b = load_file(str(ours)), load_file(str(theirs))
            assert a.keys() == b.keys()
            for name in a:
                torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7)
        elif relative.suffix == ".json":  # transformers writes its own version
            a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
            a.pop("transformers_version", None), b.pop("transformers_version", None)
            assert a == b, relative
        else:
            assert ours.read_bytes() == theirs.read_bytes(), relative


def test_demo_config_validates_the_documented_circuit():
    assert demo_config(Path("unused")).VALIDATION_DIMS_PINNED == _circuit_pins(CIRCUIT)


def test_demo_files_stay_small():
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file() and "output" not in p.parts)
    assert size < 5 * 2**20


# ------------------------------------------------------------------ fast.py


@pytest.fixture(scope="module")
def fast_graph(tmp_path_factory) -> dict:
    config = demo_config(tmp_path_factory.mktemp("fast"))
    run("fast", config)
    return output(config, grads_json(config))


def test_fast_finds_every_planted_edge_with_its_sign(fast_graph):
    effects = {(e["source"], e["target"]): e["effect"] for e in fast_graph["edges"]}
    for edge in TRUTH["direct_edges"]:
        key = (edge["source"], edge["target"])
        assert key in effects, f"planted edge {key} missing"
        # fast.py: positive = supports the answer through the downstream node
        expected = edge["sign"] * effect_sign(edge["target"])
        assert effects[key] * expected > 0, (key, effects[key], expected)


def test_fast_planted_edges_dominate_every_other_edge(fast_graph):
    planted = {(e["source"], e["target"]) for e in TRUTH["direct_edges"]}
    sizes = [abs(e["effect"]) for e in fast_graph["edges"] if (e["source"], e["target"]) in planted]
    others = [abs(e["effect"]) for e in fast_graph["edges"] if (e["source"], e["target"]) not in planted]
    assert max(others, default=0.0) < 1e-3 * min(sizes)


def test_fast_nodes_are_the_circuit_and_error_nodes_only(fast_graph):
    features = {n["id"] for n in fast_graph["nodes"] if n["feature"] is not None}
    assert features == CIRCUIT
    for node in fast_graph["nodes"]:
        if node["feature"] is not None:
            assert node["attribution"] * effect_sign(node["id"]) > 0, node


def test_planted_features_rank_first_by_attribution_at_their_sites(tmp_path):
    from sparse_coding import METRICS, load_spliced_model, token_batch, tokenize_prompt
    from sparse_coding.algorithms.attribution import node_attributions

    spliced, tokenizer = load_spliced_model(demo_config(tmp_path))
    batch = token_batch(tokenize_prompt(tokenizer, TRUTH["prompt"], prepend_bos=True))
    for key, attr in node_attributions(spliced, batch, metric=METRICS["cross_entropy"]).items():
        planted = [int(n.split(".")[1]) for n in CIRCUIT if n.startswith(f"{key}.")]
        ie = attr.feature_ie[0].abs()  # the one example
        ranked = ie.argsort(descending=True).tolist()
        assert sorted(ranked[: len(planted)]) == sorted(planted), key
        others = ie[ranked[len(planted) :]]
        assert (others == 0).all(), f"{key}: a non-circuit feature has attribution {others.max()}"


def test_fast_attribution_sign_matches_a_real_ablation(fast_graph, tmp_path):
    """Positive attribution = removing the feature raises the loss (checked by ablating it)."""
    from sparse_coding import load_spliced_model, tokenize_prompt, zero_ablation

    spliced, tokenizer = load_spliced_model(demo_config(tmp_path))
    tokens = tokenize_prompt(tokenizer, TRUTH["prompt"], prepend_bos=True)
    inputs, target = tokens[:, :-1], tokens[0, -1]

    def loss(targets: dict[str, torch.Tensor]) -> float:
        with torch.no_grad(), spliced.intervene(zero_ablation(targets)):
            return float(-spliced(inputs)[0, -1].log_softmax(-1)[target])

    clean = loss({})
    attributions = {n["id"]: n["attribution"] for n in fast_graph["nodes"]}
    for node in CIRCUIT:
        key, feature = node.split(".")
        everywhere = torch.tensor([[0, p, int(feature)] for p in range(inputs.shape[1])])
        raised = loss({key: everywhere}) - clean
        assert raised * attributions[node] > 0, (node, raised, attributions[node])


# ------------------------------------------------------------------ pipe.py


@pytest.fixture(scope="module")
def pipe_graph(tmp_path_factory) -> dict:
    config = demo_config(tmp_path_factory.mktemp("pipe"))
    run("pipe", config)
    return output(config, "cognition_graph.json")


def test_pipe_keeps_exactly_the_planted_resid_edges(pipe_graph):
    """No distractor edge (nor any unplanted one) passes the threshold."""
    drawn = {(e["source"], e["target"]) for e in pipe_graph["edges"]}
    assert drawn == {(e["source"], e["target"]) for e in TRUTH["resid_edges"]}


def test_pipe_edges_carry_the_planted_signs(pipe_graph):
    effects = {(e["source"], e["target"]): e["effect"] for e in pipe_graph["edges"]}
    for edge in TRUTH["resid_edges"]:
        # pipe.py: act_d(clean) - act_d(u ablated), positive when u raises d
        assert effects[(edge["source"], edge["target"])] * edge["sign"] > 0, edge


# ------------------------------------------------------------------ val.py

# Layer-norm coupling between features is ~1e-4 in the demo model. Measured:
# planted faithfulness 1 - 6e-7, completeness 2e-5; random circuits (5 seeds)
# |faithfulness| < 2e-6.
FAITHFUL_TOLERANCE = 1e-3
RANDOM_TOLERANCE = 1e-3


def _circuit_pins(nodes) -> dict[str, list[int]]:
    pins: dict[str, list[int]] = {}
    for node in nodes:
        key, feature = node.split(".")
        pins.setdefault(key, []).append(int(feature))
    return {key: sorted(features) for key, features in pins.items()}


def test_val_planted_circuit_is_faithful_and_complete(tmp_path):
    config = demo_config(tmp_path, VALIDATION_DIMS_PINNED=_circuit_pins(CIRCUIT))
    run("val", config, from_graph=None)
    report = output(config, "validation.json")
    assert report["faithfulness"] == pytest.approx(1.0, abs=FAITHFUL_TOLERANCE)
    assert report["completeness"] == pytest.approx(0.0, abs=FAITHFUL_TOLERANCE)


def test_val_random_circuit_of_the_same_size_is_not_faithful(tmp_path):
    sites = {node.split(".")[0] for node in CIRCUIT}
    others = sorted(n for n, f in FEATURES.items() if f["role"] != "circuit" and n.split(".")[0] in sites)
    chosen = random.Random(0).sample(others, len(CIRCUIT))
    config = demo_config(tmp_path, VALIDATION_DIMS_PINNED=_circuit_pins(chosen))
    run("val", config, from_graph=None)
    assert output(config, "validation.json")["faithfulness"] == pytest.approx(0.0, abs=RANDOM_TOLERANCE)


# ------------------------------------------------------------------ hist.py


def test_hist_thresholds_select_the_planted_features_as_down_nodes(tmp_path):
    """Features over hist.py's thresholds at the prompt's last token are the circuit's there."""
    from sparse_coding import load_spliced_model, record_codes, tokenize_prompt

    config = demo_config(tmp_path)
    run("hist", config)
    thresholds = load_file(str(config.model_data_dir(config.MODEL_DIR) / "thresholds.safetensors"))
    spliced, tokenizer = load_spliced_model(config)
    inputs = tokenize_prompt(tokenizer, TRUTH["prompt"], prepend_bos=True)[:, :-1]
    codes = {}
    with torch.no_grad(), spliced.intervene(record_codes(codes)):
        spliced(inputs)
    over = {
        f"{key}.{int(i)}"
        for key, code in codes.items()
        for i in (code.feats[0, -1] > thresholds[key]).nonzero().flatten()
    }
    assert over == {n for n in CIRCUIT if FEATURES[n]["at_last_position"]}

    run("fast", config)
    graph = output(config, grads_json(config))
    assert graph["metadata"]["runs"][-1]["down_node_selection"] == "thresholds"
    assert {n["id"] for n in graph["nodes"] if n["feature"] is not None} == CIRCUIT


# ------------------------------------------------------------------ the walkthrough


def test_walkthrough_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    namespace = runpy.run_path(str(DEMO_DIR / "walkthrough.py"))
    assert namespace["result"].faithfulness == pytest.approx(1.0, abs=FAITHFUL_TOLERANCE)


# ------------------------------------------------------------------ trace.py


@pytest.fixture(scope="module")
def trace_graph_json(tmp_path_factory) -> dict:
    config = demo_config(tmp_path_factory.mktemp("trace"))
    run("trace", config)
    return output(config, Path(config.TRACE_DOT_FILE).with_suffix(".json").name)


def test_trace_recovers_the_planted_path_from_sun_to_hot_with_its_signs(trace_graph_json):
    effects = {(e["source"], e["target"]): e["effect"] for e in trace_graph_json["edges"]}
    for edge in TRUTH["trace"]["edges"]:
        key = (edge["source"], edge["target"])
        assert key in effects, f"planted edge {key} missing"
        assert effects[key] * edge["sign"] > 0, (key, effects[key])


def damping_path(edge: dict) -> bool:
    """Whether a planted trace edge touches the light -> dim path that damps "hot"."""
    names = TRUTH["trace"]["transcoder_features"]
    return any(names.get(end.split("@")[0]) in ("light", "dim") for end in (edge["source"], edge["target"]))


def test_trace_at_the_default_threshold_keeps_the_main_path_only(tmp_path):
    config = demo_config(tmp_path, TRACE_NODE_THRESHOLD=Config().TRACE_NODE_THRESHOLD)
    run("trace", config)
    graph = output(config, Path(config.TRACE_DOT_FILE).with_suffix(".json").name)
    kept = {(e["source"], e["target"]) for e in graph["edges"]}
    planted = TRUTH["trace"]["edges"]
    assert {(e["source"], e["target"]) for e in planted if not damping_path(e)} == kept
    assert all(damping_path(e) for e in planted if (e["source"], e["target"]) not in kept)


def test_trace_keeps_only_planted_features_and_explains_hot_through_them(trace_graph_json):
    planted = {end for edge in TRUTH["trace"]["edges"] for end in (edge["source"], edge["target"])}
    features = {n["id"] for n in trace_graph_json["nodes"] if n["site"] == "tc"}
    assert features == {node for node in planted if node.startswith("tc_")}
    run = trace_graph_json["metadata"]["runs"][0]
    assert run["logit_targets"][0]["token"] == TRUTH["target"]
    # The transcoders are the MLPs: the error nodes carry (almost) nothing.
    assert run["replacement_score"] > 0.999 and run["completeness_score"] > 0.999
