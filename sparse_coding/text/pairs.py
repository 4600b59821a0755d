"""Contrastive pairs for fast.py: prompts, answers, and padded example batches.

An example is a clean input, its answer token, and optionally a patch input of
the same length with its own answer (Marks et al. 2024's datasets: JSONL rows
``{"clean_prefix", "patch_prefix", "clean_answer", "patch_answer"}``). Without
an answer, a prompt's last token is its answer and the tokens before it are
its input; with one, the prompt is the input and the answer (exactly one
token) is predicted after it. Clean and patch inputs must have the same token
length, so that position p of one is position p of the other.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sparse_coding.errors import DatasetError
from sparse_coding.text.batches import TokenBatch, padded, text_ids
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")


@dataclass(frozen=True)
class Pair:
    """One example as text; `where` names it in errors (e.g. "PAIRS_FILE x.jsonl line 3")."""

    clean_prefix: str
    patch_prefix: str | None = None
    clean_answer: str | None = None
    patch_answer: str | None = None
    where: str = "PROMPT"


@dataclass(frozen=True)
class Example:
    """One tokenized example: input ids and answer ids."""

    clean_ids: list[int]
    answer: int
    patch_ids: list[int] | None
    patch_answer: int | None


def read_pairs_file(path: Path, limit: int) -> list[Pair]:
    """The first `limit` rows of a JSONL pairs file; every field of PAIR_FIELDS is required.

    Raises:
        DatasetError: the file is missing, or a row is not JSON or lacks a field
            (the message names the line).
    """
    if not path.is_file():
        raise DatasetError(f"PAIRS_FILE {str(path)!r} does not exist")
    pairs = []
    number = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if len(pairs) == limit:
                    break
                if line.strip():
                    pairs.append(_pair_row(line, f"PAIRS_FILE {path.name} line {number}"))
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"PAIRS_FILE {str(path)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} near line "
            f"{number + 1}); it must be JSON Lines, one object per line with the strings "
            f"{', '.join(PAIR_FIELDS)}"
        ) from e
    if not pairs:
        raise DatasetError(f"PAIRS_FILE {str(path)!r} has no rows")
    return pairs


def _pair_row(line: str, where: str) -> Pair:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where} is not valid JSON: {e}") from e
    missing = [
        name for name in PAIR_FIELDS if not isinstance(row, dict) or not isinstance(row.get(name), str)
    ]
    if missing:
        raise DatasetError(
            f"{where} lacks {', '.join(missing)} (or they are not strings); each row needs "
            f"{', '.join(PAIR_FIELDS)}"
        )
    return Pair(*(row[name] for name in PAIR_FIELDS), where=where)


def tokenize_pair(pair: Pair, tokenizer: Tokenizer, *, prepend_bos: bool, max_len: int) -> Example:
    """Token ids of one pair by the module's rule; errors name the pair.

    Raises:
        DatasetError: an input too short or too long, an answer that is not
            exactly one token, or clean and patch inputs of different lengths.
    """
    clean_ids, answer = _input_and_answer(
        tokenizer, pair.clean_prefix, pair.clean_answer, prepend_bos, max_len, f"{pair.where} clean"
    )
    if pair.patch_prefix is None:
        return Example(clean_ids, answer, None, None)
    patch_ids, patch_answer = _input_and_answer(
        tokenizer, pair.patch_prefix, pair.patch_answer, prepend_bos, max_len, f"{pair.where} patch"
    )
    if len(patch_ids) != len(clean_ids):
        raise DatasetError(
            f"{pair.where}: the clean input is {len(clean_ids)} tokens and the patch input "
            f"{len(patch_ids)}; patching needs inputs of equal token length (position p of one is "
            f"position p of the other). Reword one, or drop the row"
        )
    return Example(clean_ids, answer, patch_ids, patch_answer)


def _input_and_answer(
    tokenizer: Tokenizer,
    prefix: str,
    answer: str | None,
    prepend_bos: bool,
    max_len: int,
    where: str,
) -> tuple[list[int], int]:
    ids = text_ids(tokenizer, prefix, prepend_bos=prepend_bos)
    if answer is None:
        if len(ids) < 2:
            raise DatasetError(
                f"{where} prompt {prefix!r} has a single token (BOS included); without an answer "
                f"its last token is the answer, so give it at least one more token"
            )
        ids, answer_id = ids[:-1], ids[-1]
    else:
        answer_ids = text_ids(tokenizer, answer, prepend_bos=False)
        if len(answer_ids) != 1:
            raise DatasetError(
                f"{where} answer {answer!r} is {len(answer_ids)} tokens {answer_ids}; an answer must be "
                f"exactly one token (often with its leading space, e.g. ' Mary')"
            )
        answer_id = answer_ids[0]
    if not ids:
        raise DatasetError(f"{where} prompt {prefix!r} is empty; give it some text or set PREPEND_BOS")
    if len(ids) > max_len:
        raise DatasetError(f"{where} prompt is {len(ids)} tokens, more than the model's context of {max_len}")
    return ids, answer_id


def token_batch(tokens: Tensor, patch_tokens: Tensor | None = None) -> TokenBatch:
    """Unpadded prompts (batch, pos) as one batch: each row's last token is its answer."""
    if tokens.shape[1] < 2:
        raise DatasetError("a prompt needs at least two tokens: the input and the answer after it")
    return TokenBatch(
        tokens[:, :-1],
        torch.ones_like(tokens[:, :-1]),
        answers=tokens[:, -1],
        patch_ids=None if patch_tokens is None else patch_tokens[:, :-1],
        patch_answers=None if patch_tokens is None else patch_tokens[:, -1],
    )


def example_batches(
    examples: Sequence[Example], *, batch_size: int, pad_id: int, device: torch.device | str
) -> list[TokenBatch]:
    """Right-padded batches of `batch_size` examples (all with a patch input, or none)."""
    with_patch = {example.patch_ids is not None for example in examples}
    if len(with_patch) > 1:
        raise DatasetError("some examples have a patch input and some do not; give every example one")
    return [
        _pad(examples[start : start + batch_size], pad_id, device)
        for start in range(0, len(examples), batch_size)
    ]


def _pad(chunk: Sequence[Example], pad_id: int, device: torch.device | str) -> TokenBatch:
    ids, mask = padded([example.clean_ids for example in chunk], pad_id)
    has_patch = chunk[0].patch_ids is not None
    return TokenBatch(
        ids.to(device),
        mask.to(device),
        answers=torch.tensor([example.answer for example in chunk], device=device),
        patch_ids=padded([e.patch_ids for e in chunk], pad_id)[0].to(device) if has_patch else None,
        patch_answers=torch.tensor([e.patch_answer for e in chunk], device=device) if has_patch else None,
    )
