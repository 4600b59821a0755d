"""Checkpoints of dataset passes: resumed where they stood, refused on other settings, removed at the end."""

import pytest
from conftest import CORPUS
from safetensors.torch import load_file

from sparse_coding.errors import ConfigError
from sparse_coding.pipelines.hist import run_hist
from sparse_coding.pipelines.resume import checkpoint_path
from sparse_coding.pipelines.threshold_cache import THRESHOLDS_FILE
from sparse_coding.runtime import checkpoints


class Killed(Exception):
    """Stands in for a kill: the run stops right after a checkpoint is written."""


@pytest.fixture
def hist_config(make_config, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{text} ({i})" for i in range(2) for text in CORPUS) + "\n")

    def build(**overrides):
        keys = {"DATASET": str(corpus), "BATCH_SIZE": 2, "CHECKPOINT_EVERY": 2, "ACTS_LAYERS_SLICE": "1:3"}
        return make_config(**keys | {"NUM_CLUSTERS": 3, "THRESHOLD_PERCENTILE": 90} | overrides)

    return build


def interrupted_hist(config, monkeypatch, saves: int) -> None:
    """Run hist.py until its checkpoint has been written `saves` times, then stop it."""
    save = checkpoints.RunCheckpoint.save
    saved = []

    def save_then_stop(self, name, position, state, *, done=False):
        save(self, name, position, state, done=done)
        saved.append(name)
        if len(saved) == saves:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.RunCheckpoint, "save", save_then_stop)
        with pytest.raises(Killed):
            run_hist(config)


def test_resume_continues_from_the_checkpoint_and_ends_with_the_uninterrupted_result(
    hist_config, monkeypatch, caplog
):
    config = hist_config()
    reference = hist_config(DATA_DIR=str(config.DATA_DIR) + "_reference")
    run_hist(reference)
    interrupted_hist(config, monkeypatch, 8)  # phase 1: 4 saves and its end; phase 2: at batches 2, 4, 6
    assert checkpoint_path(config, "hist.py").is_file()

    with caplog.at_level("INFO", logger="sparse_coding"):
        run_hist(config, resume=True)

    assert "hist: clusters done, hist: cuts at batch 6" in caplog.text
    assert not checkpoint_path(config, "hist.py").exists()
    ours, theirs = (
        load_file(str(c.model_data_dir(c.MODEL_DIR) / THRESHOLDS_FILE)) for c in (config, reference)
    )
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].equal(theirs[key]), key


def test_a_checkpoint_of_other_settings_is_refused_naming_each_difference(hist_config, monkeypatch):
    config = hist_config()
    interrupted_hist(config, monkeypatch, 1)
    path = checkpoint_path(config, "hist.py")
    other = hist_config(NUM_CLUSTERS=4, MAX_SEQ_LEN=32)

    with pytest.raises(ConfigError) as refused:
        run_hist(other, resume=True)

    message = str(refused.value)
    assert str(path) in message and "without --resume" in message
    assert "config.NUM_CLUSTERS was 3, now 4" in message and "config.MAX_SEQ_LEN was 128, now 32" in message
    assert path.is_file()  # refused, not removed
    run_hist(other)  # without --resume: starts over, and the finished run removes the checkpoint
    assert not path.exists()


def test_an_edited_dataset_file_is_a_difference_too(hist_config, monkeypatch):
    config = hist_config()
    interrupted_hist(config, monkeypatch, 1)
    with open(config.DATASET, "a") as file:
        file.write("one more line\n")

    with pytest.raises(ConfigError, match="dataset_identity"):
        run_hist(config, resume=True)
