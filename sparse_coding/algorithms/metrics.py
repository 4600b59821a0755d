"""fast.py's metrics, each written as a loss: lower = the model favours the clean answer more.

Attributions estimate loss(node at its baseline) - loss(clean), so for every
metric a positive attribution means the node supports the answer (removing it
would raise the loss). Per example, at the last real position of the clean
input (logits (batch, vocab)):

    cross_entropy  -log p(answer)                        (today's metric)
    logprob        -log p(answer); reported as log p     (same attributions)
    logit_diff     logit(patch_answer) - logit(answer)   (Marks et al.'s default)

What the values mean in words (for metadata, legends and reports) is written
once, in `sparse_coding.graphs.conventions.sentences`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Metric:
    """A metric as a loss of last-position logits; reports show `reported_sign` times the loss."""

    name: str
    loss: Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (logits, answers, patch_answers) -> (batch,)
    needs_patch_answer: bool
    reported_sign: float = 1.0


def _at_least_float32(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _cross_entropy(logits: Tensor, answers: Tensor, patch_answers: Tensor | None) -> Tensor:
    return F.cross_entropy(_at_least_float32(logits), answers, reduction="none")


def _logit_diff(logits: Tensor, answers: Tensor, patch_answers: Tensor | None) -> Tensor:
    assert patch_answers is not None, "the config's METRIC check asks for patch prompts"
    picked = _at_least_float32(logits).gather(1, torch.stack([patch_answers, answers], dim=1))
    return picked[:, 0] - picked[:, 1]


METRICS: dict[str, Metric] = {
    "cross_entropy": Metric("cross_entropy", _cross_entropy, False),
    "logprob": Metric("logprob", _cross_entropy, False, reported_sign=-1.0),
    "logit_diff": Metric("logit_diff", _logit_diff, True),
}
