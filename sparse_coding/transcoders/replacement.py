"""The local replacement model: GPT-2 with transcoders for its MLPs, frozen where it is not linear.

Ameisen et al. 2025 ("Circuit Tracing"), as decoderesearch/circuit-tracer
implements it:

1. `clean_run`: the model's own forward, block by block, recording what the
   replacement freezes: every layer norm's scale sqrt(var + eps) and every
   attention pattern, plus each layer's transcoder input and MLP output.
2. `replace`: each transcoder layer's active features (none at a leading BOS
   position, whose outputs are constants: its activations are outliers),
   and each MLP output split into parts: a constant (the output bias, the
   skip connection, the BOS position), the features' decoded rows, and the
   error (the clean output minus the rest).
3. `frozen_forward`: the map from (token embeddings, MLP outputs) to every
   layer's transcoder input and the final normalised stream, with layer norms
   dividing by the frozen scales and attention mixing positions with the
   frozen patterns (values and output projections stay). It is linear, MLP
   outputs enter it as inputs (an MLP's input reaches its output only through
   a skip connection), and at the clean run's parts it reproduces the model's
   logits exactly.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sparse_coding.models.transformer import GPT2, attention_weights
from sparse_coding.transcoders.transcoder import TranscoderSet


@dataclass
class Frozen:
    """The clean run's layer-norm scales and attention patterns (one prompt)."""

    ln1: Tensor  # (n_layers, pos, 1)
    ln2: Tensor  # (n_layers, pos, 1)
    lnf: Tensor  # (pos, 1)
    patterns: Tensor  # (n_layers, n_head, pos, pos)


class ActiveFeatures(NamedTuple):
    """Active transcoder features, sorted by (layer, position, index); each (n,)."""

    layer: Tensor
    pos: Tensor
    index: Tensor
    activation: Tensor


@dataclass
class Replacement:
    """One prompt through the replacement model: frozen quantities, features, errors."""

    input_ids: Tensor  # (pos,)
    frozen: Frozen
    embeds: Tensor  # (pos, d_model) token embeddings (the positional ones are a constant)
    logits: Tensor  # (pos, d_vocab) clean logits
    features: ActiveFeatures
    constant: Tensor  # (n_layers, pos, d_model) output bias, skip, BOS position
    errors: Tensor  # (n_layers, pos, d_model)


def layer_scale(x: Tensor, eps: float) -> Tensor:
    """A layer norm's divisor sqrt(var + eps) (..., 1), as torch's LayerNorm computes it."""
    return (x.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()


def frozen_layer_norm(x: Tensor, ln: nn.LayerNorm, scale: Tensor) -> Tensor:
    """ln(x) with its divisor given: (x - mean(x)) / scale * gain + bias (linear in x)."""
    return (x - x.mean(dim=-1, keepdim=True)) / scale * ln.weight + ln.bias


def transcoder_input(h_mid: Tensor, scale: Tensor, hook: str) -> Tensor:
    """A layer's transcoder input from its h_mid: ``ln2.hook_normalized`` or ``hook_resid_mid``."""
    if hook == "hook_resid_mid":
        return h_mid
    return (h_mid - h_mid.mean(dim=-1, keepdim=True)) / scale


def attention_pattern(attn: nn.Module, x: Tensor) -> Tensor:
    """Causal softmax attention weights (..., n_head, pos, pos) of ln_1's output x (..., pos, d)."""
    queries, keys, _ = (attn.heads(part) for part in attn.c_attn(x).chunk(3, dim=-1))
    allowed = torch.ones(x.shape[-2], x.shape[-2], dtype=torch.bool, device=x.device).tril()
    return attention_weights(queries, keys, allowed, attn.scale).to(x.dtype)


def attention_with_pattern(attn: nn.Module, x: Tensor, pattern: Tensor) -> Tensor:
    """The attention output given its pattern: only values and output projection act on x."""
    values = attn.project(x, 2 * x.shape[-1])
    return attn.c_proj(attn.merge_heads(pattern @ attn.heads(values)))


@torch.no_grad()
def clean_run(
    model: GPT2, transcoders: TranscoderSet, input_ids: Tensor
) -> tuple[Frozen, Tensor, Tensor, Tensor]:
    """(frozen quantities, transcoder inputs, MLP outputs, logits) of one prompt (pos,)."""
    h = model.embed(input_ids[None])[0]
    ln1, ln2, patterns, inputs, outputs = [], [], [], [], []
    for layer, block in enumerate(model.transformer.h):
        ln1.append(layer_scale(h, block.ln_1.eps))
        x1 = frozen_layer_norm(h, block.ln_1, ln1[-1])
        patterns.append(attention_pattern(block.attn, x1))
        h_mid = h + attention_with_pattern(block.attn, x1, patterns[-1])
        ln2.append(layer_scale(h_mid, block.ln_2.eps))
        inputs.append(transcoder_input(h_mid, ln2[-1], transcoders.input_hook(layer)))
        outputs.append(block.mlp(frozen_layer_norm(h_mid, block.ln_2, ln2[-1])))
        h = h_mid + outputs[-1]
    lnf = layer_scale(h, model.transformer.ln_f.eps)
    logits = model.lm_head(frozen_layer_norm(h, model.transformer.ln_f, lnf))
    frozen = Frozen(torch.stack(ln1), torch.stack(ln2), lnf, torch.stack(patterns))
    return frozen, torch.stack(inputs), torch.stack(outputs), logits


def frozen_forward(
    model: GPT2, transcoders: TranscoderSet, frozen: Frozen, embeds: Tensor, mlp_leaves: Tensor
) -> Tensor:
    """The replacement model's linear forward over the first n = len(embeds) positions: (n, d_model).

    Args:
        embeds: (n, d_model) token embeddings (the positional embeddings are added here).
        mlp_leaves: (n_layers, n, d_model) MLP outputs without their skip connections.
    """
    n = embeds.shape[-2]
    h = embeds + model.transformer.wpe.weight[:n]
    for layer, block in enumerate(model.transformer.h):
        x1 = frozen_layer_norm(h, block.ln_1, frozen.ln1[layer, :n])
        h_mid = h + attention_with_pattern(block.attn, x1, frozen.patterns[layer, :, :n, :n])
        x = transcoder_input(h_mid, frozen.ln2[layer, :n], transcoders.input_hook(layer))
        skip = transcoders.skip(layer)
        h = h_mid + mlp_leaves[layer] + (x @ skip.T if skip is not None else 0)
    return frozen_layer_norm(h, model.transformer.ln_f, frozen.lnf[:n])


def layer_norm_adjoint(g: Tensor, scale: Tensor, gain: Tensor | None = None) -> Tensor:
    """Transpose of x -> (x - mean(x)) / scale * gain (the frozen layer norm's linear part) applied to g."""
    g = g / scale if gain is None else g * gain / scale
    return g - g.mean(dim=-1, keepdim=True)


def attention_adjoint(attn: nn.Module, g: Tensor, pattern: Tensor) -> Tensor:
    """Transpose of x -> attention_with_pattern(attn, x, pattern)'s linear part applied to g (b, pos, d).

    Each head's pattern mixes positions for every row at once: one (pos, pos) @ (pos, b * head_dim)
    product per head instead of b small ones."""
    b, n, d_model = g.shape
    n_head = pattern.shape[0]
    per_head = (g @ attn.c_proj.weight.T).view(b, n, n_head, -1).permute(2, 1, 0, 3).reshape(n_head, n, -1)
    mixed = torch.bmm(pattern.transpose(-1, -2), per_head)  # (n_head, pos, b * head_dim)
    values = mixed.view(n_head, n, b, -1).permute(2, 1, 0, 3).reshape(b, n, d_model)
    return values @ attn.c_attn.weight[:, 2 * d_model :].T


def input_adjoint(g: Tensor, scale: Tensor, hook: str) -> Tensor:
    """Transpose of h_mid -> transcoder_input(h_mid) applied to g."""
    return g if hook == "hook_resid_mid" else layer_norm_adjoint(g, scale)


@torch.no_grad()
def replace(
    model: GPT2, transcoders: TranscoderSet, input_ids: Tensor, *, bos_token_id: int | None
) -> Replacement:
    """Run one prompt (pos,) through the replacement model: features, constants and errors per MLP."""
    frozen, inputs, outputs, logits = clean_run(model, transcoders, input_ids)
    n_const = int(bos_token_id is not None and int(input_ids[0]) == bos_token_id)
    features = active_features(transcoders, inputs, n_const)
    constant = torch.zeros_like(outputs)
    for layer in transcoders.layers:
        constant[layer] = transcoders.layers[layer].b_out.to(outputs.dtype)
    leaves = outputs - _skips(transcoders, inputs)
    constant[:, :n_const] = leaves[:, :n_const]
    errors = leaves - constant - decode_features(transcoders, features, outputs.shape).to(outputs.dtype)
    embeds = model.transformer.wte.weight[input_ids]
    return Replacement(input_ids, frozen, embeds, logits, features, constant, errors)


def _skips(transcoders: TranscoderSet, inputs: Tensor) -> Tensor:
    """Each layer's skip connection x_L @ W_skip.T (0 without one)."""
    skips = torch.zeros_like(inputs)
    for layer in transcoders.layers:
        if (w := transcoders.skip(layer)) is not None:
            skips[layer] = inputs[layer] @ w.T.to(inputs.dtype)
    return skips


def active_features(transcoders: TranscoderSet, inputs: Tensor, n_constant_positions: int) -> ActiveFeatures:
    """Every non-zero feature activation at positions >= n_constant_positions."""
    parts = []
    for layer in transcoders.layers:
        acts = transcoders.encode(layer, inputs[layer])  # (pos, d_sae)
        acts[:n_constant_positions] = 0
        pos, index = acts.nonzero(as_tuple=True)
        parts.append((torch.full_like(pos, layer), pos, index, acts[pos, index]))
    return ActiveFeatures(*(torch.cat(column) for column in zip(*parts, strict=True)))


def decode_features(transcoders: TranscoderSet, features: ActiveFeatures, shape: torch.Size) -> Tensor:
    """sum of activation * W_dec[source -> target] rows, placed at each feature's (target, position)."""
    out = torch.zeros(shape, dtype=features.activation.dtype, device=features.activation.device)
    for source in transcoders.layers:
        chosen = features.layer == source
        for target in transcoders.targets(source):
            rows = transcoders.decoder_rows(source, target, features.index[chosen])
            out[target].index_add_(0, features.pos[chosen], features.activation[chosen, None] * rows)
    return out
