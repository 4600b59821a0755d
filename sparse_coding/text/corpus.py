"""Text sources and padded token batches: the one way every script reads data.

`load_texts` turns a `TextSource` (`sparse_coding.pipelines.inputs` builds it from PROMPT and
DATASET) into a stream of strings: the prompt alone, or a hub dataset (streamed with `datasets`)
or a local ``.txt`` (one sequence per line, blank lines skipped), ``.jsonl`` or ``.parquet``
file. `iter_batches` tokenizes that stream lazily into right-padded batches, so memory depends on
BATCH_SIZE and MAX_SEQ_LEN, never on the dataset's length. Sequence indices
(`TokenBatch.first_index`) count the sequences it yields: texts that tokenize to nothing are
skipped and not counted.
"""

import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_coding.errors import DatasetError
from sparse_coding.text.batches import TokenBatch, pad_id, padded, text_ids
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSource:
    """Where a run's text comes from; named after the config keys that set it."""

    prompt: str  # PROMPT: the only text when `dataset` is None
    dataset: str | None  # DATASET: hub name or local .txt/.jsonl/.parquet path
    dataset_config: str | None  # DATASET_CONFIG
    split: str  # DATASET_SPLIT
    text_column: str  # DATASET_TEXT_COLUMN
    max_sequences: int  # NUM_SEQUENCES_EVALED: dataset texts read at most


def load_texts(source: TextSource) -> Iterator[str]:
    """Texts the run reads: the prompt once, or up to `max_sequences` dataset texts.

    Raises:
        DatasetError: the file or dataset is missing, has an unsupported
            extension, or lacks DATASET_TEXT_COLUMN (the message lists the
            columns it has).
    """
    if source.dataset is None:
        return iter([source.prompt])
    return itertools.islice(_dataset_texts(source), source.max_sequences)


# A local text file up to this size is counted (for progress totals) before it is read.
COUNTED_FILE_BYTES = 64 * 2**20


def count_texts(source: TextSource) -> int | None:
    """How many texts `load_texts` yields (for progress totals) where that is cheap to know: the
    prompt, a local .txt/.jsonl up to COUNTED_FILE_BYTES, a parquet file; None elsewhere."""
    if source.dataset is None:
        return 1
    path = Path(source.dataset).expanduser()
    if not path.is_file():
        return None
    if path.suffix in (".txt", ".jsonl") and path.stat().st_size <= COUNTED_FILE_BYTES:
        with path.open("rb") as lines:  # line by line: memory stays flat whatever the file's size
            count = sum(1 for _ in itertools.islice(filter(bytes.strip, lines), source.max_sequences))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            count = pq.ParquetFile(path).metadata.num_rows
        except Exception:  # pyarrow raises its own error types; reading reports them
            return None
    else:
        return None
    return min(count, source.max_sequences)


def _dataset_texts(source: TextSource) -> Iterator[str]:
    path = Path(source.dataset).expanduser()
    if path.exists() or path.suffix in _FILE_SUFFIXES:
        reader = _LOCAL_READERS.get(path.suffix)
        if reader is None:
            raise DatasetError(
                f"DATASET {str(path)!r} has extension {path.suffix!r}; local datasets must be "
                f"one of {', '.join(_LOCAL_READERS)} (or give a hub dataset name)"
            )
        if not path.is_file():
            raise DatasetError(f"DATASET file {str(path)!r} does not exist")
        return reader(path, source.text_column)
    return _hub_texts(source)


def _txt_texts(path: Path, column: str) -> Iterator[str]:
    with _utf8_lines(path) as lines:
        for line in lines:
            if line.strip():
                yield line.rstrip("\n")


@contextlib.contextmanager
def _utf8_lines(path: Path) -> Iterator[Iterator[str]]:
    """The file's lines; bytes that are not UTF-8 (binary, UTF-16) are a DatasetError."""
    try:
        with path.open(encoding="utf-8") as lines:
            yield lines
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"DATASET {str(path)!r} is not UTF-8 text (byte {e.start} of a chunk is "
            f"{e.object[e.start]:#04x}; binary, or saved as UTF-16?); save it as UTF-8"
        ) from e


def _jsonl_texts(path: Path, column: str) -> Iterator[str]:
    with _utf8_lines(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"DATASET {str(path)!r} line {number} is not valid JSON: {e}") from e
            if not isinstance(record, dict) or column not in record:
                columns = sorted(record) if isinstance(record, dict) else []
                raise _missing_column(str(path), column, columns)
            yield str(record[column])


def _parquet_texts(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types
        raise DatasetError(f"DATASET {str(path)!r} is not a readable parquet file: {e}") from e
    if column not in file.schema_arrow.names:
        raise _missing_column(str(path), column, file.schema_arrow.names)
    for batch in file.iter_batches(columns=[column], batch_size=256):
        yield from (str(text) for text in batch.column(0).to_pylist())


_LOCAL_READERS: dict[str, Callable[[Path, str], Iterator[str]]] = {
    ".txt": _txt_texts,
    ".jsonl": _jsonl_texts,
    ".parquet": _parquet_texts,
}
# A DATASET ending in one of these is meant as a local file, never a hub name.
_FILE_SUFFIXES = {*_LOCAL_READERS, ".json", ".csv", ".tsv", ".gz", ".zip", ".arrow"}


def _hub_texts(source: TextSource) -> Iterator[str]:
    """A hub dataset, streamed so that only the texts read are downloaded."""
    import datasets

    try:
        stream = datasets.load_dataset(
            source.dataset,
            source.dataset_config,
            split=source.split,
            streaming=True,
        )
    except Exception as e:  # datasets raises many types for missing/unreachable data
        raise DatasetError(
            f"DATASET {source.dataset!r} (config {source.dataset_config!r}, split "
            f"{source.split!r}) could not be loaded: it is neither a local "
            f"{'/'.join(_LOCAL_READERS)} file nor a loadable hub dataset ({e})"
        ) from e
    if stream.features is not None and source.text_column not in stream.features:
        raise _missing_column(source.dataset, source.text_column, list(stream.features))
    for record in stream:
        if source.text_column not in record:
            raise _missing_column(source.dataset, source.text_column, list(record))
        yield str(record[source.text_column])


def _missing_column(name: str, column: str, columns: Iterable[str]) -> DatasetError:
    return DatasetError(
        f"DATASET {name!r} has no column {column!r} (DATASET_TEXT_COLUMN); "
        f"available columns: {', '.join(map(str, columns)) or 'none'}"
    )


def iter_batches(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    max_len: int,
    prepend_bos: bool,
    device: torch.device | str = "cpu",
) -> Iterator[TokenBatch]:
    """`texts`, read one batch at a time, as TokenBatches of `batch_size` non-empty sequences (the
    last may be smaller) on `device`: BOS first when `prepend_bos`, truncated to `max_len` tokens
    (BOS included), right-padded with the tokenizer's pad id (else EOS)."""
    pad = pad_id(tokenizer)
    encoded = (text_ids(tokenizer, text, prepend_bos=prepend_bos) for text in texts)
    sequences = (ids[:max_len] for ids in encoded if len(ids) > prepend_bos)  # BOS alone is no text
    first_index = 0
    while chunk := list(itertools.islice(sequences, batch_size)):
        input_ids, attention_mask = padded(chunk, pad)
        yield TokenBatch(input_ids.to(device), attention_mask.to(device), first_index)
        first_index += len(chunk)
