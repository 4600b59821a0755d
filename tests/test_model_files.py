"""A model folder whose files do not fit together gets one sentence (exit 1) naming the file and what
would be valid, checked before the weights are read where the files allow; never a traceback."""

import json
import pickle
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict
from hub_layouts import write_2020_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def _truncate_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    with (folder / "pytorch_model.bin").open("wb") as file:
        pickle.dump({"transformer.wte.weight": "not a tensor"}, file)


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _foreign_tokenizer(folder: Path) -> None:
    """Another BPE's files (<|endoftext|> last, as on the hub), in a model whose BOS is id 0."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    write_2020_tokenizer(folder, texts=["an entirely different corpus of words for another model"] * 3)


# case -> (how the folder is broken, words the one error line must hold)
CASES = {
    "config_json_is_a_list": (lambda f: (f / "config.json").write_text("[]"), ["config.json", "JSON object"]),
    "n_embd_disagrees": (
        lambda f: _set_config(f, n_embd=64),
        ["model.safetensors", "n_embd", "different models"],
    ),
    "vocab_size_disagrees": (
        lambda f: _set_config(f, vocab_size=json.loads((f / "config.json").read_text())["vocab_size"] + 7),
        ["model.safetensors", "vocab_size", "different models"],
    ),
    "truncated_safetensors": (_truncate_weights, ["model.safetensors", "not a readable safetensors file"]),
    "pickle_only": (_pickle_only, ["pytorch_model.bin", "model.safetensors"]),
    "no_tokenizer": (_no_tokenizer, ["no usable tokenizer", "tokenizer.json"]),
    "foreign_tokenizer": (_foreign_tokenizer, ["tokenizer", "bos_token_id", "another model"]),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_folder_is_one_sentence_naming_the_file(
    tmp_path, tiny_model_dir, sae_templates, capsys, monkeypatch, case
):
    break_it, words = CASES[case]
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    break_it(folder)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, folder, sae_templates)))
    monkeypatch.setattr(sys, "argv", ["fast.py", "--config", str(path), "-q"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "sparse_coding" / "fast.py"), run_name="__main__")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert all(word in line for word in words), line


def test_without_network_load_model_fails_in_seconds_saying_why(unreachable_hub):
    """A notebook's load_model of a hub id that is not cached: one short probe, not transformers' retries."""
    import time

    import torch

    from sparse_coding.errors import SparseCodingError
    from sparse_coding.models.gpt2 import load_model

    start = time.perf_counter()
    with pytest.raises(SparseCodingError, match="cannot be reached") as info:
        load_model("someone/uncached-gpt2", torch.device("cpu"))
    assert time.perf_counter() - start < 5
    assert "someone/uncached-gpt2" in str(info.value) and "config.json" in str(info.value)
