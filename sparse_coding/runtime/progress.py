"""Progress bars that follow the log level, end at 100%, and never garble a log.

Long loops wrap their iterables in `progress`, not tqdm, so the "sparse_coding" logger's level
(set by the script wrapper; a notebook logging at WARNING) hides every bar. Bars are drawn only
where they redraw in place (a terminal, a notebook): in a log redirected to a file their carriage
returns would glue log lines onto bar fragments; the script wrapper routes log lines through tqdm
(`logging_redirect_tqdm`). A bar whose data ends before its estimated total ends at 100%.
"""

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, disable: bool = False, **options: Any) -> Iterable[T]:
    """tqdm over `iterable`, off when `disable`, below INFO, or where bars cannot redraw in place."""
    quiet = not logging.getLogger("sparse_coding").isEnabledFor(logging.INFO)
    if disable or quiet or not bars_redraw():
        return iterable
    return _finishing(tqdm(iterable, **options))


def bars_redraw() -> bool:
    """True on a terminal or in a notebook kernel; False when stderr goes to a file or pipe."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _finishing(bar: tqdm) -> Iterator[T]:
    """`bar`'s items; when they run out before its estimated total, the total becomes the count."""
    try:
        for item in bar.iterable:
            yield item
            bar.update()
        if bar.total is not None and bar.n < bar.total:
            bar.total = bar.n
            bar.refresh()
    finally:
        bar.close()
