"""GPT-2 as a small torch module, read top to bottom, with Hugging Face's parameter names.

Why not `transformers.GPT2LMHeadModel`: importing transformers' model classes
costs seconds before any work starts (its modeling utilities pull in
torch.distributed, dynamo and more), and every script pays it. This module is
the eager GPT-2 computation only: embeddings, pre-layer-norm blocks of causal
self-attention and MLP, final layer norm, tied unembedding. Its state dict
has the names of a `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`,
...), so a Hugging Face checkpoint loads as it is (`models.gpt2.load_model`),
and `tests/test_transformer.py` checks logits, every site's activation and
gradients against `GPT2LMHeadModel` itself.

Hook points (`splicing.splice`): each block's input and output, and its
`.attn` and `.mlp` outputs. Generation (`forward_cached`, `KVCache`) runs one
position per new token on left-padded batches; hooks see the same tensors
there, one chunk of positions at a time.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_coding.errors import SparseCodingError

# config.json activation_function -> the function (gelu_new is tanh-approximated GELU).
ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


@dataclass(frozen=True)
class GPT2Config:
    """The fields of a Hugging Face GPT-2 config.json that the computation uses."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "GPT2Config":
        """The config of a config.json's contents; `source` names the file in errors."""
        model_type = values.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise SparseCodingError(
                f"{source}: model_type is {model_type!r}; SAE splicing supports GPT-2 models "
                f"(model_type 'gpt2'), e.g. 'openai-community/gpt2'"
            )
        if values.get("add_cross_attention"):
            raise SparseCodingError(
                f"{source}: add_cross_attention is set; only decoder-only GPT-2 is supported"
            )
        config = cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})
        if config.activation_function not in ACTIVATIONS:
            raise SparseCodingError(
                f"{source}: activation_function {config.activation_function!r} is not supported; "
                f"valid: {', '.join(ACTIVATIONS)}"
            )
        if config.n_embd % config.n_head:
            raise SparseCodingError(
                f"{source}: n_embd {config.n_embd} is not a multiple of n_head {config.n_head}"
            )
        return config

    @classmethod
    def from_file(cls, path: Path) -> "GPT2Config":
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SparseCodingError(f"{path}: not a readable config.json ({e})") from e
        if not isinstance(values, dict):
            raise SparseCodingError(
                f"{path} holds a JSON {type(values).__name__}; a model's config.json is an object of "
                f"settings such as n_layer, n_embd and vocab_size"
            )
        return cls.from_dict(values, str(path))


class Projection(nn.Module):
    """An affine map stored as Hugging Face's GPT-2 `Conv1D`: weight (in, out), bias (out,)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.T, self.bias)


def attention_weights(queries: Tensor, keys: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """Softmax attention weights (..., n_head, n_query, n_key); `allowed` broadcasts to them. The
    softmax runs in at least float32 (bfloat16 models too)."""
    scores = (queries @ keys.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))


def attend(queries: Tensor, keys: Tensor, values: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """`attention_weights` applied to `values`: (..., n_head, n_query, head_dim)."""
    return attention_weights(queries, keys, allowed, scale).to(values.dtype) @ values


class Attention(nn.Module):
    """Causal multi-head self-attention; returns its output projection (hook_attn_out)."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.n_embd // config.n_head
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)
        self.c_attn = Projection(config.n_embd, 3 * config.n_embd)
        self.c_proj = Projection(config.n_embd, config.n_embd)

    def project(self, x: Tensor, start: int, stop: int | None = None) -> Tensor:
        """Columns start:stop of c_attn(x) alone (queries, then keys, then values, d_model each)."""
        return F.linear(x, self.c_attn.weight[:, start:stop].T, self.c_attn.bias[start:stop])

    def heads(self, x: Tensor) -> Tensor:
        """(..., pos, d_model) -> (..., n_head, pos, head_dim)."""
        return x.unflatten(-1, (-1, self.head_dim)).transpose(-2, -3)

    @staticmethod
    def merge_heads(x: Tensor) -> Tensor:
        """(..., n_head, pos, head_dim) -> (..., pos, d_model)."""
        return x.transpose(-2, -3).flatten(-2)

    def forward(self, x: Tensor, allowed: Tensor, cache: "KVCache | None" = None) -> Tensor:
        """x (batch, pos, d_model) after ln_1; allowed (batch or 1, 1, pos, cache.length + pos).

        With a `cache`, this chunk's keys and values are stored after the
        `cache.length` positions already there, and the queries attend to all of them.
        """
        queries, keys, values = (self.heads(part) for part in self.c_attn(x).chunk(3, dim=-1))
        if cache is not None:
            start, end = cache.length, cache.length + x.shape[-2]
            cached_keys, cached_values = cache.keys[self.layer_idx], cache.values[self.layer_idx]
            cached_keys[..., start:end, :] = keys
            cached_values[..., start:end, :] = values
            keys, values = cached_keys[..., :end, :], cached_values[..., :end, :]
        return self.c_proj(self.merge_heads(attend(queries, keys, values, allowed, self.scale)))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Projection(config.n_embd, inner)
        self.c_proj = Projection(inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    """resid_mid = resid_pre + attn(ln_1(resid_pre)); resid_post = resid_mid + mlp(ln_2(resid_mid))."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden: Tensor, allowed: Tensor, cache: "KVCache | None" = None) -> Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), allowed, cache)
        return hidden + self.mlp(self.ln_2(hidden))


class Trunk(nn.Module):
    """What `GPT2LMHeadModel.transformer` holds: embeddings, blocks, final layer norm."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        # Uninitialised (`_weight`): the weights come from a checkpoint, and nn.Embedding's own
        # normal_ init on the meta device would import torch._dynamo.
        self.wte = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.wpe = nn.Embedding(
            config.n_positions, config.n_embd, _weight=torch.empty(config.n_positions, config.n_embd)
        )
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2(nn.Module):
    """GPT-2 with a language-model head; `forward` returns logits (batch, pos, vocab).

    Built uninitialised: load it with `from_state_dict`, `from_transformers` or
    `models.gpt2.load_model`.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = Trunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token + position embeddings (batch, pos, d_model)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.transformer.wte(input_ids) + self.transformer.wpe(positions)[None]

    def run_blocks(
        self, hidden: Tensor, start: int, stop: int, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Blocks [start, stop) on a residual stream (batch, pos, d_model); `attention_mask`
        (batch, pos) marks real tokens (right padding only)."""
        allowed = causal_mask(hidden.shape[1], attention_mask, hidden.device)
        for block in self.transformer.h[start:stop]:
            hidden = block(hidden, allowed)
        return hidden

    def unembed(self, resid_final: Tensor) -> Tensor:
        """Logits of the final residual stream."""
        return self.lm_head(self.transformer.ln_f(resid_final))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (batch, pos, vocab)."""
        return self.unembed(self.run_blocks(self.embed(input_ids), 0, self.config.n_layer, attention_mask))

    def forward_cached(
        self, input_ids: Tensor, attention_mask: Tensor, cache: "KVCache | None" = None
    ) -> Tensor:
        """Final residual stream (batch, n, d_model) of `input_ids` (batch, n) following the
        `cache.length` positions already in `cache` (none without one), which it extends.

        `attention_mask` (batch, cache.length + n) marks real tokens over every
        position so far; padding may be on the left, as each token's position
        counts the real tokens before it. Pad positions attend to themselves only.
        """
        start = 0 if cache is None else cache.length
        n = input_ids.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        hidden = self.transformer.wte(input_ids) + self.transformer.wpe(positions)
        allowed = cached_causal_mask(start, n, attention_mask.bool())
        for block in self.transformer.h:
            hidden = block(hidden, allowed, cache)
        if cache is not None:
            cache.length = start + n
        return hidden

    @classmethod
    def from_state_dict(cls, config: GPT2Config, state: dict[str, Tensor], source: str) -> "GPT2":
        """The model with `state`'s tensors as its parameters (no copies, no random init).

        Accepts a `GPT2LMHeadModel`'s names and a `GPT2Model`'s (see `checkpoint_names`).
        """
        mapping = checkpoint_names(list(state), config.tie_word_embeddings)
        names = {ours: state[theirs] for theirs, ours in mapping.items()}
        with torch.device("meta"):
            model = cls(config)
        check_shapes(model, {name: tuple(tensor.shape) for name, tensor in names.items()}, source)
        model.load_state_dict(names, assign=True, strict=False)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.transformer.wte.weight
        return model.eval().requires_grad_(False)

    @classmethod
    def from_transformers(cls, hf_model: nn.Module) -> "GPT2":
        """The same weights as a loaded `transformers` GPT-2 (for notebooks and tests)."""
        config = GPT2Config.from_dict(hf_model.config.to_dict(), type(hf_model).__name__)
        state = {name: tensor.detach() for name, tensor in hf_model.state_dict().items()}
        return cls.from_state_dict(config, state, type(hf_model).__name__)


def checkpoint_names(names: list[str], tied: bool) -> dict[str, str]:
    """Checkpoint tensor name -> `GPT2` parameter name, for the tensors the model uses.

    A `GPT2LMHeadModel`'s names are kept; a `GPT2Model`'s (no `transformer.` prefix, as on the
    hub's openai-community/gpt2) get it; the causal-mask buffers old checkpoints carry
    (`attn.bias`, `attn.masked_bias`) and a tied `lm_head.weight` are left out.
    """
    mapping = {}
    for name in names:
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (tied and name == "lm_head.weight"):
            continue
        mapping[name] = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
    return mapping


# config.json keys that size each kind of parameter, named when a shape disagrees.
_SIZE_KEYS = {
    "wte": "vocab_size, n_embd",
    "lm_head": "vocab_size, n_embd",
    "wpe": "n_positions, n_embd",
    "mlp.c_": "n_inner, n_embd",
}


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The checkpoint's tensors (`GPT2` names -> shapes) are exactly the parameters of `model` (built
    on the meta device from config.json), else one message naming the tensors and config keys."""
    expected = {name: tuple(param.shape) for name, param in model.named_parameters()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise SparseCodingError(
            f"{source}: the weights do not fit a GPT-2 of its config.json "
            f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''})"
        )
    wrong = [name for name in expected if shapes[name] != expected[name]]
    if wrong:
        name = wrong[0]
        keys = next((keys for part, keys in _SIZE_KEYS.items() if part in name), "n_embd")
        raise SparseCodingError(
            f"{source}: {len(wrong)} weight(s) do not have the shapes config.json implies, e.g. {name} is "
            f"{list(shapes[name])} but config.json ({keys}) makes it {list(expected[name])}; the config "
            f"and the weights belong to different models"
        )


def causal_mask(n_pos: int, attention_mask: Tensor | None, device: torch.device) -> Tensor:
    """(batch or 1, 1, pos, pos) bool: where a query may attend (earlier real tokens and itself)."""
    allowed = torch.ones(n_pos, n_pos, dtype=torch.bool, device=device).tril()[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


def cached_causal_mask(start: int, n: int, real: Tensor) -> Tensor:
    """(batch, 1, n, start + n) bool: queries at positions start.. start + n - 1 may attend to
    earlier and equal positions that are real (`real`: (batch, start + n)), pads to themselves."""
    query = torch.arange(start, start + n, device=real.device)[:, None]
    key = torch.arange(start + n, device=real.device)[None, :]
    return ((key <= query) & real[:, None, None, :]) | (key == query)


class KVCache:
    """Every layer's attention keys and values of the positions run so far, preallocated.

    Made with `KVCache.for_model(model, batch, max_len)`; `GPT2.forward_cached`
    fills it chunk by chunk (the prompt, then one token per step).
    """

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys = keys  # (n_layer, batch, n_head, max_len, head_dim)
        self.values = values
        self.length = 0

    @classmethod
    def for_model(cls, model: GPT2, batch: int, max_len: int) -> "KVCache":
        config = model.config
        shape = (config.n_layer, batch, config.n_head, max_len, config.n_embd // config.n_head)
        empty = torch.empty(shape, device=model.device, dtype=model.dtype)
        return cls(empty, torch.empty_like(empty))
