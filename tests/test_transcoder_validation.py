"""val.py and steer.py on transcoder features: the numbers against plain hooks, the demo end to end.

The reference mean-ablates with hooks on the un-spliced model written here:
each feature's mean activation over every token (read from h_mid before
``ln_2`` by the layout's formula), then MLP T's output plus
``(mean - f) @ W_dec[S -> T]`` over the ablated features of every layer S
that writes to T, one sequence at a time; the error terms stay (the MLP's own
output is never replaced).
"""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import D_MODEL
from transcoder_files import D_TC, SPARSIFY_K, write_set

from sparse_coding.algorithms.validation import validate_circuit
from sparse_coding.config import config_from_dict
from sparse_coding.errors import ConfigError
from sparse_coding.models.gpt2 import load_model
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.corpus import iter_batches
from sparse_coding.transcoders.loading import load_transcoders

N_LAYERS = 3
TEXTS = ["When Mary and John went to the store", "The quick brown fox", "1 2 3 4 5 6 7"]
REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"
TRUTH = json.loads((REPO / "sparse_coding" / "demo" / "circuit.json").read_text())


def acts_of(layout, w, h):
    if layout == "sparsify_clt":
        top = torch.relu(h @ w["W_enc"] + w["b_enc"]).topk(SPARSIFY_K, dim=-1)
        return torch.zeros(*h.shape[:-1], D_TC, dtype=h.dtype).scatter(-1, top.indices, top.values)
    x = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
    return torch.relu(x @ w["W_enc"] + w["b_enc"])


def plain_run(model, layout, weights, ids, ablate=None, means=None, record=None):
    """log p (pos, vocab) of one sequence; `ablate`: layer -> (d_tc,) bool of features set to `means`."""
    h_mid, pending = {}, {}

    def on_mlp(layer):
        def hook(module, args, out):
            f = acts_of(layout, weights[layer], h_mid[layer][0])
            if record is not None:
                record[layer] = record.get(layer, 0) + f.sum(0)
            if ablate is not None:
                change = torch.where(ablate[layer], means[layer] - f, 0 * f)
                for target in range(layer, N_LAYERS) if layout == "sparsify_clt" else [layer]:
                    rows = weights[target]["W_dec"][(layer * D_TC if layout == "sparsify_clt" else 0) :][
                        :D_TC
                    ]
                    pending[target] = pending.get(target, 0) + change @ rows
            return out + pending.pop(layer, 0)

        return hook

    handles = []
    for layer, block in enumerate(model.transformer.h):
        handles.append(block.ln_2.register_forward_pre_hook(lambda m, a, i=layer: h_mid.__setitem__(i, a[0])))
        handles.append(block.mlp.register_forward_hook(on_mlp(layer)))
    try:
        with torch.no_grad():
            return F.log_softmax(model(ids[None])[0], dim=-1)
    finally:
        for handle in handles:
            handle.remove()


def plain_ce(model, layout, weights, sequences, ablate=None, means=None):
    runs = [plain_run(model, layout, weights, ids, ablate, means) for ids in sequences]
    nll = sum(
        float(-lp[:-1].gather(-1, ids[1:, None]).sum()) for lp, ids in zip(runs, sequences, strict=True)
    )
    return nll / sum(len(ids) - 1 for ids in sequences)


@pytest.mark.parametrize("layout", ["dunefsky", "sparsify_clt"], ids=["per-layer", "cross-layer"])
def test_faithfulness_terms_equal_plain_hook_mean_ablations(tmp_path, tiny_model_dir, layout):
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float64)
    template, weights = write_set(tmp_path, layout, N_LAYERS)
    weights = [{k: v.double() for k, v in w.items()} for w in weights]
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    spliced = SplicedModel(model, [], transcoders=tcs)
    batches = list(iter_batches(TEXTS, tokenizer, batch_size=2, max_len=32, prepend_bos=True))
    sequences = [
        ids[mask.bool()] for b in batches for ids, mask in zip(b.input_ids, b.attention_mask, strict=True)
    ]
    kind = "clt" if layout == "sparsify_clt" else "tc"
    circuit = {f"{kind}_0": [1, 3], f"{kind}_2": [5]}
    result = validate_circuit(spliced, batches, circuit=circuit)

    record = {}
    for ids in sequences:
        plain_run(model, layout, weights, ids, record=record)
    means = {layer: total / sum(map(len, sequences)) for layer, total in record.items()}
    inside = {layer: torch.zeros(D_TC, dtype=torch.bool) for layer in range(N_LAYERS)}
    for key, features in circuit.items():
        inside[int(key.split("_")[1])][features] = True
    variants = {
        "full": None,
        "circuit": {layer: ~mask for layer, mask in inside.items()},
        "without_circuit": inside,
        "empty": {layer: torch.ones_like(mask) for layer, mask in inside.items()},
    }
    for name, ablate in variants.items():
        expected = plain_ce(model, layout, weights, sequences, ablate, means)
        assert result.metric[name] == pytest.approx(expected, rel=1e-6), name
    assert result.metric["empty"] != pytest.approx(result.metric["full"], abs=1e-3)  # ablating matters
    assert result.sites == [f"{kind}_{layer}" for layer in range(N_LAYERS)]


# ---------------------------------------------------------------- the demo, end to end


def demo_config(data_dir: Path, **overrides):
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    paths = ("MODEL_DIR", "DATASET", "RESID_SAES", "ATTN_SAES", "MLP_SAES", "TRANSCODERS")
    raw |= {key: os.path.normpath(DEMO_CONFIG.parent / raw[key]) for key in paths}
    return config_from_dict(raw | {"DATA_DIR": str(data_dir), "MAX_NEW_TOKENS": 2} | overrides)


@pytest.fixture(scope="module")
def demo_trace(tmp_path_factory):
    """The demo's trace.py graph file, and the config that made it."""
    from sparse_coding.pipelines.trace import run_trace

    config = demo_config(tmp_path_factory.mktemp("trace"))
    run_trace(config)
    return config, config.model_data_dir(config.MODEL_DIR) / "trace_graph.json"


def run_steer(config, **args):
    from sparse_coding.cli.steer import main

    defaults = {"phases": PhaseTimer(), "from_graph": None, "node": None, "top": None, "curve": False}
    main(config, argparse.Namespace(**(defaults | {"set": None, "scale": None, "add": None} | args)))
    return json.loads((config.model_data_dir(config.MODEL_DIR) / "steering.json").read_text())


def p_hot(report, which: str) -> float:
    step = report["sequences"][0]["steps"][0]
    assert step["token"] == TRUTH["target"]
    return step[which]


def test_val_of_the_demo_trace_graph_recovers_the_planted_path_whole(demo_trace):
    from sparse_coding.cli.val import main

    config, graph = demo_trace
    main(
        config,
        argparse.Namespace(phases=PhaseTimer(), from_graph=graph, run=None, config_given=True, resume=False),
    )
    report = json.loads((config.model_data_dir(config.MODEL_DIR) / "validation.json").read_text())
    ends = {end for edge in TRUTH["trace"]["edges"] for end in (edge["source"], edge["target"])}
    planted = {end.split("@")[0] for end in ends if end.startswith("tc_")}
    assert {f"{k}.{i}" for k, dims in report["circuit"].items() for i in dims} == planted
    assert report["sites"] == ["tc_0", "tc_1", "tc_2"] and report["circuit_errors"] == []
    assert report["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert report["completeness"] == pytest.approx(0.0, abs=1e-4)


def test_steering_a_planted_transcoder_feature_off_takes_hot_away(demo_trace):
    config, graph = demo_trace
    says_hot = next(
        node for node, name in TRUTH["trace"]["transcoder_features"].items() if name == "says_hot"
    )
    report = run_steer(config, node=[says_hot], set=0.0)
    assert p_hot(report, "p_steered") < 0.2 * p_hot(report, "p_clean")
    from_graph = run_steer(config, from_graph=graph, top=2)
    assert [edit["node"] for edit in from_graph["interventions"]] == ["tc_0.0", "tc_1.0"]
    assert p_hot(from_graph, "p_steered") < 0.2 * p_hot(from_graph, "p_clean")


@pytest.mark.parametrize(
    ("overrides", "node", "words"),
    [
        ({}, "clt_1.0", ["per-layer transcoders", "'tc_{layer}.{index}'"]),
        ({}, "tc_1.99", ["8 features per layer", "0..7"]),
        ({"VALIDATION_ERRORS": "ablate"}, None, ["VALIDATION_ERRORS", "keep"]),
    ],
)
def test_a_transcoder_node_that_the_set_cannot_hold_is_named(demo_trace, overrides, node, words):
    from sparse_coding.cli.val import main

    config, graph = demo_trace
    config = demo_config(config.DATA_DIR, **overrides)
    with pytest.raises(ConfigError) as info:
        if node is None:
            main(
                config,
                argparse.Namespace(
                    phases=PhaseTimer(), from_graph=graph, run=None, config_given=True, resume=False
                ),
            )
        else:
            run_steer(config, node=[node], set=0.0)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_a_checkpoint_knows_a_transcoder_file_edited_between_a_kill_and_resume(tmp_path, tiny_model_dir):
    """A run's checkpoint fingerprint holds each transcoder layer's files, so --resume refuses a checkpoint
    made with other weights at the same TRANSCODERS source."""
    from sparse_coding.files.cache import fingerprint_differences
    from sparse_coding.pipelines.resume import run_fingerprint

    model, _ = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    template, _ = write_set(tmp_path, "dunefsky", N_LAYERS)

    def fingerprint():
        tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float32)
        spliced = SplicedModel(model, [], transcoders=tcs)
        return run_fingerprint(demo_config(tmp_path / "data"), spliced, "val.py", {}), tcs

    before, tcs = fingerprint()
    assert fingerprint_differences(before, fingerprint()[0]) == []
    edited = tcs.files[1][0]
    edited.write_bytes(edited.read_bytes())  # the same bytes, written again: a new mtime
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    differences = fingerprint_differences(before, fingerprint()[0])
    assert differences and any("tc_1" in line for line in differences), differences
