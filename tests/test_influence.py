"""Influence, pruning and scores against their definitions: a dense matrix inverse, and a graph by hand."""

from fractions import Fraction

import pytest
import torch

from sparse_coding.algorithms.influence import (
    NodeCounts,
    node_influence,
    normalize_rows,
    partial_influence,
    prune,
    scores_of,
    share_threshold,
)


def random_graph(seed: int, counts: NodeCounts) -> tuple[torch.Tensor, torch.Tensor]:
    """A random acyclic adjacency in node order (features, errors, tokens, logits) and logit weights.

    Features are topologically ordered by index: feature i reads features < i, errors and tokens;
    logits read features and errors. Errors and tokens read nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    n, nf = counts.total, counts.features
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a *= torch.rand(n, n, generator=gen, dtype=torch.float64) < 0.5  # sparse
    reads = torch.zeros(n, n, dtype=torch.bool)
    reads[:nf, : counts.token_slice.stop] = True
    reads[:nf, :nf] = torch.ones(nf, nf, dtype=torch.bool).tril(-1)
    reads[-counts.logits :, : counts.error_slice.stop] = True
    weights = torch.zeros(n, dtype=torch.float64)
    weights[-counts.logits :] = torch.rand(counts.logits, generator=gen, dtype=torch.float64).softmax(0)
    return a * reads, weights


def reference_influence(adjacency: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """w^T ((I - N)^-1 - I), N = |A| with rows normalised (the sum over all path lengths)."""
    norm = adjacency.abs()
    norm = norm / norm.sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(len(norm), dtype=norm.dtype)
    return weights @ (torch.linalg.inv(eye - norm) - eye)


def reference_keep(scores: list[float], share: float) -> set[int]:
    """Indices of the top scores, taken in order until they hold `share` of the total, ties included."""
    total, held, smallest = sum(scores), 0.0, None
    for score in sorted(scores, reverse=True):
        if smallest is not None and held / total >= share:
            break
        smallest, held = score, held + score
    return {i for i, s in enumerate(scores) if s >= smallest}


COUNTS = NodeCounts(features=7, errors=3, tokens=3, logits=2)


@pytest.mark.parametrize("seed", range(5))
def test_influence_equals_the_matrix_inverse_sum_over_paths(seed):
    adjacency, weights = random_graph(seed, COUNTS)
    torch.testing.assert_close(node_influence(adjacency, weights), reference_influence(adjacency, weights))


@pytest.mark.parametrize("share", [0.3, 0.8, 0.98, 1.0])
def test_the_share_threshold_keeps_the_fewest_top_scores_holding_the_share(share):
    scores = torch.tensor([0.5, 0.1, 0.25, 0.1, 0.05, 0.0], dtype=torch.float64)
    kept = set(torch.nonzero(scores >= share_threshold(scores, share)).flatten().tolist())
    assert kept == reference_keep(scores.tolist(), share)


@pytest.mark.parametrize("seed", range(5))
def test_pruning_follows_its_definition_with_inverse_influences(seed):
    adjacency, weights = random_graph(seed, COUNTS)
    node_share, edge_share = 0.8, 0.9
    got = prune(adjacency, weights, COUNTS, node_share=node_share, edge_share=edge_share)
    # Nodes: the top influences holding 80%, plus every token and logit.
    influence = reference_influence(adjacency, weights)
    nodes = torch.zeros(COUNTS.total, dtype=torch.bool)
    nodes[list(reference_keep(influence.tolist(), node_share))] = True
    nodes[COUNTS.token_slice.start :] = True
    # Edges among kept nodes, scored by normalised weight x (target influence + its logit weight).
    kept = adjacency * nodes[:, None] * nodes[None, :]
    norm = kept.abs() / kept.abs().sum(1, keepdim=True).clamp(min=1e-10)
    scores = norm * (reference_influence(kept, weights) + weights)[:, None]
    flat = scores.flatten().tolist()
    edges = torch.zeros(COUNTS.total**2, dtype=torch.bool)
    edges[list(reference_keep(flat, edge_share))] = True
    edges = edges.view_as(scores) & (kept != 0)
    # Then features and errors need a kept outgoing edge, features a kept incoming one, until stable.
    for _ in range(COUNTS.total):
        for node in range(COUNTS.token_slice.start):
            has_out = bool(edges[:, node].any())
            has_in = bool(edges[node].any()) or node >= COUNTS.features
            if nodes[node] and not (has_out and has_in):
                nodes[node] = False
                edges[node, :] = edges[:, node] = False
    assert torch.equal(got.node_mask, nodes)
    assert torch.equal(got.edge_mask, edges)
    assert got.node_mask[COUNTS.token_slice.start :].all() and not got.node_mask.all()


def test_scores_of_a_six_node_graph_by_hand():
    # Nodes: f0, f1 (features), e0 (error), t0 (token), l0, l1 (logits).
    f0, f1, e0, t0, l0, l1 = range(6)
    a = torch.zeros(6, 6, dtype=torch.float64)
    a[f0, t0], a[f0, e0] = 2.0, -1.0  # f0's inputs: t0 2/3, e0 1/3
    a[f1, f0], a[f1, t0] = 3.0, 1.0  # f1: f0 3/4, t0 1/4
    a[l0, f1], a[l0, e0] = 1.0, 1.0  # l0: f1 1/2, e0 1/2
    a[l1, f0], a[l1, f1] = -2.0, 2.0  # l1: f0 1/2, f1 1/2
    w = torch.tensor([0, 0, 0, 0, 0.6, 0.4], dtype=torch.float64)
    counts = NodeCounts(features=2, errors=1, tokens=1, logits=2)
    # Influence, path by path: logits -> f1 (.3 + .2), e0 (.3), f0 (.2); f1 -> f0 (.5 * 3/4), t0 (.5 * 1/4);
    # f0 (.2 + .375) -> t0 (2/3 of it), e0 (1/3 of it).
    fr = Fraction
    inf_f0 = fr(2, 10) + fr(5, 10) * fr(3, 4)
    inf_f1 = fr(5, 10)
    inf_e0 = fr(3, 10) + inf_f0 * fr(1, 3)
    inf_t0 = fr(5, 10) * fr(1, 4) + inf_f0 * fr(2, 3)
    influence = [inf_f0, inf_f1, inf_e0, inf_t0, 0, 0]
    torch.testing.assert_close(
        node_influence(a, w), torch.tensor([float(x) for x in influence], dtype=torch.float64)
    )
    replacement = inf_t0 / (inf_t0 + inf_e0)
    explained = [fr(2, 3), 1, 1, 1, fr(1, 2), 1]  # 1 - each node's input share from e0
    weight = [inf + lw for inf, lw in zip(influence, [0, 0, 0, 0, fr(6, 10), fr(4, 10)], strict=True)]
    completeness = sum(e * x for e, x in zip(explained, weight, strict=True)) / sum(weight)
    got = scores_of(normalize_rows(a), node_influence(a, w), w, counts)
    assert got == pytest.approx((float(replacement), float(completeness)), rel=1e-12)
    assert float(replacement) == pytest.approx(61 / 120)


def test_partial_influence_from_all_rows_is_the_influence():
    adjacency, weights = random_graph(3, COUNTS)
    computed = torch.cat(
        [torch.arange(COUNTS.features), torch.arange(COUNTS.total - COUNTS.logits, COUNTS.total)]
    )
    rows = adjacency[computed]
    torch.testing.assert_close(partial_influence(rows, computed, weights), node_influence(adjacency, weights))
