"""Running Graphviz: a program on a source file under a timeout, and drawing an image with it."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from sparse_coding.errors import GraphFileError

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("svg", "png")


class RenderTimeout(GraphFileError):
    """``dot`` ran past its timeout: the graph is too big to draw in time."""


def image_format(image_path: Path) -> str:
    """``svg`` or ``png`` from the file extension; anything else is a user error."""
    fmt = image_path.suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS:
        choices = [f".{f}" for f in IMAGE_FORMATS]
        raise GraphFileError(
            f"image file {image_path} has extension {image_path.suffix!r}; use one of {choices}"
        )
    return fmt


def run_graphviz(command: list[str], source_path: Path, timeout_s: float) -> str:
    """Run a Graphviz program on ``source_path`` and return its stdout; RenderTimeout past `timeout_s`,
    GraphFileError when Graphviz is missing or the program failed."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as e:
        raise GraphFileError(
            "the Graphviz 'dot' program is not installed (Debian: apt-get install graphviz)"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise RenderTimeout(
            f"dot took longer than {timeout_s:.0f} s to draw the graph (too big to draw in time; "
            f"raise the timeout or draw fewer nodes)"
        ) from e
    if result.returncode != 0:
        raise GraphFileError(f"dot could not draw {source_path}: {result.stderr.strip()[:500]}")
    if result.stderr.strip():
        logger.info("%s: %s", command[0], result.stderr.strip()[:500])
    logger.debug("%s drew %s in %.1f s", command[0], source_path.name, time.perf_counter() - start)
    return result.stdout


def render_image(
    source_path: Path, image_path: Path, *, fmt: str, timeout_s: float = 120.0, pinned: bool = False
) -> None:
    """Draw a source file into ``image_path`` with ``dot`` (or, ``pinned``, at its nodes' ``pos``);
    raises as `run_graphviz`."""
    engine = ["neato", "-n2"] if pinned else ["dot"]
    run_graphviz([*engine, f"-T{fmt}", "-o", str(image_path), str(source_path)], source_path, timeout_s)
