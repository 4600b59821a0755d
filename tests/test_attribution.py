"""fast.py's numbers against slow references written plainly here.

References use plain torch hooks on the Hugging Face model, the SAE's own
`encode`, and autograd on one scalar per node (a directional derivative), in
float64. Nothing here calls the splicer.
"""

import pytest
import torch
from conftest import float64_prompt, hooks, node_value, plain_activations, sae_error

from sparse_coding.algorithms.attribution import node_attributions
from sparse_coding.algorithms.attribution_edges import edges
from sparse_coding.algorithms.attribution_graph import (
    GraphOptions,
    choose_down_nodes,
    fraction_explained,
    gradient_graph,
    summarize,
)
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.text.pairs import Pair, tokenize_pair

CE = METRICS["cross_entropy"]

PROMPT = "When Mary and John went to the store, John gave"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, sae_templates):
    spliced, batch = float64_prompt(tmp_path_factory, tiny_model_dir, sae_templates, PROMPT)
    return spliced, batch, batch.input_ids, batch.answers


def _attributions(spliced, batch, **options):
    return node_attributions(spliced, batch, metric=CE, **options)


def _down_nodes(attributions, n: int, thresholds=None):
    return choose_down_nodes(
        summarize([attributions]), GraphOptions(CE, num_down_nodes=n), thresholds=thresholds
    )


def _loss(logits, target):
    return torch.nn.functional.cross_entropy(logits[:, -1], target)


def _reference_ie(spliced, inputs, target, key, feature):
    """IE = -d/dt m(site output + (t - 1) * node contribution) at t = 1."""
    sae = spliced.by_key[key].sae
    x = plain_activations(spliced, inputs)[key]
    if feature is None:
        contribution = sae_error(sae, x)
    else:
        contribution = node_value(sae, x)[..., feature, None] * sae.W_dec[feature]
    t = torch.ones((), dtype=x.dtype, requires_grad=True)
    with hooks(spliced.model, {key: lambda out: out + (t - 1) * contribution}):
        (grad,) = torch.autograd.grad(_loss(spliced.model(inputs), target), t)
    return -float(grad)


def test_node_attributions_equal_directional_derivatives_of_the_plain_model(setup):
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    for key, attr in attributions.items():
        top = attr.feature_ie[0].abs().topk(3).indices.tolist()
        for feature in top:
            assert attr.feature_ie[0, feature] == pytest.approx(
                _reference_ie(spliced, inputs, target, key, feature), rel=1e-6, abs=1e-9
            )
        assert float(attr.error_ie[0]) == pytest.approx(
            _reference_ie(spliced, inputs, target, key, None), rel=1e-6, abs=1e-9
        )


def test_inactive_features_have_exactly_zero_attribution(setup):
    spliced, batch, inputs, target = setup
    for attr in _attributions(spliced, batch).values():
        inactive = attr.max_activation == 0
        assert (attr.feature_ie[0, inactive] == 0).all()


def test_integrated_gradients_sum_to_the_change_from_zeroing_the_whole_site(setup):
    """IG is complete: over one site's features and error it sums to m(all zero) - m(clean).

    (Zeroing a whole resid site leaves the next layer norm a near-constant input,
    where the integrand is singular and the midpoint rule converges slowly, so
    the check uses the attn/mlp sites.)
    """
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch, ig_steps=32)
    for key in ("attn_1", "mlp_1"):
        sae = spliced.by_key[key].sae
        x = plain_activations(spliced, inputs)[key]
        decoded = node_value(sae, x) @ sae.W_dec  # sum_i v_i W_dec[i]
        constant = x - decoded - sae_error(sae, x)  # what the site outputs with every node at 0

        def loss_with(out_fn) -> float:
            with hooks(spliced.model, {key: out_fn}), torch.no_grad():
                return float(_loss(spliced.model(inputs), target))

        change = loss_with(lambda out: constant) - loss_with(lambda out: out)
        attr = attributions[key]
        assert float(attr.feature_ie.sum() + attr.error_ie.sum()) == pytest.approx(change, rel=1e-3, abs=1e-5)


def _reference_edge(spliced, inputs, target, clean, down_key, down_feature, up_key, up_feature):
    """e(u -> d) = -d/dt sum_p w_p d_p(t), all sites but u's held at clean outputs."""
    down_sae, up_sae = spliced.by_key[down_key].sae, spliced.by_key[up_key].sae
    up_x = clean[up_key]
    if up_feature is None:
        up_contribution = sae_error(up_sae, up_x)
    else:
        up_contribution = node_value(up_sae, up_x)[..., up_feature, None] * up_sae.W_dec[up_feature]
    # w: gradient of m with respect to the down node's value, from an additive probe at its site.
    down_x = clean[down_key]
    if down_feature is None:
        probe = torch.zeros_like(down_x, requires_grad=True)
        with hooks(spliced.model, {down_key: lambda out: out + probe}):
            (w,) = torch.autograd.grad(_loss(spliced.model(inputs), target), probe)
    else:
        scales = torch.ones(down_x.shape[:-1], dtype=down_x.dtype, requires_grad=True)
        value = node_value(down_sae, down_x)[..., down_feature]
        with hooks(
            spliced.model,
            {down_key: lambda out: out + ((scales - 1) * value)[..., None] * down_sae.W_dec[down_feature]},
        ):
            (g,) = torch.autograd.grad(_loss(spliced.model(inputs), target), scales)
        w = torch.where(value != 0, g / value.where(value != 0, torch.ones_like(value)), torch.zeros_like(g))
    t = torch.ones((), dtype=down_x.dtype, requires_grad=True)
    read = {}
    fns = {
        key: (lambda key: lambda out: clean[key])(key)
        for key in spliced.by_key
        if key not in (up_key, down_key)
    }
    fns[up_key] = lambda out: clean[up_key] + (t - 1) * up_contribution
    fns[down_key] = lambda out: read.__setitem__("x", out) or out
    with hooks(spliced.model, fns):
        spliced.model(inputs)
    x = read["x"]
    d = sae_error(down_sae, x) if down_feature is None else node_value(down_sae, x)[..., down_feature]
    (grad,) = torch.autograd.grad((w * d).sum(), t)
    return -float(grad)


PAIRS = [
    ("attn_1", "resid_1"),
    ("mlp_1", "resid_1"),
    ("mlp_1", "attn_1"),
    ("resid_2", "resid_1"),
    ("resid_2", "attn_1"),
    ("resid_2", "mlp_1"),
    ("attn_2", "resid_2"),
]


@pytest.mark.parametrize("batched", [False, True], ids=["per-node backward", "batched backward"])
def test_edges_equal_explicit_jacobians_with_other_sites_frozen(setup, batched):
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    down_nodes = _down_nodes(attributions, 2)
    edge_sets = {
        (s.down_site, s.up_site): s for s in edges(spliced, batch, attributions, down_nodes, batched=batched)
    }
    clean = plain_activations(spliced, inputs)
    for down_key, up_key in PAIRS:
        edge_set = edge_sets[(down_key, up_key)]
        up_slots = edge_set.up_slots.tolist()
        assert edge_set.down_slots[0] == -1 and up_slots[0] == -1, "summed errors are slot -1, first"
        ups = [None, *up_slots[1:4]]
        for row, slot in enumerate(edge_set.down_slots.tolist()):
            down_feature = None if slot < 0 else slot
            for up_feature in ups:
                col = up_slots.index(-1 if up_feature is None else up_feature)
                expected = _reference_edge(
                    spliced, inputs, target, clean, down_key, down_feature, up_key, up_feature
                )
                got = float(edge_set.effects[row, col])
                assert got == pytest.approx(expected, rel=1e-6, abs=1e-10), (
                    down_key,
                    down_feature,
                    up_key,
                    up_feature,
                )


def test_upstream_error_edges_are_not_zero(setup):
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    down_nodes = _down_nodes(attributions, 2)
    error_edges = [
        s.effects[:, s.up_slots == -1] for s in edges(spliced, batch, attributions, down_nodes, batched=False)
    ]
    assert all(column.abs().max() > 0 for column in error_edges)


def test_edge_over_a_linear_path_equals_the_change_from_zero_ablating_the_upstream_feature(setup):
    """attn_1 -> resid_2 is a plain residual add; where resid_2's ReLU gates do not flip, the
    first-order edge is exact: it equals w . (d(ablated) - d(clean)) with other sites frozen."""
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    down_nodes = _down_nodes(attributions, 3)
    edge_set = next(
        s
        for s in edges(spliced, batch, attributions, down_nodes, batched=False)
        if (s.down_site, s.up_site) == ("resid_2", "attn_1")
    )
    clean = plain_activations(spliced, inputs)
    down_sae, up_sae = spliced.by_key["resid_2"].sae, spliced.by_key["attn_1"].sae
    checked = 0
    for row, down_feature in enumerate(edge_set.down_slots.tolist()):
        for col, up_feature in enumerate(edge_set.up_slots.tolist()):
            if down_feature < 0 or up_feature < 0:
                continue  # error nodes
            removed = node_value(up_sae, clean["attn_1"])[..., up_feature, None] * up_sae.W_dec[up_feature]
            ablated_x = clean["resid_2"] - removed  # resid_2 = resid_1 + attn_1 + mlp_1, others frozen
            before = node_value(down_sae, clean["resid_2"])[..., down_feature]
            after = node_value(down_sae, ablated_x)[..., down_feature]
            if not torch.equal(before > 0, after > 0):
                continue  # a ReLU gate flipped: the path is not linear there
            probe = torch.ones(before.shape, dtype=before.dtype, requires_grad=True)
            with hooks(
                spliced.model,
                {
                    "resid_2": lambda out: (
                        out + ((probe - 1) * before)[..., None] * down_sae.W_dec[down_feature]
                    )
                },
            ):
                (g,) = torch.autograd.grad(_loss(spliced.model(inputs), target), probe)
            w = torch.where(before != 0, g / before.where(before != 0, torch.ones_like(before)), 0)
            assert float(edge_set.effects[row, col]) == pytest.approx(
                float((w * (after - before)).sum()), rel=1e-6, abs=1e-10
            )
            checked += 1
    assert checked >= 3


def test_gradient_graph_keeps_only_nodes_that_reach_the_last_layer(setup):
    spliced, batch, inputs, target = setup
    graph = gradient_graph(spliced, [batch], GraphOptions(CE, num_down_nodes=3, num_up_nodes=2))
    assert graph.nodes and graph.edges
    into = {}
    for source, target_id in graph.edges:
        into.setdefault(source, []).append(target_id)
    bottom = {n for n in graph.nodes if graph.nodes[n].layer == 2}

    def reaches(node_id, seen=()):
        return node_id in bottom or any(
            reaches(t, (*seen, node_id)) for t in into.get(node_id, []) if t not in seen
        )

    assert all(reaches(n) for n in graph.nodes)
    assert 0 < graph.metadata["fraction_explained"] < 1
    assert graph.metadata["summary"].startswith("features explain ~")


def test_fraction_explained_is_the_features_share_of_total_absolute_attribution(setup):
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    features = sum(a.feature_ie.abs().sum().item() for a in attributions.values())
    errors = sum(abs(float(a.error_ie[0])) for a in attributions.values())
    assert fraction_explained(summarize([attributions])) == pytest.approx(features / (features + errors))


def test_one_token_prompt_is_a_clear_error(tiny_model_dir):
    from transformers import AutoTokenizer

    from sparse_coding.errors import DatasetError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(DatasetError, match="single token"):
        tokenize_pair(Pair("a"), tokenizer, prepend_bos=False, max_len=64)


def test_cached_thresholds_choose_the_features_active_above_them_at_the_last_position(setup):
    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    clean = plain_activations(spliced, inputs)
    thresholds = {
        key: torch.full((site.sae.d_sae,), 0.05, dtype=torch.float64) for key, site in spliced.by_key.items()
    }
    chosen = _down_nodes(attributions, 1, thresholds=thresholds)
    for key, site in spliced.by_key.items():
        x = clean[key]
        x_tl = x - x.mean(-1, keepdim=True) if site.sae.cfg.center_writing_weights else x
        expected = (site.sae.encode(x_tl)[0, -1] > 0.05).nonzero().flatten()
        assert torch.equal(chosen[key][chosen[key] >= 0], expected)


def test_batched_edges_split_into_chunks_equal_per_node_edges(setup, monkeypatch):
    from sparse_coding.algorithms import attribution_edges

    spliced, batch, inputs, target = setup
    attributions = _attributions(spliced, batch)
    down_nodes = _down_nodes(attributions, 3)
    per_node = edges(spliced, batch, attributions, down_nodes, batched=False)
    monkeypatch.setattr(attribution_edges, "MAX_BATCHED_ROWS", 2)
    chunked = edges(spliced, batch, attributions, down_nodes, batched=True)
    for a, b in zip(per_node, chunked, strict=True):
        torch.testing.assert_close(a.effects, b.effects, rtol=1e-9, atol=1e-12)


def test_top_edges_keep_the_most_positive_and_most_negative_apart():
    from sparse_coding.algorithms.attribution_edges import EdgeSet
    from sparse_coding.algorithms.circuit_selection import top_edges

    # Rows: the down error node (slot -1), then down feature 7; first column: the upstream error.
    effects = torch.tensor([[0.0] * 6, [0.0, -5.0, -4.0, -3.0, 0.0, 1.0]])
    edge_set = EdgeSet(
        "resid_2", torch.tensor([-1, 7]), "resid_1", torch.tensor([-1, 10, 11, 12, 13, 14]), effects
    )
    kept = {(source, value) for source, _, value in top_edges(edge_set, num_up_nodes=2)}
    # Two most negative (-5, -4); only one positive exists (1); zeros and the zero error are not edges.
    assert kept == {(("resid_1", 10), -5.0), (("resid_1", 11), -4.0), (("resid_1", 14), 1.0)}
