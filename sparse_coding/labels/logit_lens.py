"""Direct logit effects of features: which next tokens a feature's decoder row promotes.

A feature's effect on the logits is its decoder row through the unembedding,
W_dec[i] @ W_U (ignoring the final layer norm's scale, as Neuronpedia's
dashboards do). All shown features, of every site, are done in one matmul, so
the unembedding (the largest matrix) is read once.
"""

import torch
from torch import Tensor

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.tokenizer import Tokenizer
from sparse_coding.tokens import token_text


def add_logit_effects(graph: Graph, spliced: SplicedModel, tokenizer: Tokenizer, *, n_tokens: int) -> None:
    """Fill logits_up / logits_down of every feature node of `graph` that has none."""
    if n_tokens == 0:
        return
    unembed = spliced.model.lm_head.weight  # (d_vocab, d_model)
    nodes = [
        node
        for node in graph.nodes.values()
        if node.feature is not None and not node.logits_up and f"{node.site}_{node.layer}" in spliced.by_key
    ]
    if not nodes:
        return
    with torch.no_grad():
        rows = torch.stack(
            [
                spliced.by_key[f"{node.site}_{node.layer}"].sae.W_dec[node.feature].to(unembed.dtype)
                for node in nodes
            ]
        )
        set_logit_cells(nodes, rows, unembed, tokenizer, n_tokens=n_tokens)


@torch.no_grad()
def set_logit_cells(
    nodes: list[Node], rows: Tensor, unembed: Tensor, tokenizer: Tokenizer, *, n_tokens: int
) -> None:
    """Fill each node's logits_up / logits_down from its decoder row (rows (n, d_model)) through the
    unembedding (d_vocab, d_model): the `n_tokens` most promoted and most suppressed tokens."""
    effects = rows.to(unembed.dtype) @ unembed.T  # (n_nodes, d_vocab)
    k = min(n_tokens, effects.shape[1])
    up, down = effects.topk(k, dim=1), (-effects).topk(k, dim=1)
    for i, node in enumerate(nodes):
        node.logits_up = _cells(tokenizer, up.indices[i], up.values[i])
        node.logits_down = _cells(tokenizer, down.indices[i], -down.values[i])


def _cells(tokenizer: Tokenizer, ids: torch.Tensor, values: torch.Tensor) -> list[tuple[str, float]]:
    return [(token_text(tokenizer, int(i)), float(v)) for i, v in zip(ids, values, strict=True)]
