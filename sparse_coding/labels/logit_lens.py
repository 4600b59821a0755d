"""Direct logit effects of features: which next tokens a feature's decoder row promotes.

Neuronpedia's dashboards (SAEDashboard) rank a feature's tokens by
``W_dec[i] @ W_U`` of TransformerLens' ``HookedTransformer.from_pretrained``,
whose unembedding has the final layer norm folded in (``fold_ln``: W_U rows
times ln_f's gain, then centred over d_model) and is centred over the
vocabulary (``center_unembed``). The same numbers from the Hugging Face
weights: the decoder row centred over d_model (as the final layer norm
centres its input), times ln_f's gain, through the unembedding,

    effect[i, t] = ((W_dec[i] - mean(W_dec[i])) * ln_f.weight) @ W_U[:, t]

i.e. the change of token t's logit per unit of the row added to the final
residual stream, before the final layer norm's 1/std. The vocabulary
centring is left out: it shifts all of a feature's tokens by one constant,
which changes no ranking. GPT-2's ln_f gains are far from uniform, so
leaving them out (``W_dec @ W_E^T``) ranks different tokens.

All shown features, of every site, are done in one matmul, so the
unembedding (the largest matrix) is read once.
"""

import torch
from torch import Tensor

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.models.transformer import GPT2
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text


def add_logit_effects(graph: Graph, spliced: SplicedModel, tokenizer: Tokenizer, *, n_tokens: int) -> None:
    """Fill logits_up / logits_down of every feature node of `graph` that has none."""
    nodes = [
        node
        for node in graph.nodes.values()
        if node.feature is not None and not node.logits_up and node.site_key in spliced.by_key
    ]
    if not nodes or n_tokens == 0:
        return
    with torch.no_grad():
        rows = torch.stack([spliced.by_key[node.site_key].sae.W_dec[node.feature] for node in nodes])
        set_logit_cells(nodes, rows, spliced.model, tokenizer, n_tokens=n_tokens)


@torch.no_grad()
def set_logit_cells(
    nodes: list[Node], rows: Tensor, model: GPT2, tokenizer: Tokenizer, *, n_tokens: int
) -> None:
    """Fill each node's logits_up / logits_down: the `n_tokens` tokens its decoder row (rows (n, d_model))
    most promotes and most suppresses, by the module docstring's effect."""
    unembed = model.lm_head.weight  # (d_vocab, d_model)
    rows = rows.to(unembed.dtype)
    centred = rows - rows.mean(dim=-1, keepdim=True)
    effects = (centred * model.transformer.ln_f.weight) @ unembed.T  # (n_nodes, d_vocab)
    k = min(n_tokens, effects.shape[1])
    up, down = effects.topk(k, dim=1), (-effects).topk(k, dim=1)
    for i, node in enumerate(nodes):
        node.logits_up = _cells(tokenizer, up.indices[i], up.values[i])
        node.logits_down = _cells(tokenizer, down.indices[i], -down.values[i])


def _cells(tokenizer: Tokenizer, ids: torch.Tensor, values: torch.Tensor) -> list[tuple[str, float]]:
    return [(token_text(tokenizer, int(i)), float(v)) for i, v in zip(ids, values, strict=True)]
