"""Progress bars: hidden by -q and in redirected logs, finished at 100%, never glued to log lines."""

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_coding.runtime import progress as progress_module
from sparse_coding.runtime.progress import progress

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def info_level():
    logger = logging.getLogger("sparse_coding")
    old = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(old)


def test_quiet_logging_and_redirected_output_draw_no_bar(info_level, monkeypatch):
    items = range(3)
    monkeypatch.setattr(progress_module, "bars_redraw", lambda: True)
    info_level.setLevel(logging.WARNING)
    assert progress(items) is items
    info_level.setLevel(logging.INFO)
    assert progress(items) is not items
    monkeypatch.setattr(progress_module, "bars_redraw", lambda: False)  # stderr is a file
    assert progress(items) is items


def test_a_bar_whose_data_ends_before_its_estimated_total_finishes_at_100_percent(info_level, monkeypatch):
    monkeypatch.setattr(progress_module, "bars_redraw", lambda: True)
    out = io.StringIO()
    assert list(progress(range(2), total=13, file=out, desc="batches")) == [0, 1]
    last = out.getvalue().split("\r")[-1]
    assert "100%" in last and "2/2" in last, last


def test_a_script_with_its_log_redirected_writes_whole_lines(tmp_path):
    """The demo's fast.py with stderr to a file: no carriage return, every line a log line or a table row."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    config = tmp_path / "demo.yaml"
    demo = REPO / "sparse_coding" / "config" / "demo_config.yaml"
    text = demo.read_text().replace('"../demo/', f'"{demo.parent.parent}/demo/')
    config.write_text(text.replace(f'DATA_DIR: "{demo.parent.parent}/demo/output"', "DATA_DIR: out"))
    with (tmp_path / "log.txt").open("w") as log:
        done = subprocess.run(
            [sys.executable, str(REPO / "sparse_coding" / "fast.py"), "--config", str(config), "-v"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    text = (tmp_path / "log.txt").read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    timing = lines.index(next(line for line in lines if "Wall time by phase" in line))
    levels = (" INFO ", " DEBUG ", " WARNING ")
    assert all(line[:2].isdigit() and any(level in line for level in levels) for line in lines[:timing])
    assert done.stdout.startswith("fast.py: ")  # the summary, after the log's last line
