"""`suffix.run_suffix` against whole edited sequences through `SplicedModel.run_blocks`
(whose blocks equal transformers' GPT2Block: tests/test_transformer.py)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sparse_coding.models.transformer import GPT2
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.splicing.suffix import PrefixCache, SparseEdit, Suffixes, block_keys_values, run_suffix

LENGTHS = [10, 7, 4]  # real tokens of each sequence, right-padded to 10
START = 1  # the cache begins at block 1 of 4


def _model(**overrides) -> GPT2:
    config = GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=4, n_head=4, attn_implementation="eager"
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    model = GPT2LMHeadModel(config).eval().requires_grad_(False)
    for param in model.parameters():
        if param.ndim == 2:
            param.normal_(0, 0.2)
    return GPT2.from_transformers(model)


def _clean(spliced: SplicedModel) -> tuple[torch.Tensor, torch.Tensor, PrefixCache]:
    """Clean block-1 inputs of three padded sequences, their mask, and keys/values of blocks 1..3."""
    n_pos = max(LENGTHS)
    ids = torch.randint(0, 50, (len(LENGTHS), n_pos))
    mask = (torch.arange(n_pos)[None] < torch.tensor(LENGTHS)[:, None]).long()
    hidden = spliced.run_blocks(spliced.embed(ids), 0, START, mask)
    cache, stream = PrefixCache(START, [], []), hidden
    for block in range(START, spliced.n_layers):
        keys, values = block_keys_values(spliced.model.transformer.h[block], stream)
        cache.keys.append(keys)
        cache.values.append(values)
        stream = spliced.run_blocks(stream, block, block + 1, mask)
    return hidden, mask, cache


def _edited_rows(hidden: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows = (sequence, first edited position), sorted by that position, and their edited streams."""
    seq = torch.randint(0, len(LENGTHS), (n_rows,))
    first = torch.stack([torch.randint(0, LENGTHS[s], ()) for s in seq.tolist()])
    first, order = first.sort(stable=True)
    seq = seq[order]
    edited = hidden[seq].clone()
    for row, p in enumerate(first.tolist()):
        edited[row, p] += torch.randn(hidden.shape[-1])  # the first change
        later = torch.rand(hidden.shape[1]) < 0.3
        later[: p + 1] = False
        edited[row, later] += torch.randn(int(later.sum()), hidden.shape[-1])
    return seq, first, edited


def _suffix_rows(hidden: torch.Tensor, mask: torch.Tensor, n_rows: int):
    """Edited rows of `hidden` laid out as suffixes: seq, first, edited, read position, Suffixes, flat."""
    seq, first, edited = _edited_rows(hidden, n_rows)
    last = mask.sum(dim=1)[seq] - 1
    suffixes = Suffixes(first, seq, last)
    return seq, first, edited, last, suffixes, edited[suffixes.row, suffixes.pos]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"scale_attn_by_inverse_layer_idx": True, "activation_function": "relu"}],
    ids=["gpt2", "layer-scaled-relu"],
)
def test_suffix_rows_equal_whole_sequences_through_the_hf_blocks(overrides):
    spliced = SplicedModel(_model(**overrides), [])
    with torch.inference_mode():
        hidden, mask, cache = _clean(spliced)
        seq, first, edited, last, suffixes, flat = _suffix_rows(hidden, mask, n_rows=40)
        reference = spliced.run_blocks(edited, START, spliced.n_layers, mask[seq])
        blocks = spliced.model.transformer.h[START:]
        every = run_suffix(blocks, flat, suffixes, cache, START)
        at_read = run_suffix(blocks, flat, suffixes, cache, START, read=True)
    real = suffixes.pos <= last[suffixes.row]  # padding positions of short rows are never read
    expected = reference[suffixes.row, suffixes.pos]
    assert (every[real] - expected[real]).abs().max() < 1e-5
    assert (at_read - reference[torch.arange(len(seq)), last]).abs().max() < 1e-5
    assert len(suffixes.groups) == len(first.unique())


def test_a_sparse_edit_takes_unchanged_keys_from_the_cache_and_equals_whole_sequences():
    """pipe.py's rows change the stream only where their feature fires: the first block projects keys
    and values there alone; every mode, and a subset of the rows, still equals the whole sequences."""
    spliced = SplicedModel(_model(), [])
    with torch.inference_mode():
        hidden, mask, cache = _clean(spliced)
        seq, _, edited, last, suffixes, flat = _suffix_rows(hidden, mask, n_rows=40)
        edit = SparseEdit(hidden, (flat != hidden[suffixes.seq, suffixes.pos]).any(dim=-1))
        blocks = spliced.model.transformer.h[START:]
        every = run_suffix(blocks, flat, suffixes, cache, START, edit=edit)
        at_read = run_suffix(blocks, flat, suffixes, cache, START, read=True, edit=edit)
        one_block = run_suffix(blocks[:1], flat, suffixes, cache, START, read=True, edit=edit)
        keep = torch.rand(len(seq)) < 0.5
        sub, tokens = suffixes.subset(keep)
        subset = run_suffix(blocks, flat[tokens], sub, cache, START, read=True, edit=edit.subset(tokens))
        reference = spliced.run_blocks(edited, START, spliced.n_layers, mask[seq])
        after_one = spliced.run_blocks(edited, START, START + 1, mask[seq])
    rows = torch.arange(len(seq))
    assert 0.2 < edit.changed.float().mean() < 0.6  # sparse: most suffix tokens are unchanged
    real = suffixes.pos <= last[suffixes.row]
    assert (every[real] - reference[suffixes.row, suffixes.pos][real]).abs().max() < 1e-5
    assert (at_read - reference[rows, last]).abs().max() < 1e-5
    assert (one_block - after_one[rows, last]).abs().max() < 1e-5
    assert (subset - reference[rows[keep], last[keep]]).abs().max() < 1e-5


def test_a_later_first_block_reads_its_own_cached_keys():
    spliced = SplicedModel(_model(), [])
    with torch.inference_mode():
        hidden, mask, cache = _clean(spliced)
        after_one = spliced.run_blocks(hidden, START, START + 1, mask)
        seq, _, edited, last, suffixes, flat = _suffix_rows(after_one, mask, n_rows=12)
        reference = spliced.run_blocks(edited, START + 1, spliced.n_layers, mask[seq])
        blocks = spliced.model.transformer.h[START + 1 :]
        out = run_suffix(blocks, flat, suffixes, cache, START + 1, read=True)
    assert (out - reference[torch.arange(len(seq)), last]).abs().max() < 1e-5


def test_no_blocks_reads_the_stream_itself():
    seq, first = torch.tensor([0, 1]), torch.tensor([2, 2])
    suffixes = Suffixes(first, seq, torch.tensor([5, 3]))
    flat = torch.randn(suffixes.groups[-1].tokens.stop, 8)
    out = run_suffix([], flat, suffixes, PrefixCache(0, [], []), 0, read=True)
    assert torch.equal(out, flat[suffixes.read])
    assert suffixes.pos[suffixes.read].tolist() == [5, 3]


def test_a_subset_of_rows_continues_from_the_same_streams():
    spliced = SplicedModel(_model(), [])
    with torch.inference_mode():
        hidden, mask, cache = _clean(spliced)
        seq, _, edited, last, suffixes, flat = _suffix_rows(hidden, mask, n_rows=30)
        blocks = spliced.model.transformer.h[START:]
        after_one = run_suffix(blocks[:1], flat, suffixes, cache, START)
        keep = torch.rand(len(seq)) < 0.5
        sub, tokens = suffixes.subset(keep)
        out = run_suffix(blocks[1:], after_one[tokens], sub, cache, START + 1, read=True)
        reference = spliced.run_blocks(edited[keep], START, spliced.n_layers, mask[seq[keep]])
    assert (out - reference[torch.arange(int(keep.sum())), last[keep]]).abs().max() < 1e-5
