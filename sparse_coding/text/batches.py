"""The one batch type, the one padding rule, and the one way a text becomes token ids.

`text_ids`: the tokenizer adds no special tokens; BOS first when the SAEs were trained with it.
`padded`: right-padded, so every row's real tokens come first, positions and attention need no
shift, and each row is read at its last real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a batch is built: preflight tokenizes without it
    from torch import Tensor

    from sparse_coding.text.tokenizer import Tokenizer


@dataclass
class TokenBatch:
    """Right-padded token ids; example batches add answers and patch inputs (else None)."""

    input_ids: Tensor  # (batch, pos) long, right-padded with the pad id
    attention_mask: Tensor  # (batch, pos) long, 1 = real token
    first_index: int = 0  # index of the batch's first sequence in its stream
    answers: Tensor | None = None  # (batch,) examples: the token predicted after each row
    patch_ids: Tensor | None = None  # (batch, pos) examples with a patch input, same mask as input_ids
    patch_answers: Tensor | None = None  # (batch,)

    @property
    def lengths(self) -> Tensor:
        """Real tokens per sequence (batch,)."""
        return self.attention_mask.sum(dim=1)

    @property
    def last(self) -> Tensor:
        """(batch,) each row's last real position, where its answer is predicted."""
        return self.lengths - 1

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Tensor) -> TokenBatch:
        """The rows at `rows` (repeats allowed) of every tensor, e.g. one row per ablation."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "first_index"}
        return replace(self, **{name: t[rows] for name, t in tensors.items() if t is not None})


def text_ids(tokenizer: Tokenizer, text: str, *, prepend_bos: bool) -> list[int]:
    """A text's token ids, the tokenizer adding no special tokens; the tokenizer's BOS first when asked."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if prepend_bos else ids


def pad_id(tokenizer: Tokenizer) -> int:
    """The id padding writes: the tokenizer's pad token, else its end of text (GPT-2 has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (len(rows), longest row) long: each row's ids first, then pad_id."""
    import torch

    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
