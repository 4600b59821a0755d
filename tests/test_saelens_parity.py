"""Cross-checks against SAELens and TransformerLens themselves, when they are installed.

The rest of the suite checks formulas written out by hand; these tests ask the
reference libraries directly: SAELens loads the same folders and encodes the
same inputs, and TransformerLens (weights processed as SAELens trained on them:
fold_ln, center_writing_weights, center_unembed) produces the activations our
splicer converts the Hugging Face model's activations into. Install them with
`pip install sae-lens transformer-lens` to run these (skipped otherwise; CI
does not install them).
"""

import pytest
import torch
from conftest import write_sae_folder

from sparse_coding.config import config_from_dict
from sparse_coding.models.saes import load_sae
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.splicing.splice import record_codes

sae_lens = pytest.importorskip("sae_lens")
transformer_lens = pytest.importorskip("transformer_lens")

VARIANTS = {
    "relu, old cfg spelling": dict(hook_name="blocks.1.hook_resid_pre", activation="relu", spelling="old"),
    "relu, new spelling": dict(hook_name="blocks.1.hook_resid_pre", activation="relu", spelling="new"),
    "topk + layer norm": dict(hook_name="blocks.1.hook_attn_out", activation="topk", layer_norm=True),
    "topk + layer norm, v6": dict(
        hook_name="blocks.1.hook_mlp_out", activation="topk", layer_norm=True, spelling="v6"
    ),
    "jumprelu": dict(hook_name="blocks.1.hook_resid_post", activation="jumprelu"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_and_decode_equal_saelens_on_the_same_folder(tmp_path, variant):
    folder = write_sae_folder(tmp_path / "sae_1", **VARIANTS[variant])
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    ours = load_sae(str(tmp_path / "sae_{layer}"), 1)
    x = torch.randn(4, 7, 32) * 3
    torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
    feats = theirs.encode(x)
    torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(feats), rtol=1e-5, atol=1e-5)


def _hooked_transformer(model_dir):
    """TransformerLens' GPT-2 from our tiny Hugging Face model, processed as for SAELens' SAEs."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    c = hf.config
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn="gelu_new",
        normalization_type="LN", device="cpu", default_prepend_bos=False,
    )  # fmt: skip
    model = transformer_lens.HookedTransformer(cfg)
    state = transformer_lens.loading_from_pretrained.convert_gpt2_weights(hf, cfg)
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.eval()


def test_spliced_features_equal_saelens_encode_of_transformerlens_activations(
    tiny_model_dir, sae_templates, tmp_path
):
    """The Neuronpedia claim: our features = SAELens encode on TransformerLens' hook activations."""
    config = config_from_dict({
        "MODEL_DIR": str(tiny_model_dir), "RESID_SAES": sae_templates["resid"],
        "ATTN_SAES": sae_templates["attn"], "MLP_SAES": sae_templates["mlp"], "ACTS_LAYERS_SLICE": "0:3",
        "DEVICE": "cpu", "DATA_DIR": str(tmp_path),
    })  # fmt: skip
    spliced, tokenizer = load_spliced_model(config)
    ids = tokenizer("<|endoftext|>When Mary and John went to the store", return_tensors="pt")["input_ids"]
    codes = {}
    with torch.no_grad(), spliced.intervene(record_codes(codes)):
        spliced(ids)
    model = _hooked_transformer(tiny_model_dir)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    # center_unembed shifts each position's logits by a constant: compare log-probabilities.
    torch.testing.assert_close(
        logits.log_softmax(-1), spliced.model(ids).log_softmax(-1), rtol=1e-4, atol=1e-4
    )
    for key, site in spliced.by_key.items():
        theirs = sae_lens.SAE.load_from_disk(sae_templates[site.kind].format(layer=site.layer), device="cpu")
        expected = theirs.encode(cache[site.sae.hook_name])
        torch.testing.assert_close(codes[key].feats, expected, rtol=1e-4, atol=1e-4, msg=key)
