"""algorithms.validation against plainly written forwards on the Hugging Face model.

The reference encodes with formulas written here from the SAE's weights, edits
activations with plain torch forward hooks on the HF GPT-2, and runs every
sequence alone (no padding), so it shares nothing with splicing or batching.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import MpsLikeDtypes, module_hook

from sparse_coding.algorithms.mean_ablation import SiteMeans
from sparse_coding.algorithms.validation import feature_means, validate_circuit
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.graphs.conventions import sentences
from sparse_coding.graphs.dot_format import graph_to_dot
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.pipelines.circuit import circuit_from_config, circuit_from_graph, read_graph
from sparse_coding.pipelines.val import load_circuit_model
from sparse_coding.pipelines.val_report import format_report, report_data, write_report
from sparse_coding.text.corpus import iter_batches

TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox",
    "Copyright (C) 2024 the authors. All rights reserved.",
    "1 2 3 4 5",
    "Sparse autoencoders find interpretable features in language models.",
]
SITES = ("resid_0", "attn_1", "resid_2", "mlp_2")
TOL = 1e-5


# ---------------------------------------------------------------- plain reference


def plain_code(sae, x):
    """(feats, scale) from the SAE's weights: SAELens' encode, written out."""
    x = x.to(sae.W_enc.dtype)
    if sae.cfg.center_writing_weights:
        x = x - x.mean(-1, keepdim=True)
    scale = torch.ones_like(x[..., :1])
    if sae.cfg.normalize_activations == "layer_norm":
        x = x - x.mean(-1, keepdim=True)
        scale = x.std(-1, keepdim=True)
        x = x / (scale + 1e-5)
    pre = (x - sae.b_dec * sae.cfg.apply_b_dec_to_input) @ sae.W_enc + sae.b_enc
    if sae.cfg.activation == "topk":
        kth = pre.topk(sae.cfg.k, dim=-1).values[..., -1:]
        pre = torch.where(pre >= kth, pre, torch.zeros_like(pre))
    return torch.relu(pre), scale


def hook_sites(model, edits):
    """Register edit(x) -> x at each site key on the plain model; returns handles."""
    return [module_hook(model, key, edit) for key, edit in edits.items()]


def plain_log_probs(model, ids, edits):
    """log p (pos, vocab) of one unpadded sequence with `edits` hooked in."""
    handles = hook_sites(model, edits)
    try:
        with torch.no_grad():
            return F.log_softmax(model(ids[None])[0].float(), dim=-1)
    finally:
        for handle in handles:
            handle.remove()


def zero_edit(sae, features):
    def edit(x):
        feats, scale = plain_code(sae, x)
        return x - (feats[..., features] * scale) @ sae.W_dec[features]

    return edit


def plain_error(sae, x):
    """x - the SAE's own reconstruction (SAELens encode/decode), in model space."""
    centre = x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else 0
    return x - (sae.decode(sae.encode(x - centre)) + centre)


def mean_edit(sae, features, means, error_mean=None):
    """Features set to their means; with `error_mean`, the error term too."""

    def edit(x):
        feats, scale = plain_code(sae, x)
        out = x + ((means[features] - feats[..., features]) * scale) @ sae.W_dec[features]
        return out if error_mean is None else out - plain_error(sae, x) + error_mean

    return edit


def plain_means(model, saes, sequences):
    """Mean activation of every feature and mean error over every token, one sequence at a time."""
    sums = {key: 0 for key in saes}
    errors = {key: 0 for key in saes}

    def recorder(key):
        def edit(x):
            sums[key] = sums[key] + plain_code(saes[key], x)[0][0].sum(0)
            errors[key] = errors[key] + plain_error(saes[key], x)[0].sum(0)
            return x

        return edit

    for ids in sequences:
        plain_log_probs(model, ids, {key: recorder(key) for key in saes})
    n_tokens = sum(len(ids) for ids in sequences)
    return {key: total / n_tokens for key, total in sums.items()}, {
        key: total / n_tokens for key, total in errors.items()
    }


def plain_stats(model, sequences, edits):
    """(mean next-token CE, per-sequence log-probs) with `edits`, one sequence at a time."""
    runs = [plain_log_probs(model, ids, edits) for ids in sequences]
    nll = [-lp[:-1].gather(-1, ids[1:, None]).sum() for lp, ids in zip(runs, sequences, strict=True)]
    return float(sum(nll)) / sum(len(ids) - 1 for ids in sequences), runs


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP waits on a busy 2-core machine (100x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loaded(make_config):
    config = make_config(VALIDATION_DIMS_PINNED={key: [0] for key in SITES})
    spliced, tokenizer = load_circuit_model(config, circuit_from_config(config))
    return spliced, tokenizer


def batches_of(tokenizer, texts, batch_size):
    return list(iter_batches(texts, tokenizer, batch_size=batch_size, max_len=64, prepend_bos=True))


def unpadded(batches):
    return [
        ids[mask.bool()]
        for batch in batches
        for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]


def active_circuit(spliced, tokenizer, per_site=3):
    """The most active features per site on TEXTS (so that ablating them matters)."""
    means = feature_means(spliced, batches_of(tokenizer, TEXTS, 2), SITES).features
    return {key: sorted(means[key].topk(per_site).indices.tolist()) for key in SITES}


# ---------------------------------------------------------------- numbers


def test_zeroed_probabilities_losses_and_kl_match_plain_hooks_on_the_hf_model(loaded):
    spliced, tokenizer = loaded
    circuit = active_circuit(spliced, tokenizer)
    batches = batches_of(tokenizer, TEXTS, 3)
    result = validate_circuit(spliced, batches, circuit=circuit)

    sequences = unpadded(batches)
    saes = {key: spliced.by_key[key].sae for key in SITES}
    edits = {key: zero_edit(saes[key], circuit[key]) for key in SITES}
    ce_clean, clean = plain_stats(spliced.model, sequences, {})
    ce_zero, zeroed = plain_stats(spliced.model, sequences, edits)
    kl = sum((c.exp() * (c - z)).sum() for c, z in zip(clean, zeroed, strict=True)) / sum(map(len, sequences))
    probs_clean = torch.stack([c[-1].exp() for c in clean]).mean(0).double()
    probs_zero = torch.stack([z[-1].exp() for z in zeroed]).mean(0).double()

    assert ce_zero != pytest.approx(ce_clean, abs=1e-3)  # the ablation matters
    torch.testing.assert_close(result.probs_clean, probs_clean, atol=TOL, rtol=0)
    torch.testing.assert_close(result.probs_ablated, probs_zero, atol=TOL, rtol=0)
    assert result.ce_clean == pytest.approx(ce_clean, abs=TOL)
    assert result.ce_ablated == pytest.approx(ce_zero, abs=TOL)
    assert result.kl == pytest.approx(float(kl), abs=TOL)
    assert result.n_predictions == sum(len(ids) - 1 for ids in sequences)
    assert result.n_sequences == len(TEXTS)


def test_padding_changes_nothing_a_padded_batch_equals_one_sequence_at_a_time(loaded):
    spliced, tokenizer = loaded
    circuit = active_circuit(spliced, tokenizer)
    together = validate_circuit(spliced, batches_of(tokenizer, TEXTS, 5), circuit=circuit)
    alone = validate_circuit(spliced, batches_of(tokenizer, TEXTS, 1), circuit=circuit)

    for name in ("ce_clean", "ce_ablated", "kl"):
        assert getattr(together, name) == pytest.approx(getattr(alone, name), abs=TOL)
    for name in ("faithfulness", "completeness"):  # ratios: m(M) - m(empty) may be small
        assert getattr(together, name) == pytest.approx(getattr(alone, name), rel=1e-4, abs=TOL)
    assert together.metric == pytest.approx(alone.metric, abs=TOL)
    torch.testing.assert_close(together.probs_ablated, alone.probs_ablated, atol=TOL, rtol=0)
    assert together.n_tokens == alone.n_tokens


@pytest.mark.parametrize("errors", ["keep", "ablate"])
def test_mean_ablation_metrics_match_plain_mean_ablation_forwards_at_every_site(loaded, errors):
    """M splices every site (9 here, the circuit uses 4); C and empty mean-ablate at all of them."""
    spliced, tokenizer = loaded
    circuit = active_circuit(spliced, tokenizer, per_site=2)
    circuit_errors = ["mlp_2"]
    batches = batches_of(tokenizer, TEXTS, 2)
    result = validate_circuit(spliced, batches, circuit=circuit, circuit_errors=circuit_errors, errors=errors)

    sequences = unpadded(batches)
    saes = {site.key: site.sae for site in spliced.sites}
    assert len(saes) == 9 and set(circuit) < set(saes)
    means, error_means = plain_means(spliced.model, saes, sequences)
    every = {key: list(range(sae.d_sae)) for key, sae in saes.items()}
    inside = {key: circuit.get(key, []) for key in saes}
    outside = {key: sorted(set(every[key]) - set(inside[key])) for key in saes}

    def m(features, ablated_errors):
        if errors == "keep":
            ablated_errors = set()
        edits = {}
        for key, sae in saes.items():
            error_mean = error_means[key] if key in ablated_errors else None
            edits[key] = mean_edit(sae, features[key], means[key], error_mean)
        return plain_stats(spliced.model, sequences, edits)[0]

    full = plain_stats(spliced.model, sequences, {})[0]
    empty = m(every, set(saes))
    with_circuit = m(outside, set(saes) - set(circuit_errors))
    without_circuit = m(inside, set(circuit_errors))
    assert result.metric["full"] == pytest.approx(full, abs=TOL)
    assert result.metric["empty"] == pytest.approx(empty, abs=TOL)
    assert result.metric["circuit"] == pytest.approx(with_circuit, abs=TOL)
    assert result.metric["without_circuit"] == pytest.approx(without_circuit, abs=TOL)
    assert abs(full - empty) > 1e-2  # the ratios are well defined
    for got, value in ((result.faithfulness, with_circuit), (result.completeness, without_circuit)):
        ratio = (value - empty) / (full - empty)
        # TOL on each of the three metrics, propagated through the ratio
        assert got == pytest.approx(ratio, abs=(2 + 2 * abs(ratio)) * TOL / abs(full - empty))
    assert result.sites == list(saes) and result.errors == errors


def test_the_circuit_of_all_features_is_faithful_and_complete(loaded):
    spliced, tokenizer = loaded
    circuit = {site.key: list(range(site.sae.d_sae)) for site in spliced.sites}
    result = validate_circuit(spliced, batches_of(tokenizer, TEXTS, 3), circuit=circuit)

    assert result.faithfulness == pytest.approx(1.0, abs=1e-6)
    assert result.completeness == pytest.approx(0.0, abs=1e-4)
    assert result.metric["circuit"] == pytest.approx(result.metric["full"], abs=1e-6)


def test_the_empty_circuit_is_unfaithful_and_removing_it_changes_nothing(loaded):
    spliced, tokenizer = loaded
    circuit = {key: [] for key in SITES}
    result = validate_circuit(spliced, batches_of(tokenizer, TEXTS, 3), circuit=circuit)

    assert result.faithfulness == pytest.approx(0.0, abs=1e-4)
    assert result.completeness == pytest.approx(1.0, abs=1e-6)
    assert result.ce_ablated == pytest.approx(result.ce_clean, abs=1e-6)


def test_given_means_replace_the_data_means(loaded):
    spliced, tokenizer = loaded
    circuit = {"resid_0": [1, 2], "attn_1": [3]}
    zeros = SiteMeans(
        {site.key: torch.zeros(site.sae.d_sae) for site in spliced.sites},
        {site.key: torch.zeros(site.sae.d_in) for site in spliced.sites},
    )
    result = validate_circuit(spliced, batches_of(tokenizer, TEXTS[:2], 2), circuit=circuit, means=zeros)
    # With zero "means", M \ C is exactly the zero ablation of the circuit.
    assert result.metric["without_circuit"] == pytest.approx(result.ce_ablated, abs=TOL)


# ---------------------------------------------------------------- inputs and errors


def test_circuit_from_config_reads_int_layers_and_site_keys(make_config):
    config = make_config(VALIDATION_DIMS_PINNED={1: [5, 3, 5], "attn_2": [7]})
    assert circuit_from_config(config) == {"resid_1": [3, 5], "attn_2": [7]}


def test_validation_errors_accepts_keep_or_ablate_and_names_them_otherwise(make_config):
    assert make_config(VALIDATION_ERRORS="ablate").VALIDATION_ERRORS == "ablate"
    with pytest.raises(ConfigError, match="VALIDATION_ERRORS is 'drop'; valid: keep, ablate"):
        make_config(VALIDATION_ERRORS="drop")


def test_an_unset_circuit_is_a_config_error_that_suggests_the_key(make_config):
    with pytest.raises(ConfigError, match="VALIDATION_DIMS_PINNED is unset"):
        circuit_from_config(make_config())


def test_circuit_from_graph_keeps_feature_nodes_and_skips_error_nodes():
    graph = Graph()
    for node_id in ("resid_1.4", "attn_2.9", "resid_1.2", "mlp_error_2"):
        graph.add_node(Node.from_id(node_id))
    assert circuit_from_graph(graph, Path("g.json")) == {"attn_2": [9], "resid_1": [2, 4]}


def test_a_graph_without_feature_nodes_is_a_graph_file_error():
    graph = Graph()
    graph.add_node(Node.from_id("mlp_error_2"))
    with pytest.raises(GraphFileError, match="g.json has no feature nodes"):
        circuit_from_graph(graph, Path("g.json"))


def test_read_graph_reads_a_hand_written_json_and_names_bad_files(tmp_path):
    path = tmp_path / "graph.json"
    nodes = [{"id": "resid_1.4", "site": "resid", "layer": 1, "feature": 4}]
    path.write_text(json.dumps({"nodes": nodes, "edges": [], "metadata": {}}))
    assert list(read_graph(path).nodes) == ["resid_1.4"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GraphFileError, match="bad.json"):
        read_graph(tmp_path / "bad.json")
    with pytest.raises(GraphFileError, match="missing.dot does not exist"):
        read_graph(tmp_path / "missing.dot")


def test_read_graph_reads_a_dot_file_as_pipe_and_fast_write_it(tmp_path):
    graph = Graph()
    for node_id in ("resid_1.4", "attn_2.9", "attn_error_2"):
        graph.add_node(Node.from_id(node_id))
    graph.add_edge("resid_1.4", "attn_2.9", 0.25)
    path = tmp_path / "graph.dot"
    path.write_text(graph_to_dot(graph))
    assert circuit_from_graph(read_graph(path), path) == {"attn_2": [9], "resid_1": [4]}


@pytest.mark.parametrize(
    ("pins", "slice_", "message"),
    [
        ({"attn_1": [64]}, "0:3", r"'attn_1' index 64 \(width 64, valid 0..63\)"),
        ({2: [1], "mlp_1": [2]}, "0:2", r"'resid_2', outside ACTS_LAYERS_SLICE '0:2' \(layers 0..1\)"),
    ],
)
def test_bad_pins_raise_a_config_error_naming_key_layer_index_and_width(make_config, pins, slice_, message):
    config = make_config(VALIDATION_DIMS_PINNED=pins, ACTS_LAYERS_SLICE=slice_)
    with pytest.raises(ConfigError, match=message):
        load_circuit_model(config, circuit_from_config(config))


def test_a_pinned_site_without_an_sae_source_names_the_key(make_config):
    config = make_config(VALIDATION_DIMS_PINNED={"mlp_1": [2]}, MLP_SAES=None)
    with pytest.raises(ConfigError, match="MLP_SAES for 'mlp_1'"):
        load_circuit_model(config, circuit_from_config(config))


def test_the_report_is_strict_json_with_undefined_ratios_as_null(loaded, tmp_path):
    spliced, tokenizer = loaded
    result = validate_circuit(spliced, batches_of(tokenizer, TEXTS[:2], 2), circuit={"resid_0": [1]})
    undefined = result._replace(faithfulness=math.nan)
    data = report_data(undefined, tokenizer, logit_tokens=4, source="test", data="TEXTS")
    path = write_report(data, tmp_path / "out" / "validation.json")

    stored = json.loads(path.read_text())
    assert stored["faithfulness"] is None
    assert stored["metric"]["full"] == pytest.approx(result.ce_clean)
    assert len(stored["next_token"]["clean_top"]) == 4
    assert all(row["change"] < 0 for row in stored["next_token"]["decreases"])
    assert all(row["ablated"] > row["clean"] for row in stored["next_token"]["increases"])
    assert stored["sign_convention"] == sentences("val.py", {"VALIDATION_ERRORS": "keep"})
    assert stored["errors"].startswith(stored["sign_convention"]["errors"])
    text = format_report(data)
    assert "undefined" in text
    assert "increases (more likely when ablated" in text and "decreases (less likely when ablated" in text
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_validation_makes_no_float64_tensor_so_it_runs_on_mps(loaded):
    """MPS has no float64: sums accumulate in float64 on the CPU only (NumPy)."""
    spliced, tokenizer = loaded
    batches = batches_of(tokenizer, TEXTS[:3], 2)
    expected = validate_circuit(spliced, batches, circuit={"resid_0": [1]}, errors="ablate")
    with MpsLikeDtypes():
        result = validate_circuit(spliced, batches, circuit={"resid_0": [1]}, errors="ablate")
    assert result.metric == expected.metric
