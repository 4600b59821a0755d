"""Splicing checked against the plain Hugging Face model and plain torch hooks.

The references here never go through `sparse_coding.splicing.splice`: activations are
captured and edited with hooks written in this file, SAEs are applied with
their own `encode`/`decode`, and TransformerLens' centred writing weights are
rebuilt by hand on a copy of the model.
"""

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import hf_twin, write_sae_folder, write_sae_set
from torch import Tensor
from transformers import GPT2LMHeadModel

from sparse_coding.models.saes import SAE
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.splicing.splice import Site, SiteCode, SplicedModel, record_codes, zero_ablation

TOLERANCE = 1e-4
PROMPT_IDS = torch.tensor([[0, 17, 42, 99, 7, 250, 3, 61, 128, 5]])

# Every TransformerLens hook once: resid_pre at layer 0, resid_mid at layer 1
# (with uncentred inputs, to exercise both conventions), resid_post at layer 2;
# attn and mlp at every layer.
RESID_HOOKS = {
    0: ("blocks.0.hook_resid_pre", {"activation": "relu", "spelling": "old"}),
    1: ("blocks.1.hook_resid_mid", {"activation": "jumprelu", "center_writing_weights": False}),
    2: ("blocks.2.hook_resid_post", {"activation": "topk", "layer_norm": True, "spelling": "v6"}),
}
FORWARD_ORDER = ["resid_0", "attn_0", "mlp_0", "attn_1", "resid_1", "mlp_1", "attn_2", "mlp_2", "resid_2"]


@pytest.fixture(scope="module")
def five_hook_templates(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("five_hook_saes")
    for layer, (hook, options) in RESID_HOOKS.items():
        write_sae_folder(root / f"resid_{layer}", hook_name=hook, seed=7 + layer, **options)
    return {
        "resid": str(root / "resid_{layer}"),
        "attn": write_sae_set(root, "attn"),
        "mlp": write_sae_set(root, "mlp"),
    }


@pytest.fixture
def spliced(make_config, five_hook_templates) -> SplicedModel:
    config = make_config(
        RESID_SAES=five_hook_templates["resid"],
        ATTN_SAES=five_hook_templates["attn"],
        MLP_SAES=five_hook_templates["mlp"],
    )
    model, _ = load_spliced_model(config)
    return model


# --- Independent references -------------------------------------------------

Edit = Callable[[Tensor], Tensor]


def hf_forward_with_edits(model: GPT2LMHeadModel, ids: Tensor, edits: dict[tuple[str, int], Edit]) -> dict:
    """Run the HF model, capturing (and optionally editing) activations at TransformerLens hooks.

    Returns {"logits": ..., (hook, layer): activation as the model computed it}.
    """
    captured: dict = {}
    handles = []

    def apply(key: tuple[str, int], x: Tensor) -> Tensor:
        captured[key] = x
        return edits[key](x) if key in edits else x

    for layer, block in enumerate(model.transformer.h):
        block_input: dict[int, Tensor] = {}

        def pre_hook(module, args, kwargs, layer=layer, block_input=block_input):
            x = args[0] if args else kwargs["hidden_states"]
            new = apply(("hook_resid_pre", layer), x)
            block_input[layer] = new
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        def attn_hook(module, args, out, layer=layer, block_input=block_input):
            attn_out = apply(("hook_attn_out", layer), out[0])
            resid_pre = block_input[layer]
            mid = resid_pre + attn_out
            resid_mid = apply(("hook_resid_mid", layer), mid)
            return (attn_out if resid_mid is mid else resid_mid - resid_pre, *out[1:])

        def mlp_hook(module, args, out, layer=layer):
            return apply(("hook_mlp_out", layer), out)

        def post_hook(module, args, out, layer=layer):
            return apply(("hook_resid_post", layer), out)

        handles += [
            block.register_forward_pre_hook(pre_hook, with_kwargs=True),
            block.attn.register_forward_hook(attn_hook),
            block.mlp.register_forward_hook(mlp_hook),
            block.register_forward_hook(post_hook),
        ]
    try:
        captured["logits"] = model(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return captured


def to_tl_convention(x: Tensor, sae: SAE) -> Tensor:
    """A TransformerLens activation with centred writing weights has zero mean over d_model."""
    return x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x


def sae_ablate(sae: SAE, x: Tensor, zeroed: list[tuple[int, int]]) -> Tensor:
    """x with features zeroed at (position, feature), keeping the SAE error (Marks et al.)."""
    feats = sae.encode(to_tl_convention(x, sae))
    ablated = feats.clone()
    for position, feature in zeroed:
        ablated[..., position, feature] = 0
    return x + (sae.decode(ablated) - sae.decode(feats))


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- Splicing is exact ------------------------------------------------------


def test_five_hooks_are_spliced_in_forward_order(spliced):
    assert [site.key for site in spliced.sites] == FORWARD_ORDER
    assert {site.hook for site in spliced.sites} == {
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_resid_post",
    }
    calls = []
    with spliced.intervene(lambda site, x: calls.append(site.key) or x):
        spliced(PROMPT_IDS)
    assert calls == FORWARD_ORDER


def test_the_spliced_model_without_intervention_computes_the_hf_logits(spliced):
    ids = torch.cat([PROMPT_IDS, PROMPT_IDS.flip(-1)])
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    reference = hf_twin(spliced.model)(ids, attention_mask=mask).logits
    ours = spliced(ids, mask)
    assert torch.allclose(ours[0], reference[0], atol=TOLERANCE)
    assert torch.allclose(ours[1, :7], reference[1, :7], atol=TOLERANCE)


def test_decode_plus_error_at_every_site_gives_the_plain_model_logits(spliced, record_property):
    plain = spliced.model(PROMPT_IDS)
    reconstructions: dict[str, Tensor] = {}

    def decode_plus_error(site: Site, x: Tensor) -> Tensor:
        sae = site.sae
        feats = sae.encode(to_tl_convention(x, sae))
        x_hat = sae.decode(feats) + (x - to_tl_convention(x, sae))  # back to the model's convention
        code = site.code(x)
        assert torch.allclose(code.feats, feats, atol=1e-5)
        reconstructions[site.key] = x_hat
        return x_hat + code.error

    with spliced.intervene(decode_plus_error):
        logits = spliced(PROMPT_IDS)
    max_diff = (logits - plain).abs().max().item()
    record_property("splice_max_abs_diff", max_diff)
    print(f"splice max abs logit diff (float32, 9 sites, 5 hooks): {max_diff:.3g}")
    assert list(reconstructions) == FORWARD_ORDER
    assert max_diff <= TOLERANCE

    with spliced.intervene(lambda site, x: reconstructions[site.key]):
        without_error = spliced(PROMPT_IDS)
    assert (without_error - plain).abs().max() > 1e-2, (
        "the error term must matter for this check to mean anything"
    )


def test_site_codes_match_the_sae_encoding_of_hf_activations(spliced):
    reference = hf_forward_with_edits(hf_twin(spliced.model), PROMPT_IDS, {})
    codes: dict[str, SiteCode] = {}
    with spliced.intervene(record_codes(codes)):
        logits = spliced(PROMPT_IDS)
    assert torch.allclose(logits, reference["logits"], atol=TOLERANCE)
    assert list(codes) == FORWARD_ORDER
    for site in spliced.sites:
        x = reference[(site.hook, site.layer)]
        expected = site.sae.encode(to_tl_convention(x, site.sae))
        assert torch.allclose(codes[site.key].feats, expected, atol=1e-5), site.key
        assert (expected > 0).any(), f"{site.key}: no active feature, the check would be vacuous"


def test_site_code_error_is_the_activation_minus_the_sae_reconstruction(spliced):
    reference = hf_forward_with_edits(hf_twin(spliced.model), PROMPT_IDS, {})
    for site in spliced.sites:
        x = reference[(site.hook, site.layer)]
        sae = site.sae
        x_hat = sae.decode(sae.encode(to_tl_convention(x, sae))) + (x - to_tl_convention(x, sae))
        code = site.code(x)
        assert torch.allclose(code.error, x - x_hat, atol=1e-5), site.key
        expected_scale = x.std(-1, keepdim=True) if sae.cfg.normalize_activations == "layer_norm" else 1.0
        assert torch.allclose(code.scale, torch.ones_like(code.scale) * expected_scale, atol=1e-5), site.key


# --- Zero ablation ----------------------------------------------------------


def active_features(spliced: SplicedModel) -> dict[str, list[tuple[int, int]]]:
    """(position, feature) pairs of active features at every site, clean run."""
    codes: dict[str, SiteCode] = {}
    with torch.no_grad(), spliced.intervene(record_codes(codes)):
        spliced(PROMPT_IDS)
    return {key: [tuple(p) for p in (code.feats[0] > 0).nonzero().tolist()] for key, code in codes.items()}


def test_batched_zero_ablation_equals_separate_hooked_forwards_per_row(spliced):
    active = active_features(spliced)
    # Per batch row: site key -> (position, feature) pairs to zero. Row 2 ablates nothing.
    plans: list[dict[str, list[tuple[int, int]]]] = [
        {"resid_0": active["resid_0"][3:5], "attn_1": active["attn_1"][:2]},
        {"mlp_0": active["mlp_0"][::7], "resid_1": active["resid_1"][-3:], "resid_2": active["resid_2"][:1]},
        {},
        {"attn_0": active["attn_0"][10:11], "mlp_2": active["mlp_2"][-1:]},
    ]
    targets = {
        key: torch.tensor(
            [(row, p, f) for row, plan in enumerate(plans) for p, f in plan.get(key, [])]
        ).long()
        for key in {key for plan in plans for key in plan}
    }
    ids = PROMPT_IDS.expand(len(plans), -1)
    with torch.no_grad(), spliced.intervene(zero_ablation(targets)):
        batched = spliced(ids)

    clean = spliced.model(PROMPT_IDS)[0]
    sites = spliced.by_key
    for row, plan in enumerate(plans):
        edits = {
            (sites[key].hook, sites[key].layer): (
                lambda x, sae=sites[key].sae, pairs=pairs: sae_ablate(sae, x, pairs)
            )
            for key, pairs in plan.items()
        }
        with torch.no_grad():
            expected = hf_forward_with_edits(hf_twin(spliced.model), PROMPT_IDS, edits)["logits"][0]
        assert torch.allclose(batched[row], expected, atol=TOLERANCE), f"row {row}"
        if plan:
            assert (expected - clean).abs().max() > 1e-3, f"row {row}: ablation had no visible effect"
        else:
            assert torch.allclose(batched[row], clean, atol=TOLERANCE)


def test_zero_ablation_fills_codes_of_every_site_when_asked(spliced):
    codes: dict[str, SiteCode] = {}
    with torch.no_grad(), spliced.intervene(zero_ablation({}, codes)):
        spliced(PROMPT_IDS)
    assert list(codes) == FORWARD_ORDER


# --- Hooks come off ---------------------------------------------------------


def test_hooks_are_removed_after_the_block(spliced):
    before = hook_count(spliced.model)
    with spliced.intervene(lambda site, x: x):
        assert hook_count(spliced.model) > before
    assert hook_count(spliced.model) == before


def test_hooks_are_removed_when_the_block_raises(spliced):
    before = hook_count(spliced.model)
    with pytest.raises(KeyError), spliced.intervene(lambda site, x: x):
        raise KeyError("boom")
    assert hook_count(spliced.model) == before


def test_hooks_are_removed_when_the_intervention_raises(spliced):
    plain = spliced.model(PROMPT_IDS)
    before = hook_count(spliced.model)

    def broken(site: Site, x: Tensor) -> Tensor:
        if site.key == "mlp_1":
            raise ValueError("intervention failed")
        return x * 0

    with pytest.raises(ValueError), spliced.intervene(broken):
        spliced(PROMPT_IDS)
    assert hook_count(spliced.model) == before
    assert torch.equal(spliced.model(PROMPT_IDS), plain)


# --- Gradients --------------------------------------------------------------


def last_token_log_prob(logits: Tensor) -> Tensor:
    return logits[0, -1].log_softmax(-1)[int(PROMPT_IDS[0, -1])]


def test_leaves_spliced_in_as_x_plus_v_minus_v_detach_receive_the_hf_activation_gradient(spliced):
    zeros: dict[tuple[str, int], Tensor] = {}

    def add_zero(key: tuple[str, int]) -> Edit:
        def edit(x: Tensor) -> Tensor:
            zeros[key] = torch.zeros_like(x, requires_grad=True)
            return x + zeros[key]

        return edit

    keys = [(site.hook, site.layer) for site in spliced.sites]
    reference = hf_forward_with_edits(
        hf_twin(spliced.model), PROMPT_IDS, {key: add_zero(key) for key in keys}
    )
    last_token_log_prob(reference["logits"]).backward()

    leaves: dict[str, Tensor] = {}

    def leaf(site: Site, x: Tensor) -> Tensor:
        leaves[site.key] = x.detach().clone().requires_grad_(True)
        return x + (leaves[site.key] - leaves[site.key].detach())

    with spliced.intervene(leaf):
        last_token_log_prob(spliced(PROMPT_IDS)).backward()
    for site in spliced.sites:
        expected = zeros[(site.hook, site.layer)].grad
        assert expected.abs().max() > 0
        assert torch.allclose(leaves[site.key].grad, expected, atol=1e-5), site.key


def test_feature_leaves_get_gradients_through_the_decoder(spliced):
    site = spliced.by_key["attn_1"]
    holder: dict[str, Tensor] = {}

    def features_as_leaf(s: Site, x: Tensor) -> Tensor:
        if s is not site:
            return x
        code = s.code(x)
        holder["feats"] = code.feats.detach().requires_grad_(True)
        x_hat = (holder["feats"] * code.scale) @ s.sae.W_dec
        return x.detach() + (x_hat - x_hat.detach())

    with spliced.intervene(features_as_leaf):
        last_token_log_prob(spliced(PROMPT_IDS)).backward()
    grad = holder["feats"].grad
    assert grad is not None and grad.abs().max() > 0


# --- TransformerLens' centred writing weights -------------------------------


def centre_writing_weights(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A copy whose every write into the residual stream has zero mean over d_model (TransformerLens)."""
    centred = copy.deepcopy(model)
    transformer = centred.transformer
    with torch.no_grad():
        for embedding in (transformer.wte, transformer.wpe):
            embedding.weight -= embedding.weight.mean(-1, keepdim=True)
        for block in transformer.h:
            for writer in (block.attn.c_proj, block.mlp.c_proj):  # Conv1D: out = x @ W (in, out) + b
                writer.weight -= writer.weight.mean(-1, keepdim=True)
                writer.bias -= writer.bias.mean()
    return centred


def test_hf_activations_minus_their_mean_equal_a_centred_weights_model(spliced):
    model = hf_twin(spliced.model).double()  # float64: the identity holds to rounding
    plain = hf_forward_with_edits(model, PROMPT_IDS, {})
    centred = hf_forward_with_edits(centre_writing_weights(model), PROMPT_IDS, {})
    hooks = [key for key in plain if key != "logits"]
    assert len(hooks) == 5 * spliced.n_layers
    for key in hooks:
        x = plain[key]
        assert torch.allclose(centred[key], x - x.mean(-1, keepdim=True), atol=1e-9), key
        assert centred[key].mean(-1).abs().max() < 1e-9
        assert x.mean(-1).abs().max() > 1e-3, f"{key}: already centred, the check would be vacuous"


def test_site_to_sae_space_is_transformerlens_centring(spliced):
    centred = hf_forward_with_edits(centre_writing_weights(hf_twin(spliced.model)), PROMPT_IDS, {})
    plain = hf_forward_with_edits(hf_twin(spliced.model), PROMPT_IDS, {})
    checked = 0
    for site in spliced.sites:
        if not site.sae.cfg.center_writing_weights:
            continue
        key = (site.hook, site.layer)
        assert torch.allclose(site.to_sae_space(plain[key]), centred[key], atol=1e-5), site.key
        assert torch.allclose(site.code(plain[key]).feats, site.sae.encode(centred[key]), atol=1e-5), site.key
        checked += 1
    assert checked >= 3


def test_sites_of_uncentred_saes_read_the_raw_activation(spliced):
    site = spliced.by_key["resid_1"]
    assert site.sae.cfg.center_writing_weights is False
    x = torch.randn(2, 5, site.sae.d_in) + 3.0
    assert torch.equal(site.to_sae_space(x), x)


def test_sae_folders_without_model_kwargs_default_to_centred_inputs(five_hook_templates):
    from sparse_coding.models.saes import load_sae

    sae = load_sae(five_hook_templates["resid"], 0)
    assert Path(five_hook_templates["resid"].format(layer=0)).is_dir()
    assert sae.cfg.center_writing_weights is True
