"""Logit cells rank tokens as Neuronpedia's dashboards do: W_dec @ W_U of TransformerLens'
`from_pretrained`, whose W_U has the final layer norm folded in. The reference below writes that
processing out (fold_ln, then centring over d_model and over the vocabulary) on the model's own
weights; tests/test_saelens_parity.py asks TransformerLens itself."""

import pytest
import torch
from conftest import tiny_config_dict

from sparse_coding.config import config_from_dict
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.labels.logit_lens import add_logit_effects
from sparse_coding.nodes import feature_id
from sparse_coding.pipelines.loading import load_spliced_model

N_TOKENS = 5


class IdNames:
    """Names each token by its id, so that cells map back to ids."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"


def transformerlens_w_u(model) -> torch.Tensor:
    """(d_model, d_vocab) W_U as `HookedTransformer.from_pretrained` processes it for GPT-2."""
    w_u = model.lm_head.weight.T * model.transformer.ln_f.weight[:, None]  # fold_ln: ln_f's gain
    w_u = w_u - w_u.mean(dim=0, keepdim=True)  # fold_ln with centring: ln_f's output is mean-free
    return w_u - w_u.mean(dim=1, keepdim=True)  # center_unembed


@pytest.fixture(scope="module")
def uneven(tiny_model_dir, sae_templates, tmp_path_factory):
    """The tiny model with final layer-norm gains as uneven as GPT-2's, and every resid feature."""
    raw = tiny_config_dict(tmp_path_factory.mktemp("lens"), tiny_model_dir, sae_templates)
    config = config_from_dict(raw)
    spliced, _ = load_spliced_model(config, sites=("resid",))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        spliced.model.transformer.ln_f.weight.copy_(0.1 + 3 * torch.rand(32, generator=gen))
    graph = Graph()
    for layer in range(3):
        for feature in range(spliced.by_key[f"resid_{layer}"].sae.d_sae):
            graph.add_node(Node.from_id(feature_id("resid", layer, feature)))
    add_logit_effects(graph, spliced, IdNames(), n_tokens=N_TOKENS)
    return spliced, graph


def test_logit_cells_rank_tokens_as_the_dashboards_and_differ_from_them_by_one_constant_per_feature(uneven):
    spliced, graph = uneven
    w_u = transformerlens_w_u(spliced.model)
    for node in graph.nodes.values():
        dashboard = spliced.by_key[f"resid_{node.layer}"].sae.W_dec[node.feature] @ w_u
        up = [int(token[1:-1]) for token, _ in node.logits_up]
        down = [int(token[1:-1]) for token, _ in node.logits_down]
        assert up == dashboard.topk(N_TOKENS).indices.tolist()
        assert down == (-dashboard).topk(N_TOKENS).indices.tolist()
        shift = torch.tensor([v for _, v in node.logits_up]) - dashboard[up]
        torch.testing.assert_close(shift, shift[:1].expand(N_TOKENS), rtol=0, atol=1e-4)


def test_without_the_final_layer_norm_most_rankings_would_differ(uneven):
    """The old ranking, W_dec @ W_E^T, is not the dashboards' on a model with uneven ln_f gains."""
    spliced, graph = uneven
    differ = 0
    for node in graph.nodes.values():
        row = spliced.by_key[f"resid_{node.layer}"].sae.W_dec[node.feature]
        plain = (row @ spliced.model.lm_head.weight.T).topk(N_TOKENS).indices.tolist()
        differ += sorted(plain) != sorted(int(token[1:-1]) for token, _ in node.logits_up)
    assert differ > len(graph.nodes) // 2
