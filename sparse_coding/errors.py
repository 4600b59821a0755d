"""The one exception family for problems a researcher can fix.

Only the script wrapper (`sparse_coding.cli`) turns these into a one-paragraph
message and a non-zero exit; any other exception is a bug and keeps its
traceback.
"""


class SparseCodingError(Exception):
    """A user-fixable problem: bad config, missing file, unusable SAE."""


class ConfigError(SparseCodingError):
    """A config key holds a value that cannot be used."""


class SAELoadError(SparseCodingError):
    """An SAE source cannot be found, read, or does not fit the model."""


class GraphFileError(SparseCodingError):
    """An existing graph file cannot be read or written."""


class DatasetError(SparseCodingError):
    """A dataset cannot be read or lacks what the run needs."""


class ExactlyZeroEffectError(SparseCodingError):
    """An ablation run found no effect at all: nothing to draw."""


class StorageError(SparseCodingError):
    """An output file cannot be written (disk full, read-only or unwritable folder)."""


class EmptyResultError(SparseCodingError):
    """A run would write a result with nothing in it (e.g. every edge below THRESHOLD_EXP)."""


class TranscoderLoadError(SparseCodingError):
    """A transcoder source (TRANSCODERS) cannot be found, read, or does not fit the model."""
