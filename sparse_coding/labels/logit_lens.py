"""Direct logit effects of features: which next tokens a feature's decoder row promotes.

A feature's effect on the logits is its decoder row through the unembedding,
W_dec[i] @ W_U (ignoring the final layer norm's scale, as Neuronpedia's
dashboards do). All shown features of a site are done in one matmul.
"""

import torch
from transformers import PreTrainedTokenizerBase

from sparse_coding.graphs.graph import Graph
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.tokens import token_text


def add_logit_effects(
    graph: Graph, spliced: SplicedModel, tokenizer: PreTrainedTokenizerBase, *, n_tokens: int
) -> None:
    """Fill logits_up / logits_down of every feature node of `graph` that has none."""
    if n_tokens == 0:
        return
    unembed = spliced.model.lm_head.weight  # (d_vocab, d_model)
    by_site: dict[str, list] = {}
    for node in graph.nodes.values():
        if node.feature is not None and not node.logits_up and f"{node.site}_{node.layer}" in spliced.by_key:
            by_site.setdefault(f"{node.site}_{node.layer}", []).append(node)
    with torch.no_grad():
        for key, nodes in by_site.items():
            rows = spliced.by_key[key].sae.W_dec[[n.feature for n in nodes]].to(unembed.dtype)
            effects = rows @ unembed.T  # (n_nodes, d_vocab)
            k = min(n_tokens, effects.shape[1])
            up, down = effects.topk(k, dim=1), (-effects).topk(k, dim=1)
            for i, node in enumerate(nodes):
                node.logits_up = _cells(tokenizer, up.indices[i], up.values[i])
                node.logits_down = _cells(tokenizer, down.indices[i], -down.values[i])


def _cells(
    tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, values: torch.Tensor
) -> list[tuple[str, float]]:
    return [(token_text(tokenizer, int(i)), float(v)) for i, v in zip(ids, values, strict=True)]
