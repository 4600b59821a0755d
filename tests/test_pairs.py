"""pairs: contrastive pairs files, the answer rule, and right-padded example batches."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from sparse_coding.errors import DatasetError
from sparse_coding.text.pairs import Pair, example_batches, read_pairs_file, tokenize_pair


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _row(clean="When Mary and John went", patch="When John and Mary went", answer=" to", patch_answer=" the"):
    return {
        "clean_prefix": clean,
        "patch_prefix": patch,
        "clean_answer": answer,
        "patch_answer": patch_answer,
    }


def _write(tmp_path, rows) -> object:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_a_pairs_file_gives_num_examples_rows_with_their_fields(tmp_path):
    path = _write(tmp_path, [_row(), "", _row(answer=" a"), _row(answer=" b")])
    pairs = read_pairs_file(path, 2)
    assert [p.clean_answer for p in pairs] == [" to", " a"]
    assert pairs[1].where == "PAIRS_FILE pairs.jsonl line 3"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"clean_prefix": "a", "patch_prefix": "b", "clean_answer": " to"}, "line 2 lacks patch_answer"),
        ("{not json", "line 2 is not valid JSON"),
        (_row(patch_answer=7), "line 2 lacks patch_answer"),
    ],
)
def test_a_row_with_a_missing_field_or_bad_json_is_an_error_naming_the_line(tmp_path, row, message):
    with pytest.raises(DatasetError, match=message):
        read_pairs_file(_write(tmp_path, [_row(), row]), 10)


def test_clean_and_patch_inputs_of_different_lengths_are_an_error_naming_the_row(tmp_path, tokenizer):
    long_patch = "When John and Mary went to the store"
    assert len(_ids(tokenizer, long_patch)) != len(_ids(tokenizer, "When Mary and John went"))
    (pair,) = read_pairs_file(_write(tmp_path, [_row(patch=long_patch)]), 1)
    with pytest.raises(DatasetError, match=r"PAIRS_FILE pairs.jsonl line 1: the clean input is \d+ tokens"):
        tokenize_pair(pair, tokenizer, prepend_bos=True, max_len=64)


def test_an_answer_of_more_than_one_token_is_an_error_naming_the_row(tmp_path, tokenizer):
    answer = " 1969 the first humans"
    assert len(_ids(tokenizer, answer)) > 1
    (pair,) = read_pairs_file(_write(tmp_path, [_row(answer=answer)]), 1)
    with pytest.raises(DatasetError, match="line 1 clean answer ' 1969 the first humans' is [2-9] tokens"):
        tokenize_pair(pair, tokenizer, prepend_bos=True, max_len=64)


def test_without_answers_the_last_token_is_the_answer_and_the_rest_the_input(tokenizer):
    ids = [tokenizer.bos_token_id, *_ids(tokenizer, "The cat sat on the mat")]
    example = tokenize_pair(Pair("The cat sat on the mat"), tokenizer, prepend_bos=True, max_len=64)
    assert example.clean_ids == ids[:-1] and example.answer == ids[-1]
    assert example.patch_ids is None and example.patch_answer is None


def test_with_answers_the_prompts_are_the_inputs(tokenizer):
    pair = Pair("When Mary and John went", "When John and Mary went", " to", " the")
    example = tokenize_pair(pair, tokenizer, prepend_bos=False, max_len=64)
    assert example.clean_ids == _ids(tokenizer, "When Mary and John went")
    assert example.patch_ids == _ids(tokenizer, "When John and Mary went")
    assert (example.answer, example.patch_answer) == (_ids(tokenizer, " to")[0], _ids(tokenizer, " the")[0])


def test_batches_are_right_padded_and_read_at_each_rows_last_real_token(tokenizer):
    texts = ["The quick brown fox jumps over", "Hello there", "When Mary and John went to the store"]
    examples = [tokenize_pair(Pair(t), tokenizer, prepend_bos=True, max_len=64) for t in texts]
    first, second = example_batches(examples, batch_size=2, pad_id=0, device="cpu")
    assert len(first) == 2 and len(second) == 1
    for row, example in enumerate(examples[:2]):
        n = len(example.clean_ids)
        assert first.input_ids[row, :n].tolist() == example.clean_ids
        assert first.attention_mask[row].tolist() == [1] * n + [0] * (first.input_ids.shape[1] - n)
        assert int(first.last[row]) == n - 1
    assert torch.equal(first.answers, torch.tensor([e.answer for e in examples[:2]]))
