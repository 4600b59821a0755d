"""Config errors reach the researcher as one paragraph naming the key or file, and a non-zero exit."""

import dataclasses
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_coding.cli import build_parser, run_script
from sparse_coding.config import DEFAULT_CONFIG_PATH, Config, config_from_dict, load_config
from sparse_coding.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("pipe", "fast", "val", "hist", "steer", "trace")
FIELDS = [f.name for f in dataclasses.fields(Config) if f.name != "source_path"]
MINIMAL = "RESID_SAES: gpt2-small-res-jb\n"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def fail_through_script(path: Path, capsys, check=lambda config: None) -> str:
    """Run a trivial script on `path`; return its one-line stderr message after exit 1."""

    def main(config: Config, args) -> None:
        check(config)

    with pytest.raises(SystemExit) as info:
        run_script(main, "test script", argv=["--config", str(path), "--quiet"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- Errors through the script wrapper ----------------------------------------


def test_a_missing_config_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    message = fail_through_script(missing, capsys)
    assert str(missing) in message and "--config" in message


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = write_config(tmp_path, MINIMAL + "NUM_UP_NODES: 5\nPROMPT: [unclosed\nSEED: 1\n")
    message = fail_through_script(path, capsys)
    assert str(path) in message and "line" in message
    assert any(f"line {n}" in message for n in (3, 4)), message


def test_a_config_that_is_not_a_mapping_is_an_error(tmp_path, capsys):
    message = fail_through_script(write_config(tmp_path, "- just\n- a list\n"), capsys)
    assert "mapping" in message and "list" in message


@pytest.mark.parametrize(
    ("line", "key", "wanted"),
    [
        ("NUM_UP_NODES: five", "NUM_UP_NODES", "an integer"),
        ("NUM_UP_NODES: 2.5", "NUM_UP_NODES", "an integer"),
        ("NEURONPEDIA: 'maybe'", "NEURONPEDIA", "true or false"),
        ("THRESHOLD_EXP: '5'", "THRESHOLD_EXP", "a number"),
        ("IG_STEPS: true", "IG_STEPS", "an integer"),
        ("PROMPT: 12", "PROMPT", "a string"),
    ],
)
def test_a_wrong_type_names_the_key_the_type_and_the_value(tmp_path, capsys, line, key, wanted):
    message = fail_through_script(write_config(tmp_path, MINIMAL + line + "\n"), capsys)
    value = line.split(": ", 1)[1].strip("'")
    assert key in message and wanted in message and value.lower() in message.lower()


def test_an_unquoted_slice_read_by_yaml_as_a_number_suggests_quoting(tmp_path, capsys):
    message = fail_through_script(write_config(tmp_path, MINIMAL + "ACTS_LAYERS_SLICE: 9:12\n"), capsys)
    assert "ACTS_LAYERS_SLICE" in message and "quote" in message


@pytest.mark.parametrize("text", ["9-12", "a:b", "nine", "1:2:3:4"])
def test_a_slice_that_does_not_parse_shows_valid_slices(tmp_path, capsys, text):
    message = fail_through_script(write_config(tmp_path, MINIMAL + f"ACTS_LAYERS_SLICE: '{text}'\n"), capsys)
    assert "ACTS_LAYERS_SLICE" in message and text in message and "'9:12'" in message


@pytest.mark.parametrize("text", ["3:3", "2:1", "4:", "-5:-4", "5:12"])
def test_a_slice_outside_the_models_layers_is_an_error_once_the_model_is_known(tmp_path, capsys, text):
    path = write_config(tmp_path, MINIMAL + f"ACTS_LAYERS_SLICE: '{text}'\n")
    message = fail_through_script(path, capsys, check=lambda config: config.layer_range(3))
    assert "ACTS_LAYERS_SLICE" in message and text in message and "'0:3'" in message


@pytest.mark.parametrize(
    ("text", "n_layers", "layers"),
    [
        ("9:12", 12, range(9, 12)),
        (":", 3, range(3)),
        ("1:", 3, range(1, 3)),
        ("-2:", 12, range(10, 12)),
        (":-1", 3, range(2)),
        ("0:3", 3, range(3)),
        ("1:12", 3, range(1, 3)),
        ("-5:", 3, range(3)),
        ("-12:-1", 3, range(2)),
    ],
)
def test_a_valid_slice_selects_layers_like_a_python_slice(text, n_layers, layers):
    config = config_from_dict({"ACTS_LAYERS_SLICE": text, "RESID_SAES": "x_{layer}"})
    assert (
        config.layer_range(n_layers)
        == layers
        == range(n_layers)[slice(*[int(p) if p else None for p in text.split(":")])]
    )


def test_a_slice_cut_to_the_models_layers_says_so(caplog):
    config = config_from_dict({"ACTS_LAYERS_SLICE": "1:12", "RESID_SAES": "x_{layer}"})
    with caplog.at_level(logging.INFO, logger="sparse_coding"):
        assert config.layer_range(3) == range(1, 3)
    assert [r.getMessage() for r in caplog.records] == [
        "ACTS_LAYERS_SLICE '1:12' on a model with 3 layers selects layers 1..2, as Python slices"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparse_coding"):
        config_from_dict({"ACTS_LAYERS_SLICE": "1:3", "RESID_SAES": "x_{layer}"}).layer_range(3)
    assert not caplog.records


@pytest.mark.parametrize("text", ["0:12:2", "9:12:1", "::-1"])
def test_a_slice_with_a_step_is_refused_with_the_reason(tmp_path, capsys, text):
    message = fail_through_script(write_config(tmp_path, MINIMAL + f"ACTS_LAYERS_SLICE: '{text}'\n"), capsys)
    assert text in message and "step" in message and "consecutive" in message


@pytest.mark.parametrize(
    "value",
    [
        "[1, 2]",
        "{9: 'a'}",
        "{9: [1.5]}",
        "{9: []}",
        "{9: [true]}",
        "{9: [-1]}",
        "{foo_9: [1]}",
        "{9: {1: 2}}",
    ],
)
def test_validation_dims_must_map_layers_to_lists_of_ints(tmp_path, capsys, value):
    message = fail_through_script(
        write_config(tmp_path, MINIMAL + f"VALIDATION_DIMS_PINNED: {value}\n"), capsys
    )
    assert "VALIDATION_DIMS_PINNED" in message and "e.g." in message


@pytest.mark.parametrize("value", ["{9: [1, 2]}", "{9: 'a'}", "{9: 2.0}", "[3]", "{attn_x: 1}", "{-1: 3}"])
def test_dims_pinned_must_map_each_layer_to_one_int(tmp_path, capsys, value):
    message = fail_through_script(write_config(tmp_path, MINIMAL + f"DIMS_PINNED: {value}\n"), capsys)
    assert "DIMS_PINNED" in message and "e.g." in message


def test_pinned_dims_accept_int_layers_and_site_keys():
    config = config_from_dict(
        {
            "RESID_SAES": "x_{layer}",
            "DIMS_PINNED": {9: 331, "mlp_10": [5]},
            "VALIDATION_DIMS_PINNED": {9: [331, 12], "attn_10": [5], "resid_11": 7},
        }
    )
    assert config.pinned_dims == {("resid", 9): 331, ("mlp", 10): 5}
    assert config.validation_dims == {("resid", 9): [331, 12], ("attn", 10): [5], ("resid", 11): [7]}


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("DTYPE: float8", "DTYPE"),
        ("SAE_DTYPE: int8", "SAE_DTYPE"),
        ("BATCH_SIZE: 0", "BATCH_SIZE"),
        ("INIT_THINNING_FACTOR: 1.5", "INIT_THINNING_FACTOR"),
        ("KEEPER_CLUSTER_INDEX: 8", "KEEPER_CLUSTER_INDEX"),
        ("VIEW: -1", "VIEW"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_valid_range(tmp_path, capsys, line, key):
    message = fail_through_script(write_config(tmp_path, MINIMAL + line + "\n"), capsys)
    assert key in message and line.split(": ")[1] in message


def test_a_config_without_any_sae_source_or_transcoders_is_an_error(tmp_path, capsys):
    message = fail_through_script(
        write_config(tmp_path, "RESID_SAES: null\nATTN_SAES: ''\nMLP_SAES: None\nTRANSCODERS: null\n"), capsys
    )
    assert all(key in message for key in ("RESID_SAES", "ATTN_SAES", "MLP_SAES", "TRANSCODERS"))


def test_a_bug_keeps_its_traceback(tmp_path):
    path = write_config(tmp_path, MINIMAL)

    def main(config, args):
        raise ZeroDivisionError("a bug, not a user error")

    with pytest.raises(ZeroDivisionError):
        run_script(main, "test script", argv=["--config", str(path), "--quiet"])


def test_a_good_config_reaches_main_with_script_flags(tmp_path):
    path = write_config(tmp_path, MINIMAL + "SEED: 3\n")
    parser = build_parser("test script")
    parser.add_argument("--extra", type=int, default=0)
    seen = {}
    run_script(
        lambda config, args: seen.update(seed=config.SEED, extra=args.extra),
        "test script",
        argv=["--config", str(path), "--extra", "4", "--quiet"],
        parser=parser,
    )
    assert seen == {"seed": 3, "extra": 4}


# --- Unknown and unset keys ---------------------------------------------------


def test_an_unknown_key_warns_with_the_nearest_valid_key(tmp_path, caplog):
    path = write_config(tmp_path, MINIMAL + "NUM_UP_NODE: 3\nCOMPLETELY_ELSE: 1\n")
    with caplog.at_level(logging.WARNING, logger="sparse_coding"):
        config = load_config(path)
    assert config.NUM_UP_NODES == Config.NUM_UP_NODES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NUM_UP_NODE" in w and "'NUM_UP_NODES'" in w and str(path) in w for w in warnings), warnings
    assert any("COMPLETELY_ELSE" in w for w in warnings), warnings


@pytest.mark.parametrize("spelling", ["THRESHOLD_EXP: null", "THRESHOLD_EXP: None", "THRESHOLD_EXP: ~"])
def test_null_and_none_unset_an_optional_key(tmp_path, spelling):
    config = load_config(write_config(tmp_path, MINIMAL + spelling + "\n"))
    assert config.THRESHOLD_EXP is None
    assert config.DEVICE is None and config.DATASET is None


@pytest.mark.parametrize("value", ["null", "None", "''"])
def test_unsetting_a_key_with_a_default_keeps_the_default(tmp_path, value):
    config = load_config(write_config(tmp_path, MINIMAL + f"NUM_UP_NODES: {value}\nMLP_SAES: {value}\n"))
    assert config.NUM_UP_NODES == Config.NUM_UP_NODES
    assert config.MLP_SAES is None
    assert config.sae_sources == {"resid": "gpt2-small-res-jb", "attn": Config.ATTN_SAES}


def test_a_relative_data_dir_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text(MINIMAL + "DATA_DIR: ../out\n")
    config = load_config(path)
    assert config.DATA_DIR == (tmp_path / "out").resolve()
    assert config.model_data_dir("openai-community/gpt2") == config.DATA_DIR / "openai-community_gpt2"


# --- The shipped config -------------------------------------------------------


def test_the_shipped_config_loads_with_the_documented_defaults(caplog):
    with caplog.at_level(logging.WARNING):
        config = load_config(DEFAULT_CONFIG_PATH)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert config.sae_sources == {
        "resid": "gpt2-small-resid-post-v5-32k",
        "attn": "gpt2-small-attn-out-v5-32k",
        "mlp": "gpt2-small-mlp-out-v5-32k",
    }
    assert config.layer_range(12) == range(9, 12)
    assert config.PREPEND_BOS is None and config.MODEL_DIR == "openai-community/gpt2"
    assert config.DATA_DIR == (DEFAULT_CONFIG_PATH.parent.parent / "data").resolve()


def test_the_shipped_config_names_every_config_field():
    keys = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    assert sorted(keys) == sorted(FIELDS)


def test_the_shipped_config_round_trips_through_metadata():
    config = load_config(DEFAULT_CONFIG_PATH)
    metadata = config.to_metadata()
    assert set(metadata) == set(FIELDS)
    assert config_from_dict(metadata) == config


# --- Real processes -------------------------------------------------------------


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_real_process_exits_1_with_one_paragraph_and_no_traceback(tmp_path):
    path = write_config(tmp_path, MINIMAL + "NUM_UP_NODES: five\n")
    code = "from sparse_coding.cli import run_script; run_script(lambda config, args: None, 'probe')"
    result = run_python(["-c", code, "--config", str(path)], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: Config key NUM_UP_NODES")


def script_path(name: str) -> Path:
    path = REPO / "sparse_coding" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"sparse_coding/{name}.py is not written yet")
    return path


def test_fast_py_run_as_a_file_exits_1_naming_a_missing_config(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run_python([str(script_path("fast")), "--config", str(missing)], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: Config file {missing} does not exist; pass --config PATH to a YAML file"
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_exits_1_with_one_paragraph_on_a_bad_config(tmp_path, capsys, monkeypatch, name):
    path = write_config(tmp_path, MINIMAL + "ACTS_LAYERS_SLICE: '9-12'\n")
    script = script_path(name)
    monkeypatch.setattr(sys, "argv", [str(script), "--config", str(path)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script run as a file prepends the repo
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")  # in-process: imports are already paid for
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: ACTS_LAYERS_SLICE '9-12' is not a slice; write 'start:stop' like a Python slice, "
        "e.g. '9:12', '0:12' or ':'"
    ]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_run_as_a_file_puts_the_repo_not_its_folder_on_the_path(tmp_path, monkeypatch, name):
    """Its folder holds config/, models/, labels/...: on sys.path they would shadow top-level modules."""
    script = script_path(name)
    folder = str(script.parent)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", [folder, "", *sys.path])  # what `python3 X.py` and a notebook give
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), run_name="__main__")
    assert folder not in sys.path and sys.path[0] == str(script.parent.parent)
    assert "" in sys.path  # the working directory (not the script's folder) stays


def test_config_from_dict_raises_config_error_for_bad_values():
    with pytest.raises(ConfigError, match="BATCH_SIZE"):
        config_from_dict({"RESID_SAES": "x_{layer}", "BATCH_SIZE": "eight"})


def test_a_site_named_twice_in_pinned_dims_is_an_error_not_a_silent_overwrite():
    from sparse_coding.config import config_from_dict

    with pytest.raises(ConfigError, match="resid_9 twice"):
        config_from_dict({"RESID_SAES": "x", "VALIDATION_DIMS_PINNED": {9: [1], "resid_9": [2]}})


# --- YAML edge cases ----------------------------------------------------------

ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "PROMPT: *i\n"
)


def test_a_yaml_alias_bomb_is_refused_quickly_without_printing_it(tmp_path, capsys):
    import time

    assert len(ALIAS_BOMB) < 1100
    start = time.perf_counter()
    message = fail_through_script(write_config(tmp_path, ALIAS_BOMB), capsys)
    assert time.perf_counter() - start < 2
    assert "expands to more than" in message and len(message) < 400


def test_a_huge_wrong_value_is_shown_shortened(tmp_path, capsys):
    message = fail_through_script(write_config(tmp_path, "SEED: [" + ", ".join(["1"] * 5000) + "]\n"), capsys)
    assert "SEED" in message and len(message) < 400


def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(tmp_path, capsys):
    message = fail_through_script(write_config(tmp_path, "SEED: 1\nPROMPT: hi\nSEED: 2\n"), capsys)
    assert "'SEED' is given twice" in message and "line 1" in message and "line 3" in message


def test_a_config_path_that_is_a_folder_says_so(tmp_path, capsys):
    message = fail_through_script(tmp_path, capsys)
    assert "is a folder" in message and str(tmp_path) in message


def test_deeply_nested_yaml_is_one_paragraph(tmp_path, capsys):
    message = fail_through_script(
        write_config(tmp_path, "PROMPT: " + "[" * 50_000 + "]" * 50_000 + "\n"), capsys
    )
    assert str(tmp_path) in message


def test_the_settings_a_run_records_read_back_as_the_same_config():
    """A graph's run record holds `to_metadata`; val.py --from-graph reads it back as a config."""
    demo = load_config(Path(__file__).parents[1] / "sparse_coding" / "config" / "demo_config.yaml")
    config = dataclasses.replace(
        demo, CURVE=dataclasses.replace(demo.CURVE, positions=(1, 3)), THRESHOLD_EXP=None, DEVICE=None
    )
    assert config.STEER and config.CURVE
    back = config_from_dict(config.to_metadata())
    for field in dataclasses.fields(Config):
        if field.name != "source_path":
            assert getattr(back, field.name) == getattr(config, field.name), field.name
