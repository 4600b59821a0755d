"""corpus: text sources (PROMPT, .txt/.jsonl/.parquet) and padded, lazy token batches."""

import itertools
import json

import pytest
import torch
from transformers import AutoTokenizer

from sparse_coding.errors import DatasetError
from sparse_coding.pipelines.inputs import text_source
from sparse_coding.text.corpus import iter_batches, load_texts


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    return tok


def test_without_dataset_the_prompt_is_the_only_text(make_config):
    assert list(load_texts(text_source(make_config(PROMPT="Hello there")))) == ["Hello there"]


def test_a_txt_file_yields_one_text_per_nonblank_line_up_to_the_cap(make_config, tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("one\n\n  \ntwo\nthree\nfour\n")
    texts = load_texts(text_source(make_config(DATASET=str(path), NUM_SEQUENCES_EVALED=3)))
    assert list(texts) == ["one", "two", "three"]


def test_jsonl_and_parquet_files_read_the_text_column(make_config, tmp_path):
    rows = [{"body": "alpha", "id": 1}, {"body": "beta", "id": 2}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        texts = load_texts(text_source(make_config(DATASET=str(path), DATASET_TEXT_COLUMN="body")))
        assert list(texts) == ["alpha", "beta"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_missing_text_column_names_the_file_and_the_columns_it_has(make_config, tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"body": "x", "id": 1}))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"body": "x", "id": 1}]), path)
    with pytest.raises(DatasetError, match=r"no column 'text'.*body, id") as info:
        list(load_texts(text_source(make_config(DATASET=str(path)))))
    assert str(path) in str(info.value)


def test_an_unsupported_extension_lists_the_valid_ones(make_config, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(DatasetError, match=r"\.csv.*\.txt, \.jsonl, \.parquet"):
        list(load_texts(text_source(make_config(DATASET=str(path)))))


def test_batches_put_bos_first_truncate_and_right_pad_with_a_mask(tokenizer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hi", ""]
    batches = list(iter_batches(texts, tokenizer, batch_size=4, max_len=6, prepend_bos=True, device="cpu"))
    assert len(batches) == 1  # the empty text is skipped
    batch = batches[0]
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[:2]]
    expected = [[tokenizer.bos_token_id, *ids][:6] for ids in plain]
    for row, ids in enumerate(expected):
        assert batch.input_ids[row, : len(ids)].tolist() == ids
        assert batch.attention_mask[row].tolist() == [1] * len(ids) + [0] * (6 - len(ids))
        assert (batch.input_ids[row, len(ids) :] == tokenizer.pad_token_id).all()
    assert batch.input_ids.dtype == torch.long and batch.first_index == 0


def test_batches_count_sequences_in_stream_order(tokenizer):
    texts = [f"text number {i}" for i in range(7)]
    batches = list(iter_batches(texts, tokenizer, batch_size=3, max_len=8, prepend_bos=False, device="cpu"))
    assert [b.first_index for b in batches] == [0, 3, 6]
    assert [len(b.input_ids) for b in batches] == [3, 3, 1]


def test_batches_are_made_lazily_from_an_endless_stream(tokenizer):
    endless = (f"sequence {i}" for i in itertools.count())
    first = next(iter_batches(endless, tokenizer, batch_size=2, max_len=8, prepend_bos=True, device="cpu"))
    assert first.input_ids.shape[0] == 2


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_reading_a_local_file_takes_the_same_memory_for_100_000_lines_as_for_1_000(tmp_path, suffix):
    """The reader (counting for progress totals, then reading) holds a line at a time, not the file."""
    import tracemalloc

    from sparse_coding.text.corpus import TextSource, count_texts

    def reader_peak(n: int) -> int:
        path = tmp_path / f"corpus{n}{suffix}"
        lines = (f"Sequence {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(n))
        path.write_text("".join((json.dumps({"text": t}) if suffix == ".jsonl" else t) + "\n" for t in lines))
        source = TextSource("unused", str(path), None, "train", "text", max_sequences=10**9)
        tracemalloc.start()
        try:
            assert count_texts(source) == n
            assert sum(1 for _ in load_texts(source)) == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = reader_peak(1_000), reader_peak(100_000)  # files of ~60 kB and ~6 MB

    assert large < small + 256 * 1024, (small, large)


def test_a_hub_dataset_is_streamed_and_read_only_as_far_as_the_run_needs(make_config, monkeypatch):
    import datasets

    asked, served = {}, []

    class Stream:
        features = {"text": None}

        def __iter__(self):
            for i in itertools.count():  # endless: only a lazy reader finishes
                served.append(i)
                yield {"text": f"text {i}"}

    def load_dataset(name, config, *, split, streaming=False):
        asked.update(name=name, split=split, streaming=streaming)
        return Stream()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = make_config(DATASET="someone/corpus", NUM_SEQUENCES_EVALED=5)

    texts = list(load_texts(text_source(config)))

    assert texts == [f"text {i}" for i in range(5)]
    assert asked == {"name": "someone/corpus", "split": "train", "streaming": True}
    assert len(served) <= 6
