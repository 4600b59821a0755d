"""The published artefacts' Hugging Face layouts, rebuilt with tiny random weights.

Repo ids, folder names, file names and cfg.json spellings are those of the hub
(facts and sources: README, "SAE sources"); only the sizes are tiny. These
builders never read `sparse_coding`'s own release table, so a wrong repo id,
folder or cfg reading there fails the tests that load from them.

- `openai-community/gpt2` (also reachable as `gpt2`, the name TransformerLens
  and SAELens use; the hub redirects it): config.json with the hub file's keys,
  model.safetensors with GPT2Model names (no `transformer.` prefix, the causal
  mask buffers `h.N.attn.bias` kept), tokenizer.json in the 2020 format (a
  `model` without `type`, `<|endoftext|>` the last id and `normalized: true`),
  tokenizer_config.json `{"model_max_length": 1024}`, vocab.json, merges.txt,
  generation_config.json.
- `gpt2-small-res-jb`: `jbloom/GPT2-Small-SAEs-Reformatted`, folders
  `blocks.{layer}.hook_resid_pre`, the old cfg spelling (`hook_point`,
  `hook_point_layer`, no `prepend_bos`, no activation or normalisation keys).
- the OpenAI v5 sets: `jbloom/GPT2-Small-OAI-v5-{32k,128k}-{resid-post,attn-out,mlp-out}-SAEs`,
  folders `v5_{width}_layer_{layer}` (`.pt` kept on the 32k resid-post ones),
  cfgs with `hook_name`, `activation_fn_str: topk` + `activation_fn_kwargs.k: 32`,
  `normalize_activations: layer_norm`, `prepend_bos: false`, `context_size: 64`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

GPT2_REPO = "openai-community/gpt2"
GPT2_ALIAS = "gpt2"
EOT = "<|endoftext|>"
TEXTS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The quick brown fox jumps over the lazy dog. Copyright (C) 2024 the authors.",
    "Sparse autoencoders find interpretable features in language models; 1 2 3 4 5.",
    "def forward(self, x): return self.linear(x) + x  # the sky is blue",
]
TINY = {"n_layer": 3, "n_embd": 32, "n_head": 4, "n_positions": 64}


@dataclass(frozen=True)
class PublishedSet:
    """One published SAE set as the hub and SAELens' registry hold it."""

    release: str  # SAELens' pretrained_saes.yaml name
    repo_id: str
    folder: str  # with {layer}
    hook: str  # TransformerLens hook, with {layer}
    neuronpedia: str  # with {layer}
    style: str  # "jb" (old cfg spelling, BOS) or "oai" (v5 cfg, no BOS)
    d_sae: int  # tiny stand-in for 24576 / 32768 / 131072


def _oai(width: str, kind: str, hook: str, np_set: str, suffix: str = "") -> PublishedSet:
    return PublishedSet(
        release=f"gpt2-small-{kind}-v5-{width}",
        repo_id=f"jbloom/GPT2-Small-OAI-v5-{width}-{kind}-SAEs",
        folder=f"v5_{width}_layer_{{layer}}{suffix}",
        hook=f"blocks.{{layer}}.{hook}",
        neuronpedia=f"gpt2-small/{{layer}}-{np_set}_{width}-oai",
        style="oai",
        d_sae=96 if width == "32k" else 128,
    )


PUBLISHED = {
    s.release: s
    for s in [
        PublishedSet(
            release="gpt2-small-res-jb",
            repo_id="jbloom/GPT2-Small-SAEs-Reformatted",
            folder="blocks.{layer}.hook_resid_pre",
            hook="blocks.{layer}.hook_resid_pre",
            neuronpedia="gpt2-small/{layer}-res-jb",
            style="jb",
            d_sae=72,
        ),
        _oai("32k", "resid-post", "hook_resid_post", "res_post", suffix=".pt"),
        _oai("128k", "resid-post", "hook_resid_post", "res_post"),
        _oai("32k", "attn-out", "hook_attn_out", "att"),
        _oai("128k", "attn-out", "hook_attn_out", "att"),
        _oai("32k", "mlp-out", "hook_mlp_out", "mlp"),
        _oai("128k", "mlp-out", "hook_mlp_out", "mlp"),
    ]
}


def res_jb_cfg(layer: int, d_in: int, d_sae: int) -> dict:
    """cfg.json of a `jbloom/GPT2-Small-SAEs-Reformatted` folder: SAELens 0.x training keys."""
    hook = f"blocks.{layer}.hook_resid_pre"
    return {
        "model_name": "gpt2-small",
        "hook_point": hook,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "cached_activations_path": f"activations/Skylion007_openwebtext/gpt2-small/{hook}",
        "d_in": d_in,
        "n_batches_in_buffer": 128,
        "total_training_tokens": 300000000,
        "store_batch_size": 32,
        "device": "cpu",
        "seed": 42,
        "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median",
        "expansion_factor": d_sae // d_in,
        "from_pretrained_path": None,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "feature_sampling_window": 1000,
        "feature_sampling_method": None,
        "resample_batches": 1028,
        "feature_reinit_scale": 0.2,
        "dead_feature_window": 5000,
        "dead_feature_estimation_method": "no_fire",
        "dead_feature_threshold": 1e-08,
        "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None,
        "wandb_log_frequency": 100,
        "n_checkpoints": 10,
        "checkpoint_path": "checkpoints/y1t51byy",
        "d_sae": d_sae,
        "tokens_per_buffer": 67108864,
        "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def oai_v5_cfg(hook: str, layer: int, d_in: int, d_sae: int) -> dict:
    """cfg.json of a `jbloom/GPT2-Small-OAI-v5-*-SAEs` folder."""
    return {
        "model_name": "gpt2-small",
        "hook_name": hook,
        "hook_layer": layer,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 32},
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "context_size": 64,
        "prepend_bos": False,
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "layer_norm",
        "dataset_path": "apollo-research/Skylion007-openwebtext-tokenizer-gpt2",
        "sae_lens_training_version": None,
    }


def write_published_folder(path: Path, published: PublishedSet, layer: int, d_in: int, seed: int) -> Path:
    """One layer's folder of a published set: its cfg.json and tiny random weights."""
    gen = torch.Generator().manual_seed(seed)
    d_sae = published.d_sae
    hook = published.hook.format(layer=layer)
    cfg = res_jb_cfg(layer, d_in, d_sae) if published.style == "jb" else oai_v5_cfg(hook, layer, d_in, d_sae)
    scale = 3.0 if published.style == "jb" else 1.0  # jb reads the raw stream, v5 its layer norm
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5 / scale,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1 - 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5 * scale,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg, indent=2))
    save_file(weights, str(path / "sae_weights.safetensors"))
    return path


# --- openai-community/gpt2 ------------------------------------------------------


def gpt2_config(vocab_size: int, *, n_layer: int, n_embd: int, n_head: int, n_positions: int) -> dict:
    """config.json with the keys of the hub's openai-community/gpt2 file, at tiny sizes."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": vocab_size - 1,
        "embd_pdrop": 0.1,
        "eos_token_id": vocab_size - 1,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": vocab_size,
    }


def write_2020_tokenizer(path: Path, texts: list[str] = TEXTS, vocab_size: int = 300) -> int:
    """tokenizer.json (2020 format), vocab.json, merges.txt and tokenizer_config.json of a byte-level
    BPE trained on `texts`, `<|endoftext|>` appended as the last id. Returns the vocabulary size."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 4, vocab_size=vocab_size, min_frequency=1, special_tokens=[])
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"]) | {EOT: len(trained["vocab"])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
    byte_level = {"type": "ByteLevel", "add_prefix_space": True}
    serialized = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[EOT], "special": True, "content": EOT, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        "post_processor": byte_level | {"trim_offsets": False},
        "decoder": byte_level | {"trim_offsets": True},
        "model": {"dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "vocab": vocab, "merges": merges},
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(serialized))
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    return len(vocab)


def gpt2_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """GPT2Model tensors by the hub file's names; layer-norm gains far from 1 (GPT-2's are)."""
    gen = torch.Generator().manual_seed(seed)
    d, n_pos, vocab = config["n_embd"], config["n_positions"], config["vocab_size"]

    def normal(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    def gain():
        return 0.2 + 2.0 * torch.rand(d, generator=gen)

    state = {"wte.weight": normal(vocab, d), "wpe.weight": normal(n_pos, d, std=0.1)}
    for i in range(config["n_layer"]):
        block = {
            "ln_1.weight": gain(), "ln_1.bias": normal(d, std=0.1),
            "attn.bias": torch.ones(n_pos, n_pos).tril()[None, None],
            "attn.c_attn.weight": normal(d, 3 * d), "attn.c_attn.bias": normal(3 * d, std=0.05),
            "attn.c_proj.weight": normal(d, d), "attn.c_proj.bias": normal(d, std=0.05),
            "ln_2.weight": gain(), "ln_2.bias": normal(d, std=0.1),
            "mlp.c_fc.weight": normal(d, 4 * d), "mlp.c_fc.bias": normal(4 * d, std=0.05),
            "mlp.c_proj.weight": normal(4 * d, d), "mlp.c_proj.bias": normal(d, std=0.05),
        }  # fmt: skip
        state |= {f"h.{i}.{name}": tensor for name, tensor in block.items()}
    return state | {"ln_f.weight": gain(), "ln_f.bias": normal(d, std=0.1)}


def write_gpt2_repo(path: Path, seed: int = 0, **sizes) -> Path:
    """A tiny openai-community/gpt2: the hub's file names and formats."""
    vocab_size = write_2020_tokenizer(path)
    config = gpt2_config(vocab_size, **(TINY | sizes))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"_from_model_config": True, "bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1}
    (path / "generation_config.json").write_text(json.dumps(generation | {"transformers_version": "4.26.0"}))
    save_file(gpt2_weights(config, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def write_published(
    root: Path, n_layers: int = TINY["n_layer"], d_in: int = TINY["n_embd"]
) -> list[tuple[str, Path, str]]:
    """The model and every published set's folders under `root`; returns (repo id, local folder,
    folder name in the repo) of each, for a hub cache."""
    entries = [(GPT2_REPO, write_gpt2_repo(root / "gpt2"), ""), (GPT2_ALIAS, root / "gpt2", "")]
    for index, published in enumerate(PUBLISHED.values()):
        for layer in range(n_layers):
            folder = published.folder.format(layer=layer)
            local = write_published_folder(root / published.release / folder, published, layer, d_in,
                                           seed=1000 * index + layer)  # fmt: skip
            entries.append((published.repo_id, local, folder))
    return entries


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, name_in_repo: str) -> None:
    """Put `folder`'s files at `name_in_repo` of `repo_id` in a Hugging Face hub cache (one commit)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / name_in_repo
    target.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        if file.is_file():
            (target / file.name).write_bytes(file.read_bytes())
