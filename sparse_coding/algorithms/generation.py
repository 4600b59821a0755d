"""Generate continuations with GPT-2's key/value cache, batched, under any intervention.

Prompts of different lengths run side by side, left-padded (`left_padded`):
then every prompt ends in the same column and each step appends one column.
Token positions count real tokens (`GPT2.forward_cached`), so padding
changes nothing but float rounding.

Decoding is greedy when the temperature is 0, else sampled from
softmax(logits / temperature) restricted to the smallest set of most likely
tokens whose probability reaches `top_p` (nucleus sampling). Sampling draws
one uniform number per row and step up front, from a generator seeded by
`seed`, and inverts the kept distribution's cumulative sum: two runs with
the same seed use the same random numbers, so a steered run that predicts
the clean distribution samples the clean token.

Phases (`generate`):
    1. prefill: the prompts in one forward, filling the cache;
    2. steps: one position per forward, `max_new_tokens` of them, each under
       the intervention `intervention_at` gives for that chunk's token indices.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.config import DEFAULTS
from sparse_coding.models.transformer import KVCache
from sparse_coding.runtime.progress import progress
from sparse_coding.splicing.splice import Intervention, SplicedModel
from sparse_coding.text.batches import padded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How to pick each new token: greedy (temperature 0) or sampled with temperature and top_p (the
    config keys of the same names; `Config.options` builds one), defaults from the config's."""

    max_new_tokens: int = DEFAULTS.MAX_NEW_TOKENS
    temperature: float = DEFAULTS.TEMPERATURE
    top_p: float = DEFAULTS.TOP_P
    seed: int = DEFAULTS.SEED

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Prompts(NamedTuple):
    """Token ids of several prompts, left-padded to one width."""

    input_ids: Tensor  # (batch, width)
    attention_mask: Tensor  # (batch, width) 1 = real token
    lengths: Tensor  # (batch,) real tokens per prompt

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def token_index(self, start: int, stop: int) -> Tensor:
        """(batch, stop - start): the token index (BOS = 0) of columns start..stop - 1; negative on pads.
        Columns past the prompts are generated tokens."""
        columns = torch.arange(start, stop, device=self.lengths.device)
        return columns[None, :] - (self.width - self.lengths)[:, None]

    def repeat(self, times: int) -> "Prompts":
        """Each prompt `times` times in a row (prompt p's copies are rows p * times ...)."""
        return Prompts(*(t.repeat_interleave(times, dim=0) for t in self))

    def extended(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(ids, attention mask) of the prompts followed by `tokens` (batch, n)."""
        ones = torch.ones_like(tokens, dtype=self.attention_mask.dtype)
        return torch.cat([self.input_ids, tokens], 1), torch.cat([self.attention_mask, ones], 1)


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> Prompts:
    """Prompts (token id lists, none empty) as one left-padded batch."""
    ids, mask = padded([prompt[::-1] for prompt in prompts], pad_id)  # reversed rows, right-padded
    lengths = torch.tensor([len(p) for p in prompts])
    return Prompts(ids.flip(1).to(device), mask.flip(1).to(device), lengths.to(device))


def next_tokens(logits: Tensor, sampling: Sampling, uniforms: Tensor | None) -> Tensor:
    """(batch,) token ids from last-position logits (batch, d_vocab); `uniforms` (batch,) in [0, 1)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
    kept = sorted_probs * (before < sampling.top_p)  # the first token is always kept
    cdf = kept.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None].contiguous(), right=True)
    return order.gather(-1, pick.clamp(max=cdf.shape[-1] - 1))[:, 0]


class Generated(NamedTuple):
    tokens: Tensor  # (batch, max_new_tokens)
    logits: Tensor | None  # (batch, max_new_tokens, d_vocab) float32, when asked for


@torch.no_grad()
def generate(
    spliced: SplicedModel,
    prompts: Prompts,
    sampling: Sampling,
    *,
    intervention_at: Callable[[Tensor], Intervention | None] | None = None,
    keep_logits: bool = False,
    desc: str = "Generating",
) -> Generated:
    """Continue every prompt by `sampling.max_new_tokens` tokens with the key/value cache.

    Args:
        spliced: the model; only the hooks of `intervention_at`'s interventions run.
        prompts: left-padded prompts (`left_padded`), one row per continuation.
        intervention_at: the intervention for a chunk of columns, given their
            token indices (`Prompts.token_index`); None runs the plain model.
        keep_logits: also return each step's logits (memory: batch x steps x vocab).

    Generation does not stop at an end-of-text token: every row gets all its tokens.
    """
    model, batch, steps = spliced.model, len(prompts.lengths), sampling.max_new_tokens
    cache = KVCache.for_model(model, batch, prompts.width + steps)
    uniforms = None
    if not sampling.greedy:
        generator = torch.Generator().manual_seed(sampling.seed)
        uniforms = torch.rand((batch, steps), generator=generator).to(model.device)
    tokens, logits = [], []
    ids, mask, start = prompts.input_ids, prompts.attention_mask, 0
    for step in progress(range(steps), desc=desc, unit="token", leave=False):
        columns = prompts.token_index(start, start + ids.shape[1])
        intervention = None if intervention_at is None else intervention_at(columns)
        with spliced.intervene(intervention):
            hidden = model.forward_cached(ids, mask, cache)
        step_logits = model.unembed(hidden[:, -1]).float()
        ids = next_tokens(step_logits, sampling, None if uniforms is None else uniforms[:, step])[:, None]
        tokens.append(ids)
        if keep_logits:
            logits.append(step_logits)
        start = cache.length
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return Generated(torch.cat(tokens, 1), torch.stack(logits, 1) if keep_logits else None)
