"""Transcoder feature interventions equal a plain-hook reference written here, errors kept."""

import pytest
import torch
from conftest import D_MODEL
from transcoder_files import D_TC, SPARSIFY_K, write_set

from sparse_coding.models.gpt2 import load_model
from sparse_coding.transcoders.interventions import FeatureEdit, transcoder_interventions
from sparse_coding.transcoders.loading import load_transcoders

N_LAYERS = 3


@pytest.fixture(scope="module")
def model_and_ids(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float64)
    ids = tokenizer("When Mary and John went to the store", add_special_tokens=False)["input_ids"]
    return model, torch.tensor([[tokenizer.bos_token_id, *ids]])


def reference_logits(model, ids, layout, weights, edits):
    """Hooks written from the layouts' formulas: MLP T's output += (new - old) x W_dec[S -> T] rows."""
    w = [{k: v.double() for k, v in layer.items()} for layer in weights]
    pending, h_mid = {}, {}

    def acts(layer, h):
        x = (
            h
            if layout == "sparsify_clt"
            else (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        )
        pre = x @ w[layer]["W_enc"] + w[layer]["b_enc"]
        if layout == "dunefsky":
            return torch.relu(pre)
        top = torch.relu(pre).topk(SPARSIFY_K, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)  # fmt: skip

    def on_mlp(layer):
        def hook(module, args, out):
            for source, feature, op, value, positions in edits:
                if source != layer:
                    continue
                old = acts(layer, h_mid[layer])[0, :, feature]
                new = old.clone()
                where = slice(None) if positions is None else list(positions)
                new[where] = {"set": lambda a: a * 0 + value, "scale": lambda a: a * value,
                              "add": lambda a: a + value}[op](old[where])  # fmt: skip
                targets = range(layer, N_LAYERS) if layout == "sparsify_clt" else [layer]
                for t in targets:
                    row = w[t]["W_dec"][(source * D_TC if layout == "sparsify_clt" else 0) + feature]
                    pending[t] = pending.get(t, 0) + (new - old)[:, None] * row
            return out + pending.pop(layer, 0)

        return hook

    handles = []
    for layer, block in enumerate(model.transformer.h):
        handles.append(
            block.ln_2.register_forward_pre_hook(lambda m, a, layer=layer: h_mid.__setitem__(layer, a[0]))
        )
        handles.append(block.mlp.register_forward_hook(on_mlp(layer)))
    try:
        return model(ids)
    finally:
        for handle in handles:
            handle.remove()


EDITS = [
    [FeatureEdit(0, 3, "set", 0.0), FeatureEdit(1, 5, "scale", 2.5, (2, 4))],
    [FeatureEdit(0, 7, "add", 1.5, (1,)), FeatureEdit(2, 0, "set", 3.0)],
]


@pytest.mark.parametrize("layout", ["dunefsky", "sparsify_clt"], ids=["per-layer", "cross-layer"])
@pytest.mark.parametrize("edits", EDITS, ids=["set-and-scale", "add-and-set"])
def test_an_intervention_equals_the_plain_hook_reference(tmp_path, model_and_ids, layout, edits):
    model, ids = model_and_ids
    template, weights = write_set(tmp_path, layout, N_LAYERS)
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64)
    with transcoder_interventions(model, tcs, edits):
        ours = model(ids)
    expected = reference_logits(model, ids, layout, weights, [tuple(e) for e in edits])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-8)
    assert (ours - model(ids)).abs().max() > 1e-3  # the edits change something, and nothing stays installed


def test_no_edit_leaves_the_model_bit_identical(tmp_path, model_and_ids):
    model, ids = model_and_ids
    template, _ = write_set(tmp_path, "dunefsky", N_LAYERS)
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL)
    plain = model(ids)
    with transcoder_interventions(model, tcs, []):
        assert torch.equal(model(ids), plain)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (FeatureEdit(5, 0, "set", 0.0), "layer 5 has no transcoder"),
        (FeatureEdit(0, D_TC, "set", 0.0), "beyond the 48 features"),
        (FeatureEdit(0, 0, "clamp", 0.0), "valid: set, scale, add"),
    ],
)
def test_a_bad_edit_names_what_is_wrong(tmp_path, model_and_ids, edit, message):
    model, _ = model_and_ids
    template, _ = write_set(tmp_path, "dunefsky", N_LAYERS)
    tcs = load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL)
    with pytest.raises(ValueError, match=message), transcoder_interventions(model, tcs, [edit]):
        pass
