"""Per-position nodes (NODE_POSITIONS each) and Marks et al.'s selection (SELECTION threshold),
against references written here from the definitions, with plain hooks and autograd in float64.

Marks et al. 2024 ("Sparse Feature Circuits", section 3, and their code's `get_circuit`):
a node is kept when |mean over examples of its IE| > T_N (IE summed over
positions, or at one position); an edge when both its ends are kept nodes and
|its mean effect| > T_E; the effect into a down-node counts only the
(example, position) entries whose own |IE| > T_N; error nodes are nodes like
features.
"""

import pytest
import torch
from conftest import float64_prompt, hooks, node_value, plain_activations, sae_error

from sparse_coding.algorithms.attribution_edges import upstream_sites
from sparse_coding.algorithms.attribution_graph import GraphOptions, gradient_graph
from sparse_coding.algorithms.metrics import METRICS
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import error_id, feature_id, with_position
from sparse_coding.text.pairs import Pair, example_batches, tokenize_pair

CE = METRICS["cross_entropy"]
PROMPT = "When Mary and John went to the store, John gave"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, sae_templates):
    return float64_prompt(tmp_path_factory, tiny_model_dir, sae_templates, PROMPT)


def _loss(spliced, batch, fns):
    """m: cross-entropy of the answer after the prompt (the tool's metric)."""
    with hooks(spliced.model, fns):
        logits = spliced.model(batch.input_ids)
    return torch.nn.functional.cross_entropy(logits[:, -1], batch.answers)


def _site_gradients(spliced, batch, clean):
    """grad of m w.r.t. an additive probe on every site's output, (pos, d_model) each."""
    probes = {key: torch.zeros_like(x[0], requires_grad=True) for key, x in clean.items()}
    fns = {key: (lambda key: lambda out: out + probes[key])(key) for key in clean}
    grads = torch.autograd.grad(_loss(spliced, batch, fns), list(probes.values()))
    return dict(zip(probes, grads, strict=True))


def _reference_nodes(spliced, batch, clean, grads):
    """Per site: IE per (position, feature) and per position of the error: -grad . contribution."""
    nodes = {}
    for key, x in clean.items():
        sae = spliced.by_key[key].sae
        values = node_value(sae, x)[0]  # (pos, d_sae)
        features = -(grads[key] @ sae.W_dec.T) * values
        errors = -(grads[key] * sae_error(sae, x)[0]).sum(-1)
        nodes[key] = (features, errors)
    return nodes


def _reference_edge(spliced, batch, clean, grads, down, up, gate):
    """e(u -> d) = -d/dt sum_p gate_p w_p . d_p(t): u's contribution scaled by t, every other site frozen.

    `down`/`up`: (site key, feature or None, position or None = every position).
    """
    (down_key, down_feature, _), (up_key, up_feature, up_pos) = down, up
    up_sae, down_sae = spliced.by_key[up_key].sae, spliced.by_key[down_key].sae
    if up_feature is None:
        contribution = sae_error(up_sae, clean[up_key])
    else:
        contribution = node_value(up_sae, clean[up_key])[..., up_feature, None] * up_sae.W_dec[up_feature]
    if up_pos is not None:
        only = torch.zeros(contribution.shape[1], 1, dtype=contribution.dtype)
        only[up_pos] = 1
        contribution = contribution * only
    t = torch.ones((), dtype=contribution.dtype, requires_grad=True)
    read = {}
    fns = {key: (lambda key: lambda out: clean[key])(key) for key in clean if key not in (up_key, down_key)}
    fns[up_key] = lambda out: clean[up_key] + (t - 1) * contribution
    fns[down_key] = lambda out: read.__setitem__("x", out) or out
    with hooks(spliced.model, fns):
        spliced.model(batch.input_ids)
    x = read["x"]
    if down_feature is None:
        weighted = (grads[down_key] * sae_error(down_sae, x)[0]).sum(-1)
    else:
        weighted = (grads[down_key] @ down_sae.W_dec[down_feature]) * node_value(down_sae, x)[
            0, :, down_feature
        ]
    (grad,) = torch.autograd.grad((gate * weighted).sum(), t)
    return -float(grad)


def _node_id(key, feature, position):
    site, layer = key.rsplit("_", 1)
    base = error_id(site, int(layer)) if feature is None else feature_id(site, int(layer), feature)
    return with_position(base, position)


def _reference_circuit(spliced, batch, node_threshold, edge_threshold, positioned):
    """Marks et al.'s kept nodes and edges (id -> value), from the definitions in the module doc."""
    clean = plain_activations(spliced, batch.input_ids)
    grads = _site_gradients(spliced, batch, clean)
    per_position = _reference_nodes(spliced, batch, clean, grads)
    kept = {}  # (key, feature, position) -> (value, gate over positions)
    for key, (features, errors) in per_position.items():
        table = torch.cat([errors[:, None], features], dim=1)  # column 0: the error
        values = table if positioned else table.sum(0, keepdim=True)
        for p, column in (values.abs() > node_threshold).nonzero().tolist():
            feature = None if column == 0 else column - 1
            gate = table[:, column].abs() > node_threshold
            if positioned:
                gate = gate & (torch.arange(len(gate)) == p)
            kept[(key, feature, p if positioned else None)] = (float(values[p, column]), gate.to(table.dtype))
    edge_values = {}
    for down, (_, gate) in kept.items():
        ups = {site.key for site in upstream_sites(spliced, spliced.by_key[down[0]])}
        for up in (node for node in kept if node[0] in ups):
            value = _reference_edge(spliced, batch, clean, grads, down, up, gate)
            if abs(value) > edge_threshold:
                edge_values[(_node_id(*up), _node_id(*down))] = value
    return {_node_id(*node): value for node, (value, _) in kept.items()}, edge_values


def _thresholds(spliced, batch, positioned):
    """A node threshold that keeps about 16 nodes, between two measured |IE| values (no ties)."""
    clean = plain_activations(spliced, batch.input_ids)
    per_position = _reference_nodes(spliced, batch, clean, _site_gradients(spliced, batch, clean))
    values = []
    for features, errors in per_position.values():
        table = torch.cat([errors[:, None], features], dim=1)
        values.append((table if positioned else table.sum(0)).abs().flatten())
    ranked = torch.cat(values).sort(descending=True).values
    return float(ranked[15] + ranked[16]) / 2


@pytest.mark.parametrize("positions", ["sum", "each"])
def test_threshold_selection_keeps_marks_et_al_nodes_and_edges(setup, positions):
    spliced, batch = setup
    positioned = positions == "each"
    node_threshold = _thresholds(spliced, batch, positioned)
    expected_nodes, all_edges = _reference_circuit(spliced, batch, node_threshold, 0.0, positioned)
    magnitudes = sorted(abs(v) for v in all_edges.values())
    edge_threshold = (magnitudes[len(magnitudes) // 2] + magnitudes[len(magnitudes) // 2 + 1]) / 2
    expected_edges = {k: v for k, v in all_edges.items() if abs(v) > edge_threshold}
    options = GraphOptions(
        CE,
        selection="threshold",
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        node_positions=positions,
    )
    graph = gradient_graph(spliced, [batch], options)
    assert graph.nodes.keys() == expected_nodes.keys()
    assert any(node.is_error for node in graph.nodes.values()), "errors are thresholded like features"
    assert any(not node.is_error for node in graph.nodes.values())
    for node_id, value in expected_nodes.items():
        assert graph.nodes[node_id].attribution == pytest.approx(value, rel=1e-6, abs=1e-12), node_id
    assert set(graph.edges) == expected_edges.keys()
    for key, value in expected_edges.items():
        assert graph.edges[key].effect == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert all(("@" in node_id) == positioned for node_id in graph.nodes)


def test_positioned_nodes_and_edges_equal_per_position_references(setup):
    spliced, batch = setup
    summed = gradient_graph(spliced, [batch], GraphOptions(CE, num_down_nodes=3, num_up_nodes=2))
    each = gradient_graph(
        spliced, [batch], GraphOptions(CE, num_down_nodes=30, num_up_nodes=3, node_positions="each")
    )
    assert each.nodes and all(node.position is not None for node in each.nodes.values())
    clean = plain_activations(spliced, batch.input_ids)
    per_position = _reference_nodes(spliced, batch, clean, _site_gradients(spliced, batch, clean))
    for node in each.nodes.values():
        features, errors = per_position[f"{node.site}_{node.layer}"]
        expected = errors[node.position] if node.is_error else features[node.position, node.feature]
        assert node.attribution == pytest.approx(float(expected), rel=1e-6, abs=1e-12)
        if not node.is_error:
            sae = spliced.by_key[f"{node.site}_{node.layer}"].sae
            x = clean[f"{node.site}_{node.layer}"]
            x_tl = x - x.mean(-1, keepdim=True) if sae.cfg.center_writing_weights else x
            assert node.activation == pytest.approx(float(sae.encode(x_tl)[0, node.position, node.feature]))
    grads = _site_gradients(spliced, batch, clean)
    crossing = [(s, t) for s, t in each.edges if s.split("@")[1] != t.split("@")[1]]
    assert crossing, "attention carries effects across positions"
    for source, target in crossing[:6] + list(each.edges)[:6]:
        up, down = each.nodes[source], each.nodes[target]
        gate = (torch.arange(batch.input_ids.shape[1]) == down.position).to(torch.float64)
        expected = _reference_edge(
            spliced,
            batch,
            clean,
            grads,
            (f"{down.site}_{down.layer}", down.feature, down.position),
            (f"{up.site}_{up.layer}", up.feature, up.position),
            gate,
        )
        assert each.edges[(source, target)].effect == pytest.approx(expected, rel=1e-6, abs=1e-12)
    for node in summed.nodes.values():
        features, errors = per_position[f"{node.site}_{node.layer}"]
        expected = errors.sum() if node.is_error else features[:, node.feature].sum()
        assert node.attribution == pytest.approx(float(expected), rel=1e-6, abs=1e-12)


def test_positioned_nodes_need_examples_of_one_length(setup, tiny_model_dir):
    from transformers import AutoTokenizer

    spliced, _ = setup
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        tokenize_pair(Pair(text), tokenizer, prepend_bos=True, max_len=64) for text in (PROMPT, "a b c")
    ]
    batches = example_batches(examples, batch_size=2, pad_id=0, device="cpu")
    with pytest.raises(ConfigError, match="NODE_POSITIONS each needs examples of one token length"):
        gradient_graph(spliced, batches, GraphOptions(CE, node_positions="each"))
