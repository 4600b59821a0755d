"""Run GPT-2 blocks only where an edit of the residual stream can change anything.

An edit that first touches position p leaves every position before p
unchanged in all later blocks, because attention is causal. Their keys and
values are the clean run's, so a block needs only the suffix p.. of an edited
row, attending to the cached clean prefix. When a row is read at one position
after the last block, that block computes the query, attention output and MLP
of that position alone.

When the edit changes only a few positions of the first block's input (a
feature zeroed where it fires), that block's keys and values elsewhere are
the cached clean ones too, and only the changed tokens are projected
(`SparseEdit`).

Rows are grouped by p. All rows' suffix tokens lie in one flat
(tokens, d_model) matrix, so layer norms, projections and MLPs run as one
large matrix product per block; only attention works group by group.

This is the incremental decoding of language-model serving, on the block's own
modules. It equals `SplicedModel.run_blocks` to float rounding;
`tests/test_suffix.py` checks both read modes against it.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.models.transformer import Block, attend


@dataclass
class PrefixCache:
    """Clean keys and values of blocks [start, start + len(keys)) for S sequences."""

    start: int
    keys: list[Tensor]  # per block: (S, n_head, pos, head_dim)
    values: list[Tensor]


@dataclass
class _Group:
    offset: int  # first computed position
    n_pos: int  # positions offset .. offset + n_pos - 1
    seq: Tensor  # (rows,) cached sequence each row continues
    tokens: slice  # the group's rows * n_pos tokens in the flat stream, row-major
    read: Tensor  # (rows,) position each row is read at, counted from offset


class Suffixes:
    """Layout of rows that equal the clean run before their first changed position.

    Rows must come sorted by that position; each row is computed up to its
    read position (the sequence's last real one), padded to its group's longest.
    """

    def __init__(self, first: Tensor, seq: Tensor, read: Tensor) -> None:
        """first, seq, read: (rows,) first changed position, cached sequence, absolute read position."""
        self.groups: list[_Group] = []
        offsets, sizes = first.unique_consecutive(return_counts=True)
        group_of_row = torch.arange(len(sizes), device=first.device).repeat_interleave(sizes)
        spans = torch.zeros_like(sizes).scatter_reduce_(0, group_of_row, read - first, "amax") + 1
        offsets, sizes, spans = offsets.tolist(), sizes.tolist(), spans.tolist()  # one device sync
        seqs, positions, rows, reads, starts = [], [], [], [], []
        row, token = 0, 0
        for offset, size, n_pos in zip(offsets, sizes, spans, strict=True):
            group_read = read[row : row + size] - offset
            tokens = slice(token, token + size * n_pos)
            group = _Group(offset, n_pos, seq[row : row + size], tokens, group_read)
            self.groups.append(group)
            in_group = torch.arange(size, device=seq.device)
            seqs.append(group.seq.repeat_interleave(n_pos))
            positions.append((offset + torch.arange(n_pos, device=seq.device)).repeat(size))
            rows.append((row + in_group).repeat_interleave(n_pos))
            starts.append(token + in_group * n_pos)
            reads.append(starts[-1] + group_read)
            row, token = row + size, tokens.stop
        self.seq = torch.cat(seqs)  # (tokens,) per flat token: cached sequence,
        self.pos = torch.cat(positions)  # absolute position,
        self.row = torch.cat(rows)  # and row
        self.read = torch.cat(reads)  # (rows,) flat token each row is read at
        self._rows = (first, seq, read, torch.cat(starts))

    def subset(self, keep: Tensor) -> tuple["Suffixes", Tensor]:
        """The layout of the rows where `keep` (rows,) holds, and each of its tokens' index in this one."""
        first, seq, read, start = self._rows
        sub = Suffixes(first[keep], seq[keep], read[keep])
        rows = keep.nonzero()[:, 0][sub.row]
        return sub, start[rows] + sub.pos - first[rows]


@dataclass
class SparseEdit:
    """Where the rows' stream at the first block's input differs from the clean run.

    The first block's keys and values equal the clean run's at every other
    token, so they come from the cache, and only the `changed` tokens are
    projected: as the cached value plus (projection of the edited stream -
    projection of the clean one), both in one matrix product, so that an edit
    which changes nothing adds exactly 0 and its row equals its base row.
    """

    clean: Tensor  # (S, pos, d_model) the clean stream at the first block's input
    changed: Tensor  # (tokens,) bool, over the flat suffix tokens

    def subset(self, tokens: Tensor) -> "SparseEdit":
        """The edit over the tokens `tokens` (indices into this layout), as `Suffixes.subset` keeps them."""
        return SparseEdit(self.clean, self.changed[tokens])


def block_keys_values(block: Block, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """A block's attention keys and values (..., n_head, pos, head_dim) for its input (..., pos, d_model)."""
    keys, values = block.attn.project(block.ln_1(hidden), hidden.shape[-1]).split(hidden.shape[-1], dim=-1)
    return block.attn.heads(keys), block.attn.heads(values)


def run_suffix(
    blocks: Sequence[Block],
    hidden: Tensor,
    suffixes: Suffixes,
    cache: PrefixCache,
    first_block: int,
    read: bool = False,
    edit: SparseEdit | None = None,
) -> Tensor:
    """Blocks `first_block`, ... on the flat suffix tokens `hidden` (tokens, d_model).

    With `read`, the last block computes only each row's read position and
    the result is (rows, d_model); otherwise it is (tokens, d_model). With
    `edit`, `hidden` differs from the clean run only at its changed tokens,
    and the first block projects keys and values only there.
    """
    last = len(blocks) - 1 if read else len(blocks)
    for index in range(last):
        hidden = _block(blocks[index], hidden, suffixes, cache, first_block + index, edit)
        edit = None  # after a block, every suffix token may differ
    if not read:
        return hidden
    if not blocks:
        return hidden[suffixes.read]
    return _block_at(blocks[last], hidden, suffixes, cache, first_block + last, edit)


def _block(
    block: Block, hidden: Tensor, suffixes: Suffixes, cache: PrefixCache, index: int, edit: SparseEdit | None
) -> Tensor:
    """One block on every suffix token; group queries sit at absolute positions offset + i."""
    d_model = hidden.shape[-1]
    normed = block.ln_1(hidden)
    if edit is None:
        qkv = block.attn.c_attn(normed)
        queries, kv = qkv[:, :d_model], qkv[:, d_model:]
    else:
        queries = block.attn.project(normed, 0, d_model)
        kv = _edited_keys_values(block, hidden, suffixes, cache, index, edit)
    mixed = []
    for group in suffixes.groups:
        rows_pos = (-1, group.n_pos)
        query_pos = group.offset + torch.arange(group.n_pos, device=hidden.device)[None]
        out = _attend_group(
            block,
            cache,
            index,
            group,
            queries[group.tokens].unflatten(0, rows_pos),
            kv[group.tokens].unflatten(0, rows_pos),
            query_pos,
        )
        mixed.append(out.flatten(0, 1))
    hidden = hidden + block.attn.c_proj(torch.cat(mixed))
    return hidden + block.mlp(block.ln_2(hidden))


def _block_at(
    block: Block, hidden: Tensor, suffixes: Suffixes, cache: PrefixCache, index: int, edit: SparseEdit | None
) -> Tensor:
    """One block computed at each row's read position only: (rows, d_model)."""
    if edit is None:
        kv = block.attn.project(block.ln_1(hidden), hidden.shape[-1])
    else:
        kv = _edited_keys_values(block, hidden, suffixes, cache, index, edit)
    queries = block.attn.project(block.ln_1(hidden[suffixes.read]), 0, hidden.shape[-1])
    mixed = []
    per_group = queries.split([len(group.seq) for group in suffixes.groups])
    for group, group_queries in zip(suffixes.groups, per_group, strict=True):
        group_kv = kv[group.tokens].unflatten(0, (len(group.seq), group.n_pos))
        query_pos = (group.offset + group.read)[:, None]
        mixed.append(
            _attend_group(block, cache, index, group, group_queries[:, None], group_kv, query_pos)[:, 0]
        )
    at = hidden[suffixes.read] + block.attn.c_proj(torch.cat(mixed))
    return at + block.mlp(block.ln_2(at))


def _edited_keys_values(
    block: Block, hidden: Tensor, suffixes: Suffixes, cache: PrefixCache, index: int, edit: SparseEdit
) -> Tensor:
    """Keys and values (tokens, 2 * d_model) of a sparsely edited stream: cached, corrected where changed."""
    start = index - cache.start
    kv = torch.cat(
        [
            cache.keys[start][suffixes.seq, :, suffixes.pos].flatten(1),
            cache.values[start][suffixes.seq, :, suffixes.pos].flatten(1),
        ],
        dim=1,
    )
    changed = edit.changed.nonzero()[:, 0]
    clean = edit.clean[suffixes.seq[changed], suffixes.pos[changed]]
    normed = block.ln_1(torch.cat([hidden[changed], clean.to(hidden.dtype)]))
    edited, unedited = block.attn.project(normed, hidden.shape[-1]).split(len(changed))
    return kv.index_add_(0, changed, edited - unedited)


def _attend_group(
    block: Block,
    cache: PrefixCache,
    index: int,
    group: _Group,
    queries: Tensor,
    suffix_kv: Tensor,
    query_pos: Tensor,
) -> Tensor:
    """A group's attention over its cached clean prefix and its own suffix keys and values.

    queries (rows, n_query, d_model) sit at absolute positions query_pos
    (rows or 1, n_query); suffix_kv (rows, n_pos, 2 * d_model). Returns
    (rows, n_query, d_model).
    """
    keys, values = suffix_kv.split(queries.shape[-1], dim=-1)
    start, cached = index - cache.start, (group.seq, slice(None), slice(None, group.offset))
    keys = torch.cat([cache.keys[start][cached], block.attn.heads(keys)], dim=2)
    values = torch.cat([cache.values[start][cached], block.attn.heads(values)], dim=2)
    key_pos = torch.arange(group.offset + group.n_pos, device=queries.device)
    allowed = key_pos <= query_pos[..., None]  # (rows or 1, n_query, keys)
    return block.attn.merge_heads(
        attend(block.attn.heads(queries), keys, values, allowed[:, None], block.attn.scale)
    )
