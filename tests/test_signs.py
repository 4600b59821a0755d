"""Signs and colours, from their definitions: blue = the node pushes what is downstream of it up.

Connections are planted in the tiny model's SAEs, so the right sign is known
without running the code: a layer-0 feature whose decoder row is a layer-1
feature's (mean-free) encoder direction excites it, the negated row inhibits
it, and a feature whose decoder row is a token's unembedding promotes that token.
"""

import pytest
import torch

from sparse_coding.algorithms.ablation_graph import ablation_graph
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.graphs.render import edge_colour
from sparse_coding.labels.logit_lens import add_logit_effects
from sparse_coding.nodes import feature_id
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.pipe import interpreted_batch

EXCITER, EXCITED, INHIBITOR, INHIBITED = 0, 1, 2, 3  # layer-0 source, layer-1 target, twice
PROMOTER = 4  # layer-1 feature writing a token's unembedding
TOKEN = 42
ALWAYS_ON = 3.0  # encoder bias that makes a feature fire at every position
GAIN = 3.0  # decoder norm: the planted direction outweighs block 0's other changes


def _is_blue(colour: str) -> bool:
    red, blue = int(colour[1:3], 16), int(colour[5:7], 16)
    return blue > red


def _unit(direction: torch.Tensor) -> torch.Tensor:
    centred = direction - direction.mean()  # mean-free: the SAEs read centred inputs
    return centred / centred.norm()


@pytest.fixture
def planted(make_config):
    config = make_config(ACTS_LAYERS_SLICE="0:2", THRESHOLD_EXP=None, LOGIT_TOKENS=10)
    spliced, tokenizer = load_spliced_model(config, sites=("resid",))
    first, second = spliced.by_key["resid_0"].sae, spliced.by_key["resid_1"].sae
    with torch.no_grad():
        first.b_enc[[EXCITER, INHIBITOR]] = ALWAYS_ON
        second.b_enc[[EXCITED, INHIBITED, PROMOTER]] = ALWAYS_ON
        first.W_dec[EXCITER] = GAIN * _unit(second.W_enc[:, EXCITED])
        first.W_dec[INHIBITOR] = -GAIN * _unit(second.W_enc[:, INHIBITED])
        second.W_dec[PROMOTER] = GAIN * spliced.model.lm_head.weight[TOKEN]
    return config, spliced, tokenizer


def test_pipe_draws_an_exciting_edge_blue_and_positive_and_an_inhibiting_one_red(planted):
    config, spliced, tokenizer = planted
    batch = interpreted_batch(config, tokenizer, spliced.device)
    graph = ablation_graph(spliced, batch, tokenizer=tokenizer, layers=[0, 1]).graph
    excites = graph.edges[(feature_id("resid", 0, EXCITER), feature_id("resid", 1, EXCITED))].effect
    inhibits = graph.edges[(feature_id("resid", 0, INHIBITOR), feature_id("resid", 1, INHIBITED))].effect
    largest = max(abs(e.effect) for e in graph.edges.values())
    assert excites > 0 and _is_blue(edge_colour(excites, largest))
    assert inhibits < 0 and not _is_blue(edge_colour(inhibits, largest))


def test_pipe_puts_the_token_a_feature_writes_among_its_blue_logit_cells(planted):
    config, spliced, tokenizer = planted
    batch = interpreted_batch(config, tokenizer, spliced.device)
    graph = ablation_graph(spliced, batch, tokenizer=tokenizer, layers=[0, 1]).graph
    node = graph.nodes[feature_id("resid", 1, PROMOTER)]
    assert tokenizer.decode([TOKEN]) in [token for token, value in node.logits_up if value > 0]


def test_the_logit_lens_puts_the_token_a_feature_writes_among_its_blue_logit_cells(planted):
    _, spliced, tokenizer = planted
    graph = Graph()
    graph.add_node(Node.from_id(feature_id("resid", 1, PROMOTER)))
    add_logit_effects(graph, spliced, tokenizer, n_tokens=10)
    node = graph.nodes[feature_id("resid", 1, PROMOTER)]
    assert tokenizer.decode([TOKEN]) in [token for token, value in node.logits_up if value > 0]
