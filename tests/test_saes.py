"""`SAE.encode`/`decode` against SAELens' formulas, cfg spellings, and `load_sae` sources."""

import json
from pathlib import Path

import pytest
import torch
from conftest import D_MODEL, D_SAE, TOPK, write_sae_folder
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparse_coding.errors import SAELoadError
from sparse_coding.models.saes import load_sae

JB_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"


# --- SAELens' formulas, written out ------------------------------------------


def reference_encode(x: Tensor, w: dict[str, Tensor], cfg: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(feature acts, mean, std) as SAELens computes them; mean 0 and std 1 without layer norm."""
    mean, std = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if cfg["layer_norm"]:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased, as torch's default
        x = (x - mean) / (std + 1e-5)
    if cfg["apply_b_dec_to_input"]:
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if cfg["activation"] == "relu":
        acts = torch.relu(pre)
    elif cfg["activation"] == "topk":
        top = torch.topk(pre, cfg["k"], dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        acts = pre * (pre > w["threshold"])
    return acts, mean, std


def reference_decode(acts: Tensor, w: dict[str, Tensor], mean: Tensor, std: Tensor) -> Tensor:
    return (acts @ w["W_dec"] + w["b_dec"]) * std + mean


def template(folder: Path) -> str:
    """The local `{layer}` template of a folder named like `sae_3` (a source needs `{layer}`)."""
    stem, _, _ = folder.name.rpartition("_")
    return str(folder.parent / f"{stem}_{{layer}}")


def set_cfg(folder: Path, **changes) -> None:
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    cfg_path.write_text(json.dumps(cfg))


VARIANTS = [
    (activation, layer_norm, spelling)
    for activation in ("relu", "topk", "jumprelu")
    for layer_norm in (False, True)
    for spelling in ("old", "new", "v6")
    # Old cfgs (activation_fn_str) predate JumpReLU, which arrived as architecture "jumprelu".
    if not (spelling == "old" and activation == "jumprelu")
]


@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["b_dec_in", "no_b_dec_in"])
@pytest.mark.parametrize(("activation", "layer_norm", "spelling"), VARIANTS)
def test_encode_and_decode_follow_the_saelens_formulas(
    tmp_path, activation, layer_norm, spelling, apply_b_dec
):
    folder = write_sae_folder(
        tmp_path / "sae_2",
        hook_name="blocks.2.hook_mlp_out",
        activation=activation,
        layer_norm=layer_norm,
        spelling=spelling,
    )
    set_cfg(folder, apply_b_dec_to_input=apply_b_dec)
    sae = load_sae(template(folder), 2)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    cfg = {"layer_norm": layer_norm, "apply_b_dec_to_input": apply_b_dec, "activation": activation, "k": TOPK}
    x = torch.randn(3, 5, D_MODEL) * 2 + 0.5

    acts = sae.encode(x)
    expected, mean, std = reference_encode(x, weights, cfg)
    assert torch.allclose(acts, expected, atol=1e-5)
    assert (expected > 0).any() and (expected == 0).any(), "the variant must be sparse but not dead here"
    if activation == "topk":
        assert ((acts != 0).sum(-1) <= TOPK).all()
    assert torch.allclose(sae.decode(acts), reference_decode(expected, weights, mean, std), atol=1e-5)
    assert torch.allclose(sae(x), reference_decode(expected, weights, mean, std), atol=1e-5)
    chosen = torch.tensor([7, 0, 3, 3, 40])  # any order, repeats allowed
    assert torch.allclose(sae.encode_features(x, chosen), expected[..., chosen], atol=1e-5)
    every = torch.arange(sae.d_sae)  # TopK: many features take the full encode's path
    assert torch.allclose(sae.encode_features(x, every), expected, atol=1e-5)


def test_jumprelu_reads_a_log_threshold_as_saelens_stores_it(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre", activation="jumprelu")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    threshold = weights.pop("threshold") + 0.05
    save_file(weights | {"log_threshold": threshold.log()}, str(folder / "sae_weights.safetensors"))
    x = torch.randn(4, D_MODEL)
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    assert torch.allclose(load_sae(template(folder), 0).encode(x), pre * (pre > threshold), atol=1e-5)


@pytest.mark.parametrize("spelling", ["old", "new", "v6"])
def test_an_sae_knows_its_shapes_hook_site_and_layer(tmp_path, spelling):
    folder = write_sae_folder(tmp_path / "sae_1", hook_name="blocks.1.hook_attn_out", spelling=spelling)
    sae = load_sae(template(folder), 1)
    assert (sae.d_in, sae.d_sae) == (D_MODEL, D_SAE)
    assert (sae.W_enc.shape, sae.W_dec.shape) == ((D_MODEL, D_SAE), (D_SAE, D_MODEL))
    assert (sae.hook_name, sae.site, sae.layer) == ("blocks.1.hook_attn_out", "attn", 1)
    assert sae.neuronpedia_id is None


@pytest.mark.parametrize(
    ("hook", "site"),
    [
        ("hook_resid_pre", "resid"),
        ("hook_resid_mid", "resid"),
        ("hook_resid_post", "resid"),
        ("hook_attn_out", "attn"),
        ("hook_mlp_out", "mlp"),
    ],
)
def test_every_supported_hook_maps_to_its_site(tmp_path, hook, site):
    sae = load_sae(template(write_sae_folder(tmp_path / "sae_2", hook_name=f"blocks.2.{hook}")), 2)
    assert (sae.site, sae.layer) == (site, 2)


def test_a_local_template_fills_the_layer_and_reads_neuronpedia_id_from_cfg(tmp_path):
    for layer in (0, 1):
        folder = write_sae_folder(
            tmp_path / f"sae_{layer}", hook_name=f"blocks.{layer}.hook_resid_pre", seed=layer
        )
        set_cfg(folder, neuronpedia_id=f"tiny/{layer}-res")
    source = str(tmp_path / "sae_{layer}")
    sae0, sae1 = load_sae(source, 0), load_sae(source, 1)
    assert (sae0.layer, sae1.layer) == (0, 1)
    assert sae1.neuronpedia_id == "tiny/1-res"
    assert not torch.equal(sae0.W_enc, sae1.W_enc)


def test_center_writing_weights_follows_model_from_pretrained_kwargs(tmp_path):
    kept = write_sae_folder(
        tmp_path / "a_0", hook_name="blocks.0.hook_resid_pre", center_writing_weights=False
    )
    centred = write_sae_folder(
        tmp_path / "b_0", hook_name="blocks.0.hook_resid_pre", center_writing_weights=True
    )
    unsaid = write_sae_folder(tmp_path / "c_0", hook_name="blocks.0.hook_resid_pre")
    assert load_sae(template(kept), 0).cfg.center_writing_weights is False
    assert load_sae(template(centred), 0).cfg.center_writing_weights is True
    assert load_sae(template(unsaid), 0).cfg.center_writing_weights is True  # TransformerLens' default


def test_bfloat16_stores_the_weights_in_bfloat16_and_encodes_float32_inputs(tmp_path):
    folder = write_sae_folder(
        tmp_path / "sae_0", hook_name="blocks.0.hook_mlp_out", activation="topk", layer_norm=True
    )
    sae = load_sae(template(folder), 0, dtype=torch.bfloat16)
    assert {p.dtype for p in sae.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 3, D_MODEL)
    acts = sae.encode(x)
    assert acts.dtype == torch.bfloat16
    expected, _, _ = reference_encode(
        x,
        load_file(str(folder / "sae_weights.safetensors")),
        {"layer_norm": True, "apply_b_dec_to_input": True, "activation": "topk", "k": TOPK},
    )
    assert ((acts.float() - expected).abs() <= 0.05 * expected.abs().max()).all()


def test_sae_dtype_config_key_reaches_the_spliced_saes(make_config):
    from sparse_coding.pipelines.loading import load_spliced_model

    spliced, _ = load_spliced_model(make_config(SAE_DTYPE="bfloat16", ACTS_LAYERS_SLICE="1:2"))
    assert [site.key for site in spliced.sites] == ["resid_1", "attn_1", "mlp_1"]
    assert {site.sae.W_dec.dtype for site in spliced.sites} == {torch.bfloat16}
    assert next(spliced.model.parameters()).dtype == torch.float32


def test_saes_that_do_not_fit_the_device_stop_before_loading_and_say_what_to_change(make_config, monkeypatch):
    import sparse_coding.models.loading as loading
    from sparse_coding.errors import SparseCodingError
    from sparse_coding.pipelines.loading import load_spliced_model

    monkeypatch.setattr(loading, "_free_bytes", lambda device: 1024)
    monkeypatch.setattr(loading, "load_sae", lambda *a, **k: pytest.fail("loaded an SAE after the check"))
    with pytest.raises(SparseCodingError) as info:
        load_spliced_model(make_config())
    assert all(key in str(info.value) for key in ("SAE_DTYPE", "ACTS_LAYERS_SLICE", "9 SAEs"))


# --- Errors ------------------------------------------------------------------


def test_a_missing_weights_file_names_the_folder_and_the_file(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(SAELoadError, match=r"sae_weights\.safetensors") as info:
        load_sae(template(folder), 0)
    assert str(folder) in str(info.value)


def test_a_missing_folder_is_an_sae_load_error(tmp_path):
    with pytest.raises(SAELoadError, match="cfg.json"):
        load_sae(str(tmp_path / "nowhere_{layer}"), 3)


def test_a_wrong_weight_shape_names_the_file_and_both_shapes(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    set_cfg(folder, d_sae=D_SAE + 1)
    with pytest.raises(SAELoadError) as info:
        load_sae(template(folder), 0)
    message = str(info.value)
    assert "sae_weights.safetensors" in message and str(folder) in message
    assert str((D_MODEL, D_SAE)) in message and str((D_MODEL, D_SAE + 1)) in message


def test_missing_weights_in_the_file_are_listed(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["b_dec"]
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAELoadError, match="b_dec"):
        load_sae(template(folder), 0)


def test_an_unknown_architecture_lists_the_supported_ones(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    set_cfg(folder, architecture="gated")
    with pytest.raises(SAELoadError, match="gated") as info:
        load_sae(template(folder), 0)
    assert all(name in str(info.value) for name in ("relu", "topk", "jumprelu"))
    assert "cfg.json" in str(info.value)


def test_an_unknown_normalisation_lists_the_supported_ones(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    set_cfg(folder, normalize_activations="expected_average_only_in")
    with pytest.raises(SAELoadError, match="expected_average_only_in") as info:
        load_sae(template(folder), 0)
    assert "layer_norm" in str(info.value) and "none" in str(info.value)


def test_a_topk_sae_without_k_is_an_error(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_mlp_out", activation="topk")
    set_cfg(folder, activation_fn_kwargs=None)
    with pytest.raises(SAELoadError, match="k"):
        load_sae(template(folder), 0)


def test_an_unsupported_hook_names_the_supported_ones(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.attn.hook_z")
    with pytest.raises(SAELoadError, match="hook_resid_pre"):
        load_sae(template(folder), 0)


def test_a_cfg_without_d_sae_is_an_error(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    set_cfg(folder, d_sae=None)
    with pytest.raises(SAELoadError, match="d_sae"):
        load_sae(template(folder), 0)


def test_a_source_that_is_neither_release_nor_template_lists_the_releases():
    with pytest.raises(SAELoadError, match="gpt2-small-res-jb"):
        load_sae("gpt2-small-res-typo", 0)


# --- Hub sources through an offline cache -------------------------------------


def test_a_release_name_loads_from_the_hub_cache_with_its_neuronpedia_id(tmp_path, hub_cache):
    folder = write_sae_folder(tmp_path / "sae_3", hook_name="blocks.3.hook_resid_pre", spelling="old")
    hub_cache(JB_REPO, folder, "blocks.3.hook_resid_pre")
    sae = load_sae("gpt2-small-res-jb", 3)
    assert sae.neuronpedia_id == "gpt2-small/3-res-jb"
    assert (sae.hook_name, sae.site, sae.layer) == ("blocks.3.hook_resid_pre", "resid", 3)
    assert sae.cfg.center_writing_weights is True
    assert torch.equal(sae.W_enc, load_file(str(folder / "sae_weights.safetensors"))["W_enc"])


def test_a_hub_template_resolves_the_layer_through_the_hub_cache(tmp_path, hub_cache):
    folder = write_sae_folder(
        tmp_path / "sae_1", hook_name="blocks.1.hook_resid_pre", center_writing_weights=False
    )
    hub_cache(JB_REPO, folder, "blocks.1.hook_resid_pre")
    sae = load_sae(f"{JB_REPO}/blocks.{{layer}}.hook_resid_pre", 1)
    assert (sae.hook_name, sae.layer) == ("blocks.1.hook_resid_pre", 1)
    assert sae.neuronpedia_id is None
    assert sae.cfg.center_writing_weights is False


def test_a_hub_source_missing_from_the_cache_is_an_sae_load_error_offline(tmp_path, hub_cache):
    folder = write_sae_folder(tmp_path / "sae_1", hook_name="blocks.1.hook_resid_pre")
    hub_cache(JB_REPO, folder, "blocks.1.hook_resid_pre")
    with pytest.raises(SAELoadError, match="blocks.2.hook_resid_pre"):
        load_sae("gpt2-small-res-jb", 2)
    with pytest.raises(SAELoadError, match="someone/absent"):
        load_sae("someone/absent/layer_{layer}", 0)


def test_without_network_load_sae_fails_in_seconds_naming_the_file_and_the_cache(unreachable_hub):
    """A notebook's load_sae without network: one short probe of the hub, not the hub library's retries."""
    import time

    import huggingface_hub.constants as constants

    start = time.perf_counter()
    with pytest.raises(SAELoadError) as info:
        load_sae("gpt2-small-res-jb", 4)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "cannot be reached" in message and "blocks.4.hook_resid_pre/cfg.json" in message
    assert constants.HF_HUB_CACHE in message and JB_REPO in message


def test_a_cfg_json_of_random_bytes_names_the_file_and_what_it_should_hold(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_0", hook_name="blocks.0.hook_resid_pre")
    (folder / "cfg.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SAELoadError) as info:
        load_sae(template(folder), 0)
    assert str(folder / "cfg.json") in str(info.value) and "JSON object with d_in, d_sae" in str(info.value)


def test_bfloat16_topk_keeps_the_float32_supports_on_activations_with_outliers_and_an_offset(tmp_path):
    """Centring and layer norm run in float32, the encoder product in bfloat16: on activations with
    two outlier dimensions and a shared offset (rounded to bfloat16 first, the small dimensions
    lose most of their bits before centring) every token whose float32 TopK is separated from its
    next feature by more than bfloat16's product rounding keeps its support."""
    d_in, d_sae, k = 256, 512, 16
    folder = write_sae_folder(
        tmp_path / "sae_0", hook_name="blocks.0.hook_mlp_out", activation="topk", layer_norm=True,
        d_in=d_in, d_sae=d_sae, k=k,
    )  # fmt: skip
    exact = load_sae(template(folder), 0)
    with torch.no_grad():  # weights a bfloat16 SAE holds exactly, so that only the arithmetic differs
        for param in exact.parameters():
            param.copy_(param.bfloat16().float())
    half = load_sae(template(folder), 0, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, d_in, generator=gen) * 3.0 + 300.0  # bfloat16's spacing at 300 is 2
    x[:, 7] += 300.0
    x[:, 99] -= 75.0
    pre = exact.pre_activations(exact.normalize(x)[0])
    top = pre.topk(k + 1, dim=-1).values
    separated = (top[:, k - 1] - top[:, k]) > 2**-6 * top[:, k - 1].abs()
    assert separated.sum() > 20
    supports = [(sae.encode(x) > 0)[separated] for sae in (exact, half)]
    assert torch.equal(supports[0], supports[1])
