"""Every published transcoder layout loads to what its own formula computes (docs/transcoders.md).

The tiny weights are written in each real layout (file names, tensor names,
cfg spellings) by `transcoder_files`; the formulas below are each layout's
own, written out from its source code.
"""

import json
import pickle

import pytest
import torch
from conftest import D_MODEL
from torch import Tensor
from transcoder_files import D_TC, LAYOUTS, SPARSIFY_K, layer_path, write_set

from sparse_coding.errors import TranscoderLoadError
from sparse_coding.transcoders.loading import load_transcoders
from sparse_coding.transcoders.sources import RELEASES, resolve_layer

N_LAYERS = 3


def published_encode(layout: str, x: Tensor, w: dict[str, Tensor]) -> Tensor:
    """Feature activations as each layout's own code computes them."""
    if layout in ("arena", "arena_b_dec_out", "pickle"):  # SAELens standard / sae_training: x - b_dec first
        return torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    if layout in ("saelens_transcoder", "dunefsky"):  # no input bias
        return torch.relu(x @ w["W_enc"] + w["b_enc"])
    pre = torch.relu(x @ w["W_enc"] + w["b_enc"])  # sparsify fused_encoder: ReLU, then the k largest
    top = pre.topk(SPARSIFY_K, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def published_decode(layout: str, acts: list[Tensor], target: int, weights: list[dict], x: Tensor) -> Tensor:
    """Layer `target`'s MLP-output reconstruction from every layer's activations."""
    w = weights[target]
    if layout == "sparsify_clt":  # W_dec of the target's folder: one block of D_TC rows per source layer
        out = sum(acts[s] @ w["W_dec"][s * D_TC : (s + 1) * D_TC] for s in range(target + 1))
    else:
        out = acts[target] @ w["W_dec"]
    bias = w["b_dec_out"] if layout in ("arena_b_dec_out", "pickle") else w["b_dec"] if layout.startswith(
        "arena") else w["b_dec_out"]  # fmt: skip
    out = out + bias
    return out + x @ w["W_skip"].T if "W_skip" in w else out


@pytest.mark.parametrize("lazy", [False, True], ids=["loaded", "lazy_decoders"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_encodes_and_decodes_by_its_own_formula(tmp_path, layout, lazy):
    if lazy and layout == "pickle":
        pytest.skip("a pickle is read whole")
    template, weights = write_set(tmp_path, layout, N_LAYERS, skip=layout.startswith("sparsify"))
    tcs = load_transcoders(
        template, n_layers=N_LAYERS, d_model=D_MODEL, dtype=torch.float64, lazy_decoders=lazy
    )
    assert tcs.kind == ("clt" if layout == "sparsify_clt" else "tc") and list(tcs.layers) == [0, 1, 2]
    xs = [torch.randn(5, D_MODEL, dtype=torch.float64) for _ in range(N_LAYERS)]
    w64 = [{k: v.double() for k, v in w.items()} for w in weights]
    acts = [published_encode(layout, xs[layer], w64[layer]) for layer in range(N_LAYERS)]
    for layer in range(N_LAYERS):
        torch.testing.assert_close(tcs.encode(layer, xs[layer]), acts[layer], rtol=1e-12, atol=1e-12)
        assert (acts[layer] > 0).any() and (acts[layer] == 0).any()
    for target in range(N_LAYERS):
        ours = tcs.layers[target].b_out + (
            xs[target] @ tcs.skip(target).T if tcs.skip(target) is not None else 0
        )
        for source in range(N_LAYERS):
            if target in tcs.targets(source):
                rows = tcs.decoder_rows(source, target, torch.arange(D_TC))
                ours = ours + acts[source] @ rows
        torch.testing.assert_close(ours, published_decode(layout, acts, target, w64, xs[target]))


@pytest.mark.parametrize(
    ("release", "layout"),
    [
        ("gpt2-small-transcoders", "dunefsky"),
        ("gpt2-small-transcoders-original", "pickle"),
        ("gpt2-small-transcoders-arena", "arena"),
        ("gpt2-small-clt-relu-sp8", "sparsify_clt"),
    ],
)
def test_a_release_loads_offline_from_the_hub_cache(tmp_path, hub_cache, release, layout):
    root = tmp_path / "weights"
    _, weights = write_set(root, layout, N_LAYERS)
    for layer in range(N_LAYERS):
        path = resolve_layer(release, layer).path
        local = layer_path(root, layout, layer)
        if layout == "pickle":  # a file at the repository root
            hub_cache(RELEASES[release].repo_id, local.parent, "")
        else:
            hub_cache(RELEASES[release].repo_id, local, path)
    tcs = load_transcoders(release, n_layers=N_LAYERS, d_model=D_MODEL)
    x = torch.randn(4, D_MODEL)
    torch.testing.assert_close(tcs.encode(1, x), published_encode(layout, x, weights[1]))


def test_a_missing_layer_names_the_release_and_the_cache(tmp_path, hub_cache):
    with pytest.raises(TranscoderLoadError, match="jacobdunefsky/gpt2small-transcoders.*cache"):
        load_transcoders("gpt2-small-transcoders", n_layers=N_LAYERS, d_model=D_MODEL)


def test_a_folder_in_no_layout_lists_the_layouts(tmp_path):
    (tmp_path / "tc_0").mkdir()
    (tmp_path / "tc_0" / "weights.bin").write_bytes(b"")
    with pytest.raises(TranscoderLoadError, match="sae_weights.safetensors.*sae_info.json.*sae.safetensors"):
        load_transcoders(str(tmp_path / "tc_{layer}"), n_layers=1, d_model=D_MODEL)


def test_a_source_without_a_layer_template_lists_the_releases():
    with pytest.raises(TranscoderLoadError, match="gpt2-small-clt-relu-sp8"):
        load_transcoders("my-transcoders", n_layers=1, d_model=D_MODEL)


def test_transcoders_of_another_width_are_refused(tmp_path):
    template, _ = write_set(tmp_path, "dunefsky", N_LAYERS)
    with pytest.raises(TranscoderLoadError, match="d_model is 64"):
        load_transcoders(template, n_layers=N_LAYERS, d_model=64)


def test_an_input_hook_trace_cannot_compute_is_named(tmp_path):
    template, _ = write_set(tmp_path, "arena", N_LAYERS)
    cfg_path = layer_path(tmp_path, "arena", 1) / "cfg.json"
    cfg_path.write_text(
        json.dumps(json.loads(cfg_path.read_text()) | {"hook_name": "blocks.1.hook_resid_pre"})
    )
    with pytest.raises(TranscoderLoadError, match="hook_resid_pre.*blocks.1.ln2.hook_normalized"):
        load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL)


def test_a_decoder_of_the_wrong_shape_names_tensor_and_shapes(tmp_path):
    template, _ = write_set(tmp_path, "sparsify_clt", N_LAYERS)
    cfg_path = layer_path(tmp_path, "sparsify_clt", 2) / "cfg.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"num_latents": D_TC, "n_sources": 2}))
    with pytest.raises(TranscoderLoadError, match="n_sources is 2"):
        load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "final_0.pt"
    path.write_bytes(pickle.dumps({"cfg": Evil(), "state_dict": {}}, protocol=2))
    with pytest.raises(TranscoderLoadError, match="weights_only=True"):
        load_transcoders(str(tmp_path / "final_{layer}.pt"), n_layers=1, d_model=D_MODEL)


def test_transcoders_too_large_for_memory_say_what_to_change(tmp_path, monkeypatch):
    import sparse_coding.transcoders.loading as loading

    template, _ = write_set(tmp_path, "dunefsky", N_LAYERS)
    monkeypatch.setattr(loading, "_free_bytes", lambda device: 1000)
    with pytest.raises(TranscoderLoadError, match="TRANSCODER_LAZY_DECODERS: true.*SAE_DTYPE: bfloat16"):
        load_transcoders(template, n_layers=N_LAYERS, d_model=D_MODEL)
