"""Shared builders: a tiny GPT-2 in Hugging Face format and tiny SAEs in SAELens folders.

Everything is offline: `HF_HUB_OFFLINE=1` is set before any hub library loads,
and hub sources resolve through a temporary hub cache (`hub_cache`).
"""

import json
import os
import random
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

D_MODEL = 32
N_LAYERS = 3
D_SAE = 64
TOPK = 6
CORPUS = [
    "Copyright (C) 2024 the authors. All rights reserved.",
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "def forward(self, x): return self.linear(x) + x",
    "In 1969 the first humans walked on the moon; it was a giant leap.",
    "Sparse autoencoders find interpretable features in language models.",
    "<html><body>Hello & goodbye</body></html>",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
]


# Tiny models: thread start-up costs more than it saves, and on a busy 2-core
# machine extra threads slow every op (measured 8 ms vs 0.1 ms per tiny op).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def build_tiny_gpt2(path: Path, *, n_layers: int = N_LAYERS, d_model: int = D_MODEL, seed: int = 0) -> Path:
    """Save a random GPT2LMHeadModel and a byte-level BPE tokenizer at `path`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # larger weights than init, so that layers matter
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_sae_folder(
    path: Path,
    *,
    hook_name: str,
    activation: str = "relu",
    layer_norm: bool = False,
    spelling: str = "new",
    d_in: int = D_MODEL,
    d_sae: int = D_SAE,
    k: int = TOPK,
    center_writing_weights: bool | None = None,
    seed: int = 0,
) -> Path:
    """Write cfg.json + sae_weights.safetensors in SAELens' format.

    spelling: "old" (hook_point, activation_fn_str), "new" (hook_name,
    architecture), or "v6" (metadata block).
    """
    gen = torch.Generator().manual_seed(seed)
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.1 - 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
    }
    if activation == "jumprelu":
        weights["threshold"] = torch.rand(d_sae, generator=gen) * 0.3
    cfg: dict = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "context_size": 64, "prepend_bos": True}
    norm = "layer_norm" if layer_norm else "none"
    if spelling == "old":
        layer = int(hook_name.split(".")[1])
        cfg |= {
            "hook_point": hook_name,
            "hook_point_layer": layer,
            "activation_fn_str": activation,
            "normalize_activations": norm,
            "apply_b_dec_to_input": True,
        }
        if activation == "topk":
            cfg["activation_fn_kwargs"] = {"k": k}
    else:
        architecture = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[activation]
        cfg |= {"architecture": architecture, "apply_b_dec_to_input": True, "normalize_activations": norm}
        if activation == "topk":
            cfg["activation_fn_kwargs"] = {"k": k}
        meta = {"hook_name": hook_name, "model_name": "tiny-gpt2"}
        cfg |= {"metadata": meta} if spelling == "v6" else meta
    if center_writing_weights is not None:
        cfg["model_from_pretrained_kwargs"] = {"center_writing_weights": center_writing_weights}
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(path / "sae_weights.safetensors"))
    return path


# Site -> (hook template, write_sae_folder options): resid in the jb style,
# attn/mlp in the OpenAI v5 style.
SAE_STYLES = {
    "resid": ("blocks.{layer}.hook_resid_pre", {"activation": "relu", "spelling": "old"}),
    "attn": ("blocks.{layer}.hook_attn_out", {"activation": "topk", "layer_norm": True}),
    "mlp": ("blocks.{layer}.hook_mlp_out", {"activation": "topk", "layer_norm": True, "spelling": "v6"}),
}


def write_sae_set(root: Path, site: str, n_layers: int = N_LAYERS, **overrides) -> str:
    """SAE folders for every layer of one site; returns the local `{layer}` template."""
    hook, options = SAE_STYLES[site]
    for layer in range(n_layers):
        write_sae_folder(
            root / f"{site}_{layer}",
            hook_name=hook.format(layer=layer),
            seed=100 * layer + len(site),
            **(options | overrides),
        )
    return str(root / f"{site}_{{layer}}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def sae_templates(tmp_path_factory) -> dict[str, str]:
    """Local `{layer}` templates for resid (ReLU, centred), attn and mlp (TopK, layer norm)."""
    root = tmp_path_factory.mktemp("saes")
    return {site: write_sae_set(root, site) for site in SAE_STYLES}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache served offline; returns add(repo_id, folder_path, name_in_repo)."""
    import huggingface_hub.constants as constants
    from hub_layouts import add_to_hub_cache

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def add(repo_id: str, folder: Path, name_in_repo: str) -> None:
        add_to_hub_cache(cache, repo_id, folder, name_in_repo)

    return add


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, sae_templates):
    """make_config(**overrides) -> a validated Config for the tiny model, writing under tmp_path."""
    from sparse_coding.config import config_from_dict

    def build(**overrides):
        return config_from_dict(tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | overrides)

    return build


def tiny_config_dict(tmp_path: Path, model_dir: Path, templates: dict[str, str]) -> dict:
    """Config keys (as in the YAML) for the tiny model with all three sites, writing under tmp_path."""
    return {
        "MODEL_DIR": str(model_dir),
        "RESID_SAES": templates.get("resid"),
        "ATTN_SAES": templates.get("attn"),
        "MLP_SAES": templates.get("mlp"),
        "ACTS_LAYERS_SLICE": f"0:{N_LAYERS}",
        "DATA_DIR": str(tmp_path / "data"),
        "DEVICE": "cpu",
        "NEURONPEDIA": False,
        "PROMPT": "When Mary and John went to the store, John gave a drink to",
        "PREPEND_BOS": True,  # as the tiny SAEs' cfgs say; unset, it is settled when they load
    }


class MpsLikeDtypes:
    """Dispatch mode that fails on any float64 tensor, as Apple's MPS backend does.

    Forces the code's float64 accumulation onto the CPU path: only tensors
    lifted from NumPy arrays (CPU by construction) may be float64.
    """

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                results = out if isinstance(out, (tuple, list)) else (out,)
                if func is not torch.ops.aten.lift_fresh.default and any(
                    isinstance(r, torch.Tensor) and r.dtype == torch.float64 for r in results
                ):
                    raise TypeError(f"{func} made a float64 tensor; MPS has no float64")
                return out

        self.mode = Mode()
        return self.mode.__enter__()

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (selenium), network log kept; skips without one."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install .[test])"
    )
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.skip(f"no browser: {missing} missing (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- plain references
# Slow references for the attribution tests: plain torch hooks on the model
# and the SAE's own encode/decode; nothing here calls the splicer. (That the
# model computes what transformers' GPT2LMHeadModel computes, at every site,
# is tests/test_transformer.py's job; `hf_twin` gives that model.)


def hf_twin(model):
    """transformers' GPT2LMHeadModel (eager attention) with the weights of our GPT2 `model`."""
    from dataclasses import asdict

    from transformers import GPT2Config, GPT2LMHeadModel

    twin = GPT2LMHeadModel(GPT2Config(**asdict(model.config), attn_implementation="eager"))
    twin.load_state_dict(model.state_dict())
    return twin.to(model.dtype).eval().requires_grad_(False)


def module_hook(model, key: str, fn):
    """Plain hook replacing a site's activation by fn(x)."""
    site, layer = key.rsplit("_", 1)
    block = model.transformer.h[int(layer)]
    if site == "resid":
        return block.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
    return (block.attn if site == "attn" else block.mlp).register_forward_hook(lambda m, a, out: fn(out))


@contextmanager
def hooks(model, fns: dict):
    handles = [module_hook(model, key, fn) for key, fn in fns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def float64_prompt(tmp_path_factory, model_dir: Path, templates: dict[str, str], prompt: str):
    """(spliced model in float64 with every tiny SAE site, the prompt as one example batch)."""
    from sparse_coding.config import config_from_dict
    from sparse_coding.pipelines.loading import load_spliced_model
    from sparse_coding.text.pairs import Pair, example_batches, tokenize_pair

    data = tmp_path_factory.mktemp("data")
    config = config_from_dict(tiny_config_dict(data, model_dir, templates) | {"DTYPE": "float64"})
    spliced, tokenizer = load_spliced_model(config)
    example = tokenize_pair(Pair(prompt), tokenizer, prepend_bos=True, max_len=64)
    (batch,) = example_batches([example], batch_size=1, pad_id=0, device="cpu")
    return spliced, batch


def plain_activations(spliced, inputs) -> dict:
    """Plain activations (no splicing) at every site of `spliced`."""
    acts = {}
    fns = {key: (lambda key: lambda x: acts.__setitem__(key, x.detach()) or x)(key) for key in spliced.by_key}
    with hooks(spliced.model, fns), torch.no_grad():
        spliced.model(inputs)
    return acts


def node_value(sae, x):
    """Reference node value per position: SAE activation times its layer-norm scale (1 without)."""
    x_tl = x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x
    feats = sae.encode(x_tl)
    if sae.cfg.normalize_activations == "layer_norm":
        centred = x_tl - x_tl.mean(-1, keepdim=True)
        feats = feats * centred.std(-1, keepdim=True)
    return feats


def sae_error(sae, x):
    x_tl = x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x
    return x_tl - sae.decode(sae.encode(x_tl))


@pytest.fixture
def unreachable_hub(hub_cache, monkeypatch):
    """Online, but the hub is a local port that refuses every connection at once."""
    import socket

    import huggingface_hub.constants as constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    yield
    closed.close()


@pytest.fixture(scope="session")
def published_folders(tmp_path_factory) -> list:
    """Tiny stand-ins of openai-community/gpt2 and every published SAE set, in their hub layouts."""
    from hub_layouts import write_published

    return write_published(tmp_path_factory.mktemp("published"))


@pytest.fixture
def real_hub(hub_cache, published_folders, tmp_path) -> Path:
    """A hub cache (offline) holding `published_folders` under their real repo ids; returns its path."""
    for repo_id, folder, name_in_repo in published_folders:
        hub_cache(repo_id, folder, name_in_repo)
    return tmp_path / "hub"
