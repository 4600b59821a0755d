"""Node slots: one integer per node of a site, summed over positions or per position.

fast.py's nodes are per site either a feature or the site's error, summed over
token positions (NODE_POSITIONS sum) or at one position (NODE_POSITIONS each,
ids ``resid_9.331@7``, ``mlp_error_9@7``). Inside the algorithms a node of a
site is one integer, its *slot*:

    feature f at position p:  f * n + p        error at position p:  -1 - p

with n the number of positions (1 when summed, every position then being 0).
Errors sort before features; a site's slots are a sorted 1-D tensor.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.config.schema import NodePositions
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import error_id, feature_id, parse_site_key, with_position


@dataclass(frozen=True)
class NodeLayout:
    """How token positions map to nodes: `positioned` False sums them (n = 1)."""

    positioned: bool = False
    n: int = 1  # node positions: the examples' token length when positioned

    def position_of(self, positions: Tensor) -> Tensor:
        """The node position of each token position: itself, or 0 when summed."""
        return positions if self.positioned else torch.zeros_like(positions)

    def feature_slots(self, features: Tensor, positions: Tensor) -> Tensor:
        return features * self.n + self.position_of(positions)

    def error_slots(self, positions: Tensor) -> Tensor:
        return -1 - self.position_of(positions)

    def features_of(self, slots: Tensor) -> Tensor:
        """The feature of each (feature) slot."""
        return torch.div(slots, self.n, rounding_mode="floor")

    def positions_mask(self, slots: Tensor, n_tokens: int) -> Tensor:
        """(len(slots), n_tokens) bool: the token positions each slot covers."""
        if not self.positioned:
            return torch.ones(len(slots), n_tokens, dtype=torch.bool, device=slots.device)
        own = torch.where(slots < 0, -1 - slots, slots % self.n)
        return own[:, None] == torch.arange(n_tokens, device=slots.device)[None, :]

    def node_id(self, key: str, slot: int) -> str:
        """The node id of a slot of site `key` (``attn_4``)."""
        site, layer = parse_site_key(key)
        if slot < 0:
            position = -1 - slot
            base = error_id(site, layer)
        else:
            position = slot % self.n
            base = feature_id(site, layer, slot // self.n)
        return with_position(base, position if self.positioned else None)


def layout_for(node_positions: NodePositions, widths: list[int]) -> NodeLayout:
    """The layout of NODE_POSITIONS over batches of the given token widths (each: all the same)."""
    if node_positions == "sum":
        return NodeLayout()
    if len(set(widths)) > 1:
        raise ConfigError(
            f"NODE_POSITIONS each needs examples of one token length (positions must mean the same "
            f"thing in every example, as in templatic data); got lengths {sorted(set(widths))}. "
            f"Use examples of equal length, or NODE_POSITIONS sum"
        )
    return NodeLayout(positioned=True, n=widths[0])


SUMMED = NodeLayout()  # nodes summed over positions, the default
