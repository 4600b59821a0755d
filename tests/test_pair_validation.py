"""val.py on fast.py's examples: faithfulness with the graph's metric, against plain hooked forwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import hooks, node_value, tiny_config_dict

from sparse_coding.algorithms.feature_means import SiteMeans
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.algorithms.validation import pair_faithfulness
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.text.pairs import token_batch

REPO = Path(__file__).resolve().parents[1]


def test_pair_faithfulness_equals_plain_mean_ablated_forwards(tmp_path, tiny_model_dir, sae_templates):
    from sparse_coding.config import config_from_dict

    config = config_from_dict(
        tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {"DTYPE": "float64"}
    )
    spliced, _ = load_spliced_model(config)
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(1, spliced.model.config.vocab_size, (3, 8), generator=gen)
    patch = clean.clone()
    patch[:, -1] = torch.randint(1, spliced.model.config.vocab_size, (3,), generator=gen)
    batch = token_batch(clean, patch)
    circuit = {"resid_1": [2, 5, 9], "mlp_2": [4]}
    means = {  # val.py's M: every spliced site is mean-ablated outside the circuit
        key: torch.rand(spliced.by_key[key].sae.d_sae, generator=gen, dtype=torch.float64)
        for key in spliced.by_key
    }
    site_means = SiteMeans(means, {key: torch.zeros(spliced.model.config.n_embd) for key in means})
    metric = METRICS["logit_diff"]
    got = pair_faithfulness(spliced, [batch], circuit=circuit, metric=metric, means=site_means)

    def mean_ablated(key, keep_circuit):
        sae = spliced.by_key[key].sae
        chosen = torch.ones(sae.d_sae, dtype=torch.bool)
        if keep_circuit:
            chosen[circuit.get(key, [])] = False

        def ablate(out):
            value = node_value(sae, out)  # f * scale
            scale = value.new_ones(*out.shape[:-1], 1)
            if sae.cfg.normalize_activations == "layer_norm":
                centred = out - out.mean(-1, keepdim=True)
                scale = centred.std(-1, keepdim=True)
            target = means[key] * scale
            return out + ((target - value) * chosen) @ sae.W_dec

        return ablate

    def m(fns) -> float:
        with hooks(spliced.model, fns), torch.no_grad():
            logits = spliced.model(batch.input_ids)[:, -1]
        return float(metric.loss(logits, batch.answers, batch.patch_answers).mean())

    full = m({})
    with_circuit = m({key: mean_ablated(key, True) for key in means})
    empty = m({key: mean_ablated(key, False) for key in means})
    assert got.n_examples == 3
    assert (got.full, got.circuit, got.empty) == pytest.approx((full, with_circuit, empty), rel=1e-6)
    assert got.faithfulness == pytest.approx((with_circuit - empty) / (full - empty), rel=1e-6)


def test_val_from_a_fast_graph_reports_faithfulness_on_the_pairs_with_the_graphs_metric(
    tmp_path, tiny_model_dir, sae_templates
):
    pairs = tmp_path / "pairs.jsonl"
    row = {
        "clean_prefix": "When Mary and John went to the store, John gave a drink",
        "patch_prefix": "When John and Mary went to the store, Mary gave a drink",
        "clean_answer": " to",
        "patch_answer": " the",
    }
    pairs.write_text(json.dumps(row) + "\n")
    graph = {
        "nodes": [{"id": "resid_1.7", "site": "resid", "layer": 1, "feature": 7}],
        "edges": [],
        "metadata": {"metric": "logit_diff"},
    }
    graph_path = tmp_path / "graph.json"
    graph_path.write_text(json.dumps(graph))
    config = tmp_path / "config.yaml"
    keys = tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {
        "PAIRS_FILE": str(pairs),
        "LOGIT_TOKENS": 3,
    }
    config.write_text(yaml.safe_dump(keys))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["sparse_coding/val.py", "--config", str(config), "--from-graph", str(graph_path), "-q"]
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "metric logit_diff" in done.stdout and "faithfulness" in done.stdout
    (report_path,) = (tmp_path / "data").glob("*/validation.json")
    report = json.loads(report_path.read_text())["pairs"]
    assert report["metric"] == "logit_diff" and report["n_examples"] == 1
    assert "mean ablation" in report["ablation"]


def test_metric_logprob_is_reported_as_log_p_with_cross_entropys_faithfulness(
    tmp_path, tiny_model_dir, sae_templates
):
    """METRIC logprob attributes -log p as cross_entropy does; val.py reports its m values as log p."""
    from sparse_coding.config import config_from_dict
    from sparse_coding.pipelines.fast import config_example_batches
    from sparse_coding.pipelines.val import pairs_report
    from sparse_coding.pipelines.val_report import format_pairs_report

    keys = tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {
        "DTYPE": "float64",
        "PATCH_PROMPT": "When John and Mary went to the store, Mary gave a drink to",
    }
    spliced, tokenizer = load_spliced_model(config_from_dict(keys))
    means = {key: torch.zeros(spliced.by_key[key].sae.d_sae, dtype=torch.float64) for key in spliced.by_key}
    site_means = SiteMeans(means, {key: torch.zeros(spliced.model.config.n_embd) for key in means})
    reports = {}
    for metric in ("cross_entropy", "logprob"):
        config = config_from_dict(keys | {"METRIC": metric})
        reports[metric] = pairs_report(
            config,
            spliced,
            tokenizer,
            circuit={"resid_1": [2, 5]},
            circuit_errors=[],
            means=site_means,
            graph=None,
        )
    (batch,) = config_example_batches(config, tokenizer, spliced.model)
    with torch.no_grad():
        last = batch.attention_mask.sum(1) - 1
        logits = spliced.model(batch.input_ids)[torch.arange(len(last)), last]
    log_p = float(torch.log_softmax(logits.double(), -1)[torch.arange(len(last)), batch.answers].mean())
    ce, lp = reports["cross_entropy"], reports["logprob"]
    assert ce["full"] == pytest.approx(-log_p, rel=1e-9) and lp["full"] == pytest.approx(log_p, rel=1e-9)
    assert [lp[k] for k in ("circuit", "empty")] == [-ce[k] for k in ("circuit", "empty")]
    assert lp["faithfulness"] == ce["faithfulness"]
    assert f"metric logprob (log p): m(M) {log_p:.4f}," in format_pairs_report(lp)
    assert f"metric cross_entropy (a loss): m(M) {-log_p:.4f}," in format_pairs_report(ce)
