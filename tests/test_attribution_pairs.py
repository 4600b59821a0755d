"""fast.py's Sparse Feature Circuits method over contrastive pairs, against plain references.

Baselines, metrics, aggregation over padded batches, IG edges and exact
node effects, each checked against plain hooked forwards, autograd on one
scalar, or finite differences written here (float64, tiny model).
"""

import pytest
import torch
from conftest import hooks, node_value, plain_activations, sae_error, tiny_config_dict

from sparse_coding.algorithms.attribution import losses, node_attributions
from sparse_coding.algorithms.attribution_edges import edges, upstream_sites
from sparse_coding.algorithms.attribution_exact import exact_effects, exact_error_effects
from sparse_coding.algorithms.attribution_graph import GraphOptions, choose_down_nodes, summarize
from sparse_coding.algorithms.attribution_totals import EdgeTotals
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.text.pairs import Pair, example_batches, token_batch, tokenize_pair

CE, LOGIT_DIFF = METRICS["cross_entropy"], METRICS["logit_diff"]
N_TOKENS = 9


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_model_dir, sae_templates):
    from sparse_coding.config import config_from_dict

    data = tmp_path_factory.mktemp("data")
    config = config_from_dict(tiny_config_dict(data, tiny_model_dir, sae_templates) | {"DTYPE": "float64"})
    return load_spliced_model(config)


@pytest.fixture(scope="module")
def pair(loaded):
    """Clean and patch token rows (1, N_TOKENS) that differ in their last three tokens."""
    spliced, _ = loaded
    gen = torch.Generator().manual_seed(3)
    vocab = spliced.model.config.vocab_size
    clean = torch.randint(1, vocab, (1, N_TOKENS), generator=gen)
    patch = clean.clone()
    patch[:, -3:] = torch.randint(1, vocab, (1, 3), generator=gen)
    return clean, patch


def _loss(logits, batch, metric) -> torch.Tensor:
    """Plain metric: the loss of the logits at each row's last real position, summed."""
    rows = torch.arange(len(batch))
    return metric.loss(logits[rows, batch.last], batch.answers, batch.patch_answers).sum()


def _plain_loss(spliced, batch, metric, fns=None) -> torch.Tensor:
    with hooks(spliced.model, fns or {}):
        return _loss(spliced.model(batch.input_ids, attention_mask=batch.attention_mask), batch, metric)


def _decoded(sae, x):
    """sum_i v_i W_dec[i] of a plain activation."""
    return node_value(sae, x) @ sae.W_dec


def _derivative(spliced, batch, metric, key, direction) -> float:
    """d/dt metric(site output + t * direction) at t = 0, by autograd on t."""
    t = torch.zeros((), dtype=direction.dtype, requires_grad=True)
    loss = _plain_loss(spliced, batch, metric, {key: lambda out: out + t * direction})
    return float(torch.autograd.grad(loss, t)[0])


def test_patch_baseline_node_effects_equal_the_gradient_times_patch_minus_clean(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(*pair)
    attributions = node_attributions(spliced, batch, metric=CE, baseline="patch")
    clean, patch = plain_activations(spliced, batch.input_ids), plain_activations(spliced, batch.patch_ids)
    checked = 0
    for key, attr in attributions.items():
        sae = spliced.by_key[key].sae
        delta_v = node_value(sae, patch[key]) - node_value(sae, clean[key])  # (1, pos, d_sae)
        for feature in attr.feature_ie[0].abs().topk(3).indices.tolist():
            direction = delta_v[..., feature, None] * sae.W_dec[feature]
            expected = _derivative(spliced, batch, CE, key, direction)
            assert float(attr.feature_ie[0, feature]) == pytest.approx(expected, rel=1e-6, abs=1e-10)
            checked += 1
        # The error's baseline is what puts the whole site at the patch activation.
        error_direction = (patch[key] - _decoded(sae, patch[key])) - (clean[key] - _decoded(sae, clean[key]))
        expected = _derivative(spliced, batch, CE, key, error_direction)
        assert float(attr.error_ie[0]) == pytest.approx(expected, rel=1e-6, abs=1e-10)
    assert checked == 3 * len(attributions)


def test_a_patch_equal_to_the_clean_input_gives_every_node_and_edge_zero_effect(loaded, pair):
    spliced, _ = loaded
    clean, _ = pair
    batch = token_batch(clean, clean)
    attributions = node_attributions(spliced, batch, metric=CE, baseline="patch")
    assert all(not a.feature_ie.any() and not a.error_ie.any() for a in attributions.values())
    down = {key: torch.arange(3) for key in attributions}
    assert all(not s.effects.any() for s in edges(spliced, batch, attributions, down, batched=True))


def test_logit_diff_is_the_patch_answer_logit_minus_the_answer_logit(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(*pair)
    logits = spliced.model(batch.input_ids)[0, -1]
    expected = logits[batch.patch_answers[0]] - logits[batch.answers[0]]
    assert float(losses(spliced, batch, LOGIT_DIFF)[0]) == pytest.approx(float(expected), rel=1e-12)


def test_logit_diff_node_effects_equal_finite_differences_of_removing_the_node(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(*pair)
    attributions = node_attributions(spliced, batch, metric=LOGIT_DIFF)
    clean = plain_activations(spliced, batch.input_ids)
    eps = 1e-5
    for key in ("resid_1", "attn_2", "mlp_1"):
        sae, attr = spliced.by_key[key].sae, attributions[key]
        for feature in attr.feature_ie[0].abs().topk(2).indices.tolist():
            removal = -node_value(sae, clean[key])[..., feature, None] * sae.W_dec[feature]
            with torch.no_grad():
                up = _plain_loss(spliced, batch, LOGIT_DIFF, {key: lambda out: out + eps * removal})
                down = _plain_loss(spliced, batch, LOGIT_DIFF, {key: lambda out: out - eps * removal})
            assert float(attr.feature_ie[0, feature]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-5)


def test_a_feature_that_raises_the_answer_logit_has_positive_attribution_under_every_metric(
    tmp_path, tiny_model_dir, sae_templates, pair
):
    """Sign convention from its definition: plant a last-layer feature whose decoder row is the
    answer's unembedding and which fires everywhere; it promotes the answer, so it supports it."""
    from sparse_coding.config import config_from_dict
    from sparse_coding.graphs.graph import Graph, Node
    from sparse_coding.labels.logit_lens import add_logit_effects

    config = config_from_dict(
        tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {"DTYPE": "float64"}
    )
    spliced, _ = load_spliced_model(config)
    batch = token_batch(*pair)
    sae, feature = spliced.by_key["mlp_2"].sae, 7
    answer_row = spliced.model.lm_head.weight[batch.answers[0]]
    sae.W_dec[feature] = 3 * answer_row / answer_row.norm()
    sae.b_enc[feature] = 50.0  # on at every position, in every TopK
    x = plain_activations(spliced, batch.input_ids)["mlp_2"]
    contribution = node_value(sae, x)[..., feature, None] * sae.W_dec[feature]
    answer = batch.answers[0]
    with torch.no_grad():
        clean_logit = spliced.model(batch.input_ids)[0, -1, answer]
        with hooks(spliced.model, {"mlp_2": lambda out: out - contribution}):
            removed_logit = spliced.model(batch.input_ids)[0, -1, answer]
    assert clean_logit > removed_logit, "the planted feature promotes the answer"
    for metric in METRICS.values():
        attr = node_attributions(spliced, batch, metric=metric)["mlp_2"]
        assert float(attr.feature_ie[0, feature]) > 0, metric.name
    graph = Graph()
    graph.add_node(Node.from_id(f"mlp_2.{feature}"))

    class Names:
        def decode(self, ids):
            return str(ids[0])

    add_logit_effects(graph, spliced, Names(), n_tokens=3)
    assert str(int(answer)) in [token for token, _ in graph.nodes[f"mlp_2.{feature}"].logits_up]


def test_many_examples_in_padded_batches_give_the_mean_of_single_example_effects(loaded):
    from sparse_coding.algorithms.attribution_graph import fraction_explained

    spliced, tokenizer = loaded
    texts = ["When Mary and John went to the store", "The quick brown fox jumps", "In 1969 the first humans"]
    examples = [tokenize_pair(Pair(text), tokenizer, prepend_bos=True, max_len=64) for text in texts]
    assert len({len(e.clean_ids) for e in examples}) == 3, "lengths differ, so batches are padded"
    options = GraphOptions(CE, num_down_nodes=2)
    batches = example_batches(examples, batch_size=2, pad_id=0, device="cpu")
    singles = [example_batches([e], batch_size=1, pad_id=0, device="cpu")[0] for e in examples]
    together = [node_attributions(spliced, b, metric=CE) for b in batches]
    alone = [node_attributions(spliced, b, metric=CE) for b in singles]
    summary = summarize(together)
    down = choose_down_nodes(summary, options)
    for key, site_summary in summary.items():
        ies = torch.cat([a[key].feature_ie for a in alone])  # (3, d_sae)
        every = torch.arange(ies.shape[1])
        torch.testing.assert_close(site_summary.mean_of(every), ies.mean(0), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            site_summary.std_of(every), ies.std(0, correction=0), rtol=1e-7, atol=1e-12
        )
        errors = torch.cat([a[key].error_ie for a in alone])
        assert float(site_summary.mean_of(torch.tensor([-1]))[0]) == pytest.approx(
            float(errors.mean()), rel=1e-9
        )
    expected: dict = {}
    for b, a in zip(singles, alone, strict=True):
        for key, value in _edge_values(edges(spliced, b, a, down, batched=True)).items():
            expected[key] = expected.get(key, 0.0) + value / 3
    totals = EdgeTotals()
    for b, a in zip(batches, together, strict=True):
        totals.add(edges(spliced, b, a, down, batched=True))
    got = _edge_values(totals.means(3, "cpu"))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-7, abs=1e-10), key
    assert 0 < fraction_explained(summary) < 1


def test_batches_beyond_the_kept_ones_recompute_phase_one_and_give_the_same_graph(loaded, monkeypatch):
    from sparse_coding.algorithms import attribution_graph

    spliced, tokenizer = loaded
    texts = ["When Mary and John went to the store", "The quick brown fox jumps", "In 1969 the first humans"]
    examples = [tokenize_pair(Pair(text), tokenizer, prepend_bos=True, max_len=64) for text in texts]
    batches = example_batches(examples, batch_size=1, pad_id=0, device="cpu")
    options = GraphOptions(CE, num_down_nodes=2, node_estimator="exact")
    kept = attribution_graph.gradient_graph(spliced, batches, options)
    monkeypatch.setattr(attribution_graph, "KEPT_BATCHES", 1)

    recomputed = attribution_graph.gradient_graph(spliced, batches, options)

    assert recomputed.to_json() == kept.to_json()


def _edge_values(edge_sets) -> dict:
    """(down site, row, up site, up feature or None) -> effect."""
    return {
        (s.down_site, row, s.up_site, column): float(s.effects[row, col])
        for s in edge_sets
        for row in range(s.effects.shape[0])
        for col, column in enumerate(s.up_slots.tolist())
    }


def _path_edge(spliced, batch, clean, down_key, down_feature, up_key, up_feature, alphas) -> float:
    """Explicit IG edge: mean over alphas of d/dt w . d with every upstream site at const + alpha (x - const)
    and u's removal direction added with weight t; all other sites frozen clean."""
    down_sae = spliced.by_key[down_key].sae
    w = _down_weight(spliced, batch, clean, down_key, down_feature)
    ups = [site.key for site in upstream_sites(spliced, spliced.by_key[down_key])]
    up_sae = spliced.by_key[up_key].sae
    removal = -node_value(up_sae, clean[up_key])[..., up_feature, None] * up_sae.W_dec[up_feature]
    total = 0.0
    for alpha in alphas.tolist():
        t = torch.zeros((), dtype=removal.dtype, requires_grad=True)
        fns = {key: (lambda key: lambda out: clean[key])(key) for key in spliced.by_key if key != down_key}
        for key in ups:
            const = (
                clean[key]
                - _decoded(spliced.by_key[key].sae, clean[key])
                - sae_error(spliced.by_key[key].sae, clean[key])
            )
            fns[key] = (
                lambda const, x, key: (
                    lambda out: const + alpha * (x - const) + (t * removal if key == up_key else 0)
                )
            )(const, clean[key], key)
        read = {}
        fns[down_key] = lambda out: read.__setitem__("x", out) or out
        with hooks(spliced.model, fns):
            spliced.model(batch.input_ids)
        d = node_value(down_sae, read["x"])[..., down_feature]
        total += float(torch.autograd.grad((w * d).sum(), t)[0])
    return total / len(alphas)


def _down_weight(spliced, batch, clean, down_key, down_feature):
    """grad of the loss with respect to the down node's value per position, at the clean point."""
    sae = spliced.by_key[down_key].sae
    value = node_value(sae, clean[down_key])[..., down_feature]
    scales = torch.ones(value.shape, dtype=value.dtype, requires_grad=True)
    fns = {down_key: lambda out: out + ((scales - 1) * value)[..., None] * sae.W_dec[down_feature]}
    (g,) = torch.autograd.grad(_plain_loss(spliced, batch, CE, fns), scales)
    return torch.where(value != 0, g / value.where(value != 0, torch.ones_like(value)), torch.zeros_like(g))


def test_ig_edges_equal_the_explicit_path_integral_of_the_direct_effect(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(pair[0])
    attributions = node_attributions(spliced, batch, metric=CE, ig_steps=4)
    down = choose_down_nodes(summarize([attributions]), GraphOptions(CE, num_down_nodes=2))
    edge_sets = {
        (s.down_site, s.up_site): s
        for s in edges(spliced, batch, attributions, down, batched=True, ig_steps=4)
    }
    clean = plain_activations(spliced, batch.input_ids)
    alphas = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    for down_key, up_key in (("resid_2", "attn_1"), ("resid_2", "resid_1"), ("mlp_1", "attn_1")):
        edge_set = edge_sets[(down_key, up_key)]
        for row, down_feature in enumerate(edge_set.down_slots.tolist()):
            for col, up_feature in enumerate(edge_set.up_slots[:3].tolist()):
                if down_feature < 0 or up_feature < 0:
                    continue  # error nodes
                expected = _path_edge(
                    spliced, batch, clean, down_key, down_feature, up_key, up_feature, alphas
                )
                assert float(edge_set.effects[row, col]) == pytest.approx(expected, rel=1e-6, abs=1e-10)


def test_ig_edges_into_a_node_converge_to_its_exact_direct_change_as_steps_grow(loaded, pair):
    """Sum over every upstream node of e(u -> d) -> w . (d(upstream sites at baseline) - d(clean)).

    The integrand (the Jacobian) jumps where a ReLU gate flips, so the midpoint rule converges
    as 1/steps: measured relative errors 3e-2 / 8e-3 at 2 steps, 5e-4 at 256. Tolerance: under
    2e-3 at 256 steps, and smaller than at 2 steps.
    """
    spliced, _ = loaded
    batch = token_batch(pair[0])
    clean = plain_activations(spliced, batch.input_ids)
    attributions = node_attributions(spliced, batch, metric=CE)
    down_key = "resid_2"
    down = {key: torch.zeros(0, dtype=torch.long) for key in attributions}
    chosen = choose_down_nodes(summarize([attributions]), GraphOptions(CE, num_down_nodes=2))[down_key]
    down[down_key] = chosen[chosen >= 0]  # features only: rows are then the features
    sae = spliced.by_key[down_key].sae
    ups = [site.key for site in upstream_sites(spliced, spliced.by_key[down_key])]
    at_baseline = sum(
        clean[key]
        - _decoded(spliced.by_key[key].sae, clean[key])
        - sae_error(spliced.by_key[key].sae, clean[key])
        for key in ups
    )  # resid_2's input with resid_1, attn_1, mlp_1 at their zero baseline
    errors = {}
    for steps in (2, 256):
        sets = [
            s
            for s in edges(spliced, batch, attributions, down, batched=True, ig_steps=steps)
            if s.down_site == down_key
        ]
        for row, feature in enumerate(down[down_key].tolist()):
            w = _down_weight(spliced, batch, clean, down_key, feature)
            change = (
                w * (node_value(sae, at_baseline) - node_value(sae, clean[down_key]))[..., feature]
            ).sum()
            total = sum(float(s.effects[row].sum()) for s in sets)
            errors.setdefault(feature, []).append(abs(total - float(change)) / abs(float(change)))
    for few, many in errors.values():
        assert many < 2e-3 and many < few, errors


def test_ig_node_effects_with_a_patch_baseline_sum_to_the_change_from_patching_the_whole_site(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(*pair)
    attributions = node_attributions(spliced, batch, metric=CE, baseline="patch", ig_steps=32)
    patch = plain_activations(spliced, batch.patch_ids)
    for key in ("attn_1", "mlp_2"):
        with torch.no_grad():
            change = _plain_loss(spliced, batch, CE, {key: lambda out: patch[key]}) - _plain_loss(
                spliced, batch, CE
            )
        attr = attributions[key]
        assert float(attr.feature_ie.sum() + attr.error_ie.sum()) == pytest.approx(
            float(change), rel=1e-3, abs=1e-6
        )


def _shifted_pair_batch(pair):
    """Two examples of equal length: the pair, and the pair shifted by one token."""
    clean, patch = pair
    return token_batch(torch.cat([clean, clean.roll(1, 1)]), torch.cat([patch, patch.roll(1, 1)]))


def _summed_change(spliced, batch, metric, key: str, delta: torch.Tensor) -> float:
    """Sum over the examples, each run alone with plain hooks, of m(key's output + delta[b]) - m(clean)."""
    total = 0.0
    for b in range(len(batch)):
        one, shift = batch.select(torch.tensor([b])), delta[b : b + 1]
        patched = _plain_loss(spliced, one, metric, {key: lambda out: out + shift})  # noqa: B023
        total += float(patched - _plain_loss(spliced, one, metric))
    return total


@pytest.mark.parametrize("baseline", ["zero", "patch"])
def test_exact_node_effects_equal_patching_one_node_at_a_time(loaded, pair, baseline):
    spliced, tokenizer = loaded
    batch = _shifted_pair_batch(pair)
    attributions = node_attributions(spliced, batch, metric=CE, baseline=baseline)
    nodes = {key: attr.feature_ie.abs().sum(0).topk(2).indices for key, attr in attributions.items()}
    got = exact_effects(spliced, batch, attributions, nodes, metric=CE)
    clean = plain_activations(spliced, batch.input_ids)
    patch = plain_activations(spliced, batch.patch_ids)
    with torch.no_grad():
        for key, features in nodes.items():
            sae = spliced.by_key[key].sae
            base = (
                node_value(sae, patch[key])
                if baseline == "patch"
                else torch.zeros_like(node_value(sae, clean[key]))
            )
            for i, feature in enumerate(features.tolist()):
                delta = (base - node_value(sae, clean[key]))[..., feature, None] * sae.W_dec[feature]
                expected = _summed_change(spliced, batch, CE, key, delta)
                assert float(got[key][i]) == pytest.approx(expected, rel=1e-6, abs=1e-10), (key, feature)


@pytest.mark.parametrize("baseline", ["zero", "patch"])
def test_exact_error_effects_equal_patching_each_sites_error_alone(loaded, pair, baseline):
    spliced, _ = loaded
    batch = _shifted_pair_batch(pair)
    attributions = node_attributions(spliced, batch, metric=LOGIT_DIFF, baseline=baseline)
    keys = ["resid_0", "attn_1", "mlp_2"]
    got = exact_error_effects(spliced, batch, attributions, keys, metric=LOGIT_DIFF)
    clean = plain_activations(spliced, batch.input_ids)
    patch = plain_activations(spliced, batch.patch_ids)
    with torch.no_grad():
        for key in keys:
            sae = spliced.by_key[key].sae
            # A patch baseline moves the error node (the site's output minus its features' part)
            # from the clean run's to the patch run's; zero takes away the SAE error.
            if baseline == "patch":
                change = (patch[key] - _decoded(sae, patch[key])) - (clean[key] - _decoded(sae, clean[key]))
            else:
                change = -sae_error(sae, clean[key])
            expected = _summed_change(spliced, batch, LOGIT_DIFF, key, change)
            assert abs(expected) > 1e-6, key  # the error moves the metric here
            assert float(got[key]) == pytest.approx(expected, rel=1e-5, abs=1e-8), key


def test_mean_baseline_node_effects_move_every_feature_to_its_mean_times_the_scale(loaded, pair):
    spliced, _ = loaded
    batch = token_batch(pair[0])
    gen = torch.Generator().manual_seed(5)
    means = {
        key: torch.rand(site.sae.d_sae, generator=gen, dtype=torch.float64)
        for key, site in spliced.by_key.items()
    }
    attributions = node_attributions(spliced, batch, metric=CE, baseline="mean", means=means)
    clean = plain_activations(spliced, batch.input_ids)
    for key in ("resid_1", "mlp_2"):
        sae, attr = spliced.by_key[key].sae, attributions[key]
        value = node_value(sae, clean[key])
        inactive = int((value[0] == 0).all(0).nonzero()[0])  # off everywhere: only its mean moves it
        for feature in [inactive, *attr.feature_ie[0].abs().topk(2).indices.tolist()]:
            scale = 1.0
            if sae.cfg.normalize_activations == "layer_norm":
                scale = (clean[key] - clean[key].mean(-1, keepdim=True)).std(-1, keepdim=True)
            direction = (means[key][feature] * scale - value[..., feature, None]) * sae.W_dec[feature]
            expected = _derivative(spliced, batch, CE, key, direction)
            assert float(attr.feature_ie[0, feature]) == pytest.approx(expected, rel=1e-6, abs=1e-10)
        assert float(attr.error_ie[0]) == pytest.approx(
            _derivative(spliced, batch, CE, key, -sae_error(sae, clean[key])), rel=1e-6, abs=1e-10
        )


def test_down_nodes_from_thresholds_are_logged_and_recorded_per_site(loaded, pair, caplog):
    import logging

    from sparse_coding.algorithms.attribution_graph import gradient_graph

    spliced, _ = loaded
    batch = token_batch(pair[0])
    thresholds = {key: torch.full((site.sae.d_sae,), 0.05) for key, site in spliced.by_key.items()}
    with caplog.at_level(logging.INFO):
        graph = gradient_graph(spliced, [batch], GraphOptions(CE), thresholds=thresholds)
    summary = summarize([node_attributions(spliced, batch, metric=CE)])
    counts = {key: int((s.max_last_activation > 0.05).sum()) for key, s in summary.items()}
    assert graph.metadata["down_nodes_per_site"] == counts
    logged = ", ".join(f"{key}: {n}" for key, n in counts.items())
    assert f"Down-nodes from hist.py thresholds per site: {logged}" in caplog.text
