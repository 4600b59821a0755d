"""Progress bars that follow the log level: shown at INFO, hidden by `-q`.

Every long loop wraps its iterable in `progress` instead of tqdm directly, so
one switch (the "sparse_coding" logger's level, set by the script wrapper)
hides them all, and a notebook that logs at WARNING gets no bars either.
"""

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, disable: bool = False, **options: Any) -> Iterable[T]:
    """tqdm over `iterable`, disabled when `disable` or the package logs below INFO."""
    quiet = not logging.getLogger("sparse_coding").isEnabledFor(logging.INFO)
    return tqdm(iterable, disable=disable or quiet, **options)
