"""Builders of tiny transcoders in every published layout (file names, tensor names, cfg spellings).

Each writes what the real repositories hold (docs/transcoders.md) with random
weights of the tiny model's width, and returns the tensors it wrote, so tests
can apply each layout's own formula to them.
"""

import collections
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import D_MODEL
from safetensors.torch import save_file

D_TC = 48  # features per layer
SPARSIFY_K = 8
LAYOUTS = ("arena", "arena_b_dec_out", "saelens_transcoder", "dunefsky", "pickle", "sparsify", "sparsify_clt")
# The real file name (the width in it is not checked).
PICKLE_NAME = "final_sparse_autoencoder_gpt2-small_blocks.{layer}.ln2.hook_normalized_24576.pt"


def _weights(gen: torch.Generator, d_in: int, d_sae: int, scale: float) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) * scale / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1 - 0.05,
        "W_dec": torch.randn(d_sae, D_MODEL, generator=gen) * 0.3 / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
        "b_dec_out": torch.randn(D_MODEL, generator=gen) * 0.1,
    }


def write_layer(
    folder: Path, layout: str, layer: int, n_layers: int, seed: int = 0, skip: bool = False
) -> dict:
    """Write one layer of `layout` at `folder` (a file path for "pickle"); returns its tensors."""
    gen = torch.Generator().manual_seed(seed + 17 * layer)
    w = _weights(gen, D_MODEL, D_TC, scale=3.0 if layout.startswith("sparsify") else 1.5)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if layout == "pickle":
        _write_pickle(folder, layer, w)
        return w
    folder.mkdir(parents=True, exist_ok=True)
    if layout.startswith("arena"):
        _write_arena(folder, layer, w, b_dec_out=layout == "arena_b_dec_out")
    elif layout == "saelens_transcoder":
        _write_saelens_transcoder(folder, layer, w)
    elif layout == "dunefsky":
        _write_dunefsky(folder, layer, w)
    else:
        clt = layout == "sparsify_clt"
        n_sources = layer + 1 if clt else 1
        w["W_dec"] = torch.randn(n_sources * D_TC, D_MODEL, generator=gen) * 0.3 / D_TC**0.5
        if skip:
            w["W_skip"] = torch.randn(D_MODEL, D_MODEL, generator=gen) * 0.05
        _write_sparsify(folder, layer, n_layers, w, clt)
    return w


def _write_arena(folder: Path, layer: int, w: dict, b_dec_out: bool) -> None:
    cfg = {
        "architecture": "standard", "d_in": D_MODEL, "d_sae": D_TC, "dtype": "float32", "device": "cuda",
        "model_name": "gpt2-small", "hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_layer": layer,
        "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
        "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "sae_lens_training_version": None,
        "prepend_bos": True, "dataset_path": "Skylion007/openwebtext", "dataset_trust_remote_code": True,
        "context_size": 128, "normalize_activations": False if b_dec_out else "none", "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {},
    }  # fmt: skip
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    if b_dec_out:
        cfg["use_b_dec_out"] = True
        names.append("b_dec_out")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({name: w[name] for name in names}, str(folder / "sae_weights.safetensors"))


def _write_saelens_transcoder(folder: Path, layer: int, w: dict) -> None:
    cfg = {
        "architecture": "transcoder", "d_in": D_MODEL, "d_sae": D_TC, "d_out": D_MODEL, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
        "hook_name_out": f"blocks.{layer}.hook_mlp_out", "hook_layer_out": layer, "hook_head_index_out": None,
        "metadata": {"hook_name": f"blocks.{layer}.ln2.hook_normalized", "model_name": "gpt2",
                     "prepend_bos": True},
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    w["b_dec"] = w["b_dec_out"]
    save_file(
        {name: w[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")},
        str(folder / "sae_weights.safetensors"),
    )


def _write_dunefsky(folder: Path, layer: int, w: dict) -> None:
    sae = {"d_in": D_MODEL, "num_features": D_TC, "d_out": D_MODEL, "dtype": "torch.float32",
           "act_fn": "relu", "top_k": None, "tensors_filename": "sae.safetensors"}  # fmt: skip
    side = {"layer": layer, "parallel_attn_mlp": False}
    info = {
        "name": f"gpt2-small-dun-chl-mlp-tc{layer}", "input_layer": side | {"sublayer": "mlp_in"},
        "output_layer": side | {"sublayer": "mlp_out"}, "short_name": f"tc{layer}", "model_path": "gpt2",
        "upstreams": [], "sae_filename": "sae.json",
    }  # fmt: skip
    (folder / "sae.json").write_text(json.dumps(sae))
    (folder / "sae_info.json").write_text(json.dumps(info))
    w["b_dec"] = w["b_dec_out"]
    save_file(
        {name: w[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}, str(folder / "sae.safetensors")
    )


def _write_pickle(path: Path, layer: int, w: dict) -> None:
    """torch.save of {"cfg": LanguageModelSAERunnerConfig, "state_dict"}, as sae_training saves it."""
    module = types.ModuleType("sae_training.config")

    @dataclass
    class LanguageModelSAERunnerConfig:
        hook_point: str
        hook_point_layer: int
        d_in: int
        is_transcoder: bool
        out_hook_point: str
        d_out: int
        dtype: torch.dtype = torch.float32
        device: torch.device = torch.device("cpu")

    LanguageModelSAERunnerConfig.__module__ = module.__name__
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    module.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    saved = {name: sys.modules.get(name) for name in ("sae_training", "sae_training.config")}
    sys.modules.update({"sae_training": types.ModuleType("sae_training"), "sae_training.config": module})
    try:
        cfg = LanguageModelSAERunnerConfig(
            f"blocks.{layer}.ln2.hook_normalized",
            layer,
            D_MODEL,
            True,
            f"blocks.{layer}.hook_mlp_out",
            D_MODEL,
        )
        state = collections.OrderedDict(
            (name, w[name]) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out")
        )
        torch.save({"cfg": cfg, "state_dict": state}, path)
    finally:
        for name, old in saved.items():
            if old is None:
                del sys.modules[name]
            else:
                sys.modules[name] = old


def _write_sparsify(folder: Path, layer: int, n_layers: int, w: dict, clt: bool) -> None:
    cfg = {
        "activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_TC,
        "k": SPARSIFY_K, "multi_topk": False, "skip_connection": "W_skip" in w, "transcode": True,
        "n_targets": n_layers - layer if clt else 0, "n_sources": layer + 1 if clt else 1,
        "normalize_io": False, "divide_cross_layer": False, "train_post_encoder": True,
        "post_encoder_scale": False, "coalesce_topk": "per-layer" if clt else "none", "topk_coalesced": True,
        "d_in": D_MODEL,
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec_out"]}  # fmt: skip
    if "W_skip" in w:
        tensors["W_skip"] = w["W_skip"]
    save_file(tensors, str(folder / "sae.safetensors"))


def layer_path(root: Path, layout: str, layer: int) -> Path:
    """Where `write_set` puts a layer (the names the published repositories use)."""
    if layout == "pickle":
        return root / PICKLE_NAME.format(layer=layer)
    if layout == "dunefsky":
        return root / f"gpt2-small-dun-chl-mlp-tc{layer}"
    if layout.startswith("sparsify"):
        return root / f"h.{layer}.mlp"
    return root / f"gpt2-small-layer-{layer}-mlp-transcoder"


def write_set(
    root: Path, layout: str, n_layers: int, seed: int = 0, skip: bool = False
) -> tuple[str, list[dict]]:
    """Every layer of `layout` under `root`; returns (local `{layer}` template, tensors per layer)."""
    weights = [write_layer(layer_path(root, layout, layer), layout, layer, n_layers, seed, skip) for layer in
               range(n_layers)]  # fmt: skip
    return str(layer_path(root, layout, 999_999)).replace("999999", "{layer}"), weights
