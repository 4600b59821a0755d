"""ablation_rows: clean and ablated rows share one numerical path; no-op ablations change nothing."""

import pytest
import torch

from sparse_coding.algorithms import ablation_rows
from sparse_coding.algorithms.ablation_rows import AblatedRows, clean_run
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.pipe import interpreted_batch


@pytest.fixture(scope="module")
def post_template(tmp_path_factory):
    """hook_resid_post SAEs: the last one reads the model's final stream (no block after it)."""
    from conftest import write_sae_folder

    root = tmp_path_factory.mktemp("post")
    for layer in range(3):
        write_sae_folder(root / f"post_{layer}", hook_name=f"blocks.{layer}.hook_resid_post", seed=3 + layer)
    return str(root / "post_{layer}")


@pytest.mark.parametrize("keep_stream", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("hook", ["resid_pre", "resid_post"])
def test_a_row_whose_ablation_changes_nothing_changes_every_effect_by_exactly_zero(
    make_config, post_template, dtype, hook, keep_stream
):
    """A firing feature with a zero decoder row: ablating it leaves the stream bit-identical."""
    overrides = {"DTYPE": dtype} | ({"RESID_SAES": post_template} if hook == "resid_post" else {})
    config = make_config(**overrides)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    batch = interpreted_batch(config, tokenizer, spliced.device)
    sites = [spliced.by_key[f"resid_{layer}"] for layer in range(3)]
    for index in (0, 1):  # rows of layer 0 and 1: their logit passes start at different streams
        layer_feats = clean_run(spliced, batch, sites).layers[index].feats
        fired = (layer_feats > 0).flatten(0, 1).any(0).nonzero()[:, 0]
        silent, loud = fired[0], fired[1]
        sites[index].sae.W_dec.data[silent] = 0
        clean = clean_run(spliced, batch, sites)
        with torch.inference_mode():
            rows = AblatedRows(clean, clean.layers[index], torch.stack([silent, loud]))
            feature_change = rows.run_to_next(spliced, clean.layers[index + 1], keep_stream=keep_stream)
            logit_change = rows.logit_effects(spliced, torch.ones(2, dtype=torch.bool))
        assert (feature_change[0] == 0).all() and (logit_change[0] == 0).all()
        assert feature_change[1].abs().max() > 0 and logit_change[1].abs().max() > 0


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse-product", "gathered"])
def test_mean_change_is_the_per_candidate_mean_of_base_minus_ablated(monkeypatch, sparse):
    """Against a loop over rows; the gathered form serves devices without sparse kernels."""
    monkeypatch.setattr(ablation_rows, "SPARSE_DEVICES", ("cpu",) if sparse else ())
    gen = torch.Generator().manual_seed(0)
    n_seq, n_cand, width = 3, 5, 7
    cand = torch.tensor([0, 2, 2, 4, 1, 0, -1, -1, -1, 4])  # -1: base rows (6..8)
    base = torch.tensor([6, 7, 8, 6, 7, 8, 6, 7, 8, 8])
    values = torch.randn(len(cand), width, generator=gen)
    expected = torch.zeros(n_cand, width)
    for row in range(len(cand)):
        if cand[row] >= 0:
            expected[cand[row]] += (values[base[row]] - values[row]) / n_seq
    got = ablation_rows.mean_change(values, base, cand, n_cand, n_seq)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got[3] == 0).all()  # a candidate without rows changes nothing
