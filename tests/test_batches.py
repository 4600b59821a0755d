"""The one batch type and padding rule: checked against tensors written out by hand."""

import torch

from sparse_coding.text.batches import TokenBatch, padded


def test_rows_are_right_padded_with_the_pad_id_and_masked():
    input_ids, attention_mask = padded([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_each_row_is_read_at_its_last_real_token():
    batch = TokenBatch(*padded([[5, 6, 7], [8], [9, 10]], pad_id=0))
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.last.tolist() == [2, 0, 1]
    assert len(batch) == 3 and batch.first_index == 0 and batch.answers is None


def test_selecting_rows_keeps_answers_and_patch_inputs_with_their_rows():
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    batch = TokenBatch(
        ids,
        torch.ones_like(ids),
        answers=torch.tensor([10, 11, 12]),
        patch_ids=ids + 100,
        patch_answers=torch.tensor([20, 21, 22]),
    )
    chosen = batch.select(torch.tensor([2, 0, 2]))
    assert chosen.input_ids.tolist() == [[5, 6], [1, 2], [5, 6]]
    assert chosen.answers.tolist() == [12, 10, 12]
    assert chosen.patch_ids.tolist() == [[105, 106], [101, 102], [105, 106]]
    assert chosen.patch_answers.tolist() == [22, 20, 22]
    assert TokenBatch(ids, torch.ones_like(ids)).select(torch.tensor([1])).patch_ids is None
