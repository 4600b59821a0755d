"""`models.transformer.GPT2` and `models.gpt2.load_model` against transformers' GPT2LMHeadModel."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from sparse_coding.errors import SparseCodingError
from sparse_coding.models.gpt2 import load_model
from sparse_coding.models.transformer import GPT2

HOOKS = ("resid_pre", "attn_out", "mlp_out", "resid_post")


def _hf_model(**overrides) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=60,
        n_positions=16,
        n_embd=32,
        n_layer=3,
        n_head=4,
        attn_implementation="eager",
        **overrides,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)  # larger than the init, so attention is far from uniform
    return model


def _model_folder(folder, tiny_model_dir, *, config_changes=None, copy_weights=True):
    """A model folder with the tiny model's tokenizer, its config.json (changed as asked) and,
    with `copy_weights`, its model.safetensors."""
    folder.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text()) | (config_changes or {})
    (folder / "config.json").write_text(json.dumps(config))
    if copy_weights:
        (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _activations(model, ids, mask) -> dict:
    """Every block's input, attention output, MLP output and output, by plain torch hooks."""
    acts, handles = {}, []
    for layer, block in enumerate(model.transformer.h):

        def keep(name, layer=layer):
            def hook(module, args, out=None):
                value = args[0] if out is None else out
                acts[name, layer] = (value[0] if isinstance(value, tuple) else value).detach()

            return hook

        handles += [
            block.register_forward_pre_hook(keep("resid_pre")),
            block.attn.register_forward_hook(keep("attn_out")),
            block.mlp.register_forward_hook(keep("mlp_out")),
            block.register_forward_hook(keep("resid_post")),
        ]
    try:
        out = model(ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return {"logits": getattr(out, "logits", out).detach(), **acts}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"scale_attn_by_inverse_layer_idx": True}, {"activation_function": "relu"}, {"n_inner": 48}],
    ids=["gpt2", "inverse-layer-scale", "relu", "n_inner"],
)
def test_logits_and_every_sites_activation_equal_transformers(overrides):
    hf = _hf_model(**overrides)
    ours = GPT2.from_transformers(hf)
    ids = torch.randint(0, 60, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[2, 3:] = 0, 0  # right padding
    expected, got = _activations(hf, ids, mask), _activations(ours, ids, mask)
    assert set(got) == set(expected) and len(got) == 1 + len(HOOKS) * 3
    for key, value in expected.items():
        real = mask.bool()
        assert torch.allclose(got[key][real], value[real], rtol=1e-5, atol=1e-5), key


def test_input_gradients_equal_transformers():
    hf = _hf_model()
    ours = GPT2.from_transformers(hf)
    ids = torch.randint(0, 60, (2, 10))
    grads = []
    for model in (hf, ours):
        embeddings = model.transformer.wte(ids).detach().requires_grad_(True)
        handle = model.transformer.h[0].register_forward_pre_hook(
            lambda m, args: (embeddings + model.transformer.wpe.weight[:10], *args[1:])
        )
        logits = model(ids)
        handle.remove()
        getattr(logits, "logits", logits)[:, -1].log_softmax(-1)[:, 7].sum().backward()
        grads.append(embeddings.grad)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_a_saved_folder_loads_in_the_asked_dtype_with_tied_weights(tmp_path, tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), torch.device("cpu"), torch.bfloat16)
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    assert model.dtype == torch.bfloat16 and not any(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(
        model.transformer.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.bfloat16()
    )
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    float_model, _ = load_model(str(tiny_model_dir), torch.device("cpu"))
    assert torch.allclose(float_model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_gpt2model_checkpoint_with_mask_buffers_loads_as_the_hub_gpt2_does(tmp_path, tiny_model_dir):
    """openai-community/gpt2 stores GPT2Model names (`h.0...`, no `transformer.`) and `attn.bias`."""
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    state = {
        name.removeprefix("transformer."): t
        for name, t in hf.state_dict().items()
        if name != "lm_head.weight"
    }
    n_pos = hf.config.n_positions
    state |= {f"h.{i}.attn.bias": torch.ones(1, 1, n_pos, n_pos).tril() for i in range(hf.config.n_layer)}
    folder = _model_folder(tmp_path / "hub_style", tiny_model_dir, copy_weights=False)
    save_file({name: t.contiguous() for name, t in state.items()}, str(folder / "model.safetensors"))
    model, _ = load_model(str(folder), torch.device("cpu"))
    ids = torch.randint(0, 40, (2, 9))
    assert torch.allclose(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_model_that_is_not_gpt2_is_named_with_its_file(tmp_path, tiny_model_dir):
    folder = _model_folder(tmp_path / "llama", tiny_model_dir, config_changes={"model_type": "llama"})
    with pytest.raises(SparseCodingError, match=r"config\.json: model_type is 'llama'.*GPT-2"):
        load_model(str(folder), torch.device("cpu"))


def test_weights_of_another_shape_name_the_missing_tensors(tmp_path, tiny_model_dir):
    n_layer = json.loads((tiny_model_dir / "config.json").read_text())["n_layer"]
    folder = _model_folder(tmp_path / "short", tiny_model_dir, config_changes={"n_layer": n_layer + 1})
    with pytest.raises(SparseCodingError, match=r"model\.safetensors.*missing \['transformer\.h\.\d+\."):
        load_model(str(folder), torch.device("cpu"))


def test_a_folder_without_weights_says_what_it_needs(tmp_path, tiny_model_dir):
    folder = _model_folder(tmp_path / "no_weights", tiny_model_dir, copy_weights=False)
    with pytest.raises(SparseCodingError, match="model.safetensors"):
        load_model(str(folder), torch.device("cpu"))


def test_a_hub_repo_with_only_pytorch_model_bin_loads_offline_from_the_cache(
    tmp_path, tiny_model_dir, hub_cache
):
    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    folder = _model_folder(tmp_path / "bin_only", tiny_model_dir, copy_weights=False)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    hub_cache("someone/old-gpt2", folder, "")
    model, _ = load_model("someone/old-gpt2", torch.device("cpu"))
    ids = torch.randint(0, 40, (1, 7))
    assert torch.allclose(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
