"""W&B logging: an offline fast.py run writes a run directory holding the config, the summary numbers
and the graph artifact; a missing package or a failing service only warns."""

import dataclasses
import logging
import struct
import sys
import time
from pathlib import Path

import pytest

from sparse_coding.config import load_config
from sparse_coding.sharing.wandb_runs import log_run, wandb_settings

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "sparse_coding" / "config" / "demo_config.yaml"


def _records(path: Path):
    """The protobuf Records of a .wandb file: a LevelDB-style log (7-byte header, 32 KiB blocks,
    each chunk: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buffer = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if pos + length > len(data):  # still being written
            return
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        buffer, pos = buffer + data[pos : pos + length], pos + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            yield record
            buffer = b""


def _finished_records(path: Path, wait_s: float = 30.0) -> list:
    """The run file's records once its closing `exit` record is on disk (W&B's writer is another
    process, which may still be flushing when `finish` returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = list(_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_an_offline_fast_run_logs_config_summary_and_the_graph_artifact(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from sparse_coding.pipelines.fast import run_fast

    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = dataclasses.replace(
        load_config(DEMO_CONFIG), DATA_DIR=tmp_path / "data", WANDB_PROJECT="sc-test", WANDB_MODE="offline"
    )
    run_fast(config)
    (run_file,) = (tmp_path / "data" / "demo_model" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _finished_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "sc-test"
    config_keys = {item.key for item in run.config.update}
    assert {"PROMPT", "ACTS_LAYERS_SLICE", "NODE_POSITIONS"} <= config_keys
    summary = {
        u.key: u.value_json
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
    }
    assert {"nodes", "edges", "fraction_explained"} <= summary.keys()
    assert any(key.startswith("seconds/") for key in summary)
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    files = {entry.path for entry in artifact.manifest.contents}
    assert {"grads_graph.json", "grads_graph.html", "grads_graph.svg"} <= files


def test_settings_come_from_the_config_else_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_settings(None, None, None) == {"project": "from-env", "mode": "disabled"}
    assert wandb_settings("p", None, "offline") == {"project": "p", "mode": "offline"}
    monkeypatch.delenv("WANDB_PROJECT")
    assert wandb_settings(None, "me", None) is None


def test_a_missing_package_or_a_failing_service_is_a_warning(tmp_path, monkeypatch, caplog):
    settings = {"project": "p", "mode": "offline"}
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with caplog.at_level(logging.WARNING):
        log_run(settings, run_config={}, script="fast.py", summary={}, files=[], out_dir=tmp_path)
    assert "wandb is not installed" in caplog.text

    class Broken:
        def init(self, **kwargs):
            raise ConnectionError("service unreachable")

    monkeypatch.setitem(sys.modules, "wandb", Broken())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        log_run(settings, run_config={}, script="fast.py", summary={}, files=[], out_dir=tmp_path)
    assert "W&B logging failed (ConnectionError: service unreachable)" in caplog.text
