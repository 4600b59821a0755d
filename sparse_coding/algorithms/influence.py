"""Influence, pruning and scores of an attribution graph, as circuit-tracer defines them.

Pure tensor functions of an adjacency matrix A (n, n), A[target, source] =
the direct effect of source on target, with nodes ordered [features, error
nodes, token embeddings, logits] (`NodeCounts`), and the logits' weights w
(their probabilities):

- normalised A: |A| with every row divided by its sum (a node's inputs as shares);
- influence of each node on the logits: w^T (A + A^2 + A^3 + ...), the sum
  over every path of the products of shares (A is nilpotent: the graph is acyclic);
- pruning: keep the nodes holding `node_share` of the total influence (token
  embeddings and logits always), then, in the graph of kept nodes, the edges
  whose score (normalised weight times the target's influence plus its logit
  weight) holds `edge_share` of the total; then drop features and error nodes
  with no kept outgoing edge and features with no kept incoming edge, until
  nothing changes;
- replacement score: the token embeddings' share of the influence that tokens
  and error nodes have; completeness score: the influence-weighted mean over
  nodes of the share of each node's (normalised) input that comes from no
  error node.
"""

from typing import NamedTuple

import torch
from torch import Tensor


class NodeCounts(NamedTuple):
    """How many nodes of each kind, in adjacency order."""

    features: int
    errors: int
    tokens: int
    logits: int

    @property
    def error_slice(self) -> slice:
        return slice(self.features, self.features + self.errors)

    @property
    def token_slice(self) -> slice:
        return slice(self.features + self.errors, self.features + self.errors + self.tokens)

    @property
    def total(self) -> int:
        return sum(self)


class Pruned(NamedTuple):
    """Kept nodes (n,) and edges (n, n), and each node's cumulative influence share (n,)."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative: Tensor


def normalize_rows(matrix: Tensor) -> Tensor:
    """|matrix| with each row summing to 1 (rows of zeros stay zero)."""
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def total_influence(normalized: Tensor, weights: Tensor) -> Tensor:
    """weights^T (A + A^2 + ...) for a nilpotent A (n, n): the sum over paths of any length."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(len(weights)):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise ValueError("the graph has a cycle: influence does not converge (A is not nilpotent)")


def node_influence(adjacency: Tensor, logit_weights: Tensor) -> Tensor:
    """Each node's influence on the weighted logits (n,)."""
    return total_influence(normalize_rows(adjacency), logit_weights)


def share_threshold(scores: Tensor, share: float) -> Tensor:
    """The score s such that the scores >= s are the fewest top scores holding `share` of the sum."""
    ordered = scores.flatten().sort(descending=True).values
    total = ordered.sum()
    if total <= 0:
        return ordered.new_tensor(float("inf"))
    covered = ordered.cumsum(0) / total
    index = min(int((covered < share).sum()), len(ordered) - 1)
    return ordered[index]


def cumulative_shares(scores: Tensor) -> Tensor:
    """Per node, the share of the total held by it and every node scoring higher (n,)."""
    ordered, order = scores.sort(descending=True)
    shares = torch.zeros_like(scores)
    shares[order] = ordered.cumsum(0) / ordered.sum().clamp(min=1e-10)
    return shares


def prune(
    adjacency: Tensor,
    logit_weights: Tensor,
    counts: NodeCounts,
    *,
    node_share: float,
    edge_share: float,
    influence: Tensor | None = None,
) -> Pruned:
    """The nodes and edges kept at `node_share` / `edge_share` of the influence (module docstring);
    `influence` is `node_influence(adjacency, logit_weights)` when already computed."""
    influence = node_influence(adjacency, logit_weights) if influence is None else influence
    nodes = influence >= share_threshold(influence, node_share)
    nodes[counts.token_slice.start :] = True
    # Edge scores within the kept nodes: the submatrix holds every non-zero entry of the masked graph.
    chosen = torch.nonzero(nodes).flatten()
    kept, weights = adjacency[chosen][:, chosen], logit_weights[chosen]
    normalized = normalize_rows(kept)
    scores = normalized * (total_influence(normalized, weights) + weights)[:, None]
    edges = torch.zeros_like(adjacency, dtype=torch.bool)
    edges[chosen[:, None], chosen[None, :]] = (scores >= share_threshold(scores, edge_share)) & (kept != 0)
    inner = counts.token_slice.start  # features and error nodes
    while True:
        before = nodes.clone()
        nodes[:inner] &= edges[:, :inner].any(dim=0)
        nodes[: counts.features] &= edges[: counts.features].any(dim=1)
        edges &= nodes[:, None] & nodes[None, :]
        if torch.equal(nodes, before):
            return Pruned(nodes, edges, cumulative_shares(influence))


def scores_of(
    normalized: Tensor, influence: Tensor, logit_weights: Tensor, counts: NodeCounts
) -> tuple[float, float]:
    """(replacement score, completeness score) of a graph (module docstring), from its normalised
    adjacency and its influence."""
    tokens = influence[counts.token_slice].sum()
    errors = influence[counts.error_slice].sum()
    replacement = tokens / (tokens + errors).clamp(min=1e-10)
    explained = 1 - normalized[:, counts.error_slice].sum(dim=1)
    weight = influence + logit_weights
    completeness = (explained * weight).sum() / weight.sum().clamp(min=1e-10)
    return float(replacement), float(completeness)


def partial_influence(rows: Tensor, row_nodes: Tensor, logit_weights: Tensor) -> Tensor:
    """Influence (n,) from the rows computed so far: rows (m, n) of the nodes `row_nodes` (m,);
    `logit_weights` (n,) is zero except at logit nodes (whose rows come first)."""
    normalized = normalize_rows(rows)
    current = logit_weights.clone()
    total = torch.zeros_like(logit_weights)
    for _ in range(len(logit_weights)):
        current = current[row_nodes] @ normalized
        if not current.any():
            return total
        total += current
    raise ValueError("the graph has a cycle: influence does not converge")
