"""No traceback for bad input: every probe ends in exit 0 or one paragraph naming the key or file."""

import errno
import json
import math

import pytest
import yaml
from conftest import write_sae_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_coding.cli import run_script
from sparse_coding.config import Config, config_from_dict, load_config
from sparse_coding.errors import ConfigError, DatasetError, SAELoadError, SparseCodingError
from sparse_coding.models.gpt2 import resolve_device
from sparse_coding.models.sae_sources import normalize_cfg
from sparse_coding.models.saes import load_sae
from sparse_coding.pipelines.inputs import text_source
from sparse_coding.text.corpus import load_texts

FIELDS = [f.name for f in Config.__dataclass_fields__.values() if f.name != "source_path"]


def one_paragraph(capsys, path, main=lambda config, args: None) -> str:
    with pytest.raises(SystemExit) as info:
        run_script(main, "probe", argv=["--config", str(path), "-q"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"- a\n- list\n", "mapping"),
        (b"just a string\n", "mapping"),
        (bytes(range(256)), "UTF-8"),
        ("SEED: 1\n".encode("utf-16"), "UTF-8"),
    ],
)
def test_a_config_that_is_no_mapping_or_no_text_is_one_paragraph(tmp_path, capsys, content, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert words in one_paragraph(capsys, path)


@pytest.mark.parametrize(
    "line",
    [
        "IG_STEPS: 1000000000000",
        "THRESHOLD_EXP: 1.0e+308",
        "THRESHOLD_EXP: .inf",
        "THRESHOLD_EXP: .nan",
        "SEED: 1180591620717411303424",
        "SEED: -1",
        "SEQ_PER_DIM_CAP: 1000000000000",
        "VIEW: 1000000000000",
        "TOP_K: 99999999999",
    ],
)
def test_a_huge_value_is_a_range_error_naming_the_key(tmp_path, capsys, line):
    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    assert line.split(":")[0] in one_paragraph(capsys, path)


@pytest.mark.parametrize("name", ["mps", "meta", "cuda:3", "xla"])
def test_a_device_this_machine_lacks_is_a_config_error(name, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cpu"):
        resolve_device(name)


@pytest.mark.parametrize(
    "edit",
    [
        {"d_in": "768"},
        {"d_in": None},
        {"d_in": math.inf},
        {"d_sae": -5},
        {"metadata": "a string"},
        {"activation_fn_kwargs": {"k": -1}},
        {"activation_fn_kwargs": {"k": 10_000}},
        {"activation_fn_kwargs": "k=6"},
    ],
)
def test_a_bad_sae_cfg_field_is_an_sae_load_error(tmp_path, edit):
    folder = write_sae_folder(tmp_path / "sae_1", hook_name="blocks.1.hook_resid_pre", activation="topk")
    cfg = json.loads((folder / "cfg.json").read_text()) | edit
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match="cfg"):
        load_sae(str(tmp_path / "sae_{layer}"), 1)


def test_a_corrupt_weights_file_is_an_sae_load_error(tmp_path):
    folder = write_sae_folder(tmp_path / "sae_1", hook_name="blocks.1.hook_resid_pre")
    (folder / "sae_weights.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(SAELoadError, match="safetensors"):
        load_sae(str(tmp_path / "sae_{layer}"), 1)


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, "one\ntwo\n".encode("utf-16")])
def test_a_dataset_that_is_not_text_is_a_dataset_error(tmp_path, content):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    config = config_from_dict({"DATASET": str(path)})
    with pytest.raises(DatasetError, match="UTF-8"):
        list(load_texts(text_source(config)))


def test_a_tokenizer_that_does_not_fit_the_model_is_one_message(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_coding.models.gpt2 import load_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(10)
    model.save_pretrained(tmp_path / "small")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "small")
    with pytest.raises(SparseCodingError, match="tokenizer"):
        load_model(str(tmp_path / "small"), "cpu")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_disk_or_read_only_mount_is_one_paragraph(tmp_path, capsys, code):
    path = tmp_path / "c.yaml"
    path.write_text("SEED: 1\n")

    def main(config, args):
        raise OSError(code, "No space left on device", str(tmp_path / "graph.dot"))

    line = one_paragraph(capsys, path, main)
    assert "graph.dot" in line and "DATA_DIR" in line


def test_an_os_error_from_a_bug_keeps_its_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("SEED: 1\n")

    def main(config, args):
        raise FileNotFoundError(errno.ENOENT, "No such file", "internal.tmp")

    with pytest.raises(FileNotFoundError):
        run_script(main, "probe", argv=["--config", str(path), "-q"])


# --- Property tests ------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SCALARS, inner, max_size=4),
    max_leaves=8,
)
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), VALUES, max_size=6))
def test_any_config_mapping_loads_or_is_a_config_error(raw):
    try:
        config = config_from_dict(raw)
        config.layer_range(12)
    except ConfigError as e:
        assert str(e) and len(str(e)) < 2000
    else:
        assert isinstance(config, Config)


@FAST
@given(VALUES)
def test_any_yaml_document_loads_or_is_a_config_error(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(yaml.safe_dump(value), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


CFG_FIELDS = st.sampled_from(
    [
        "d_in",
        "d_sae",
        "hook_name",
        "architecture",
        "activation_fn_str",
        "activation_fn_kwargs",
        "k",
        "normalize_activations",
        "metadata",
        "hook_point",
        "model_from_pretrained_kwargs",
        "prepend_bos",
    ]
)


@FAST
@given(st.dictionaries(CFG_FIELDS, VALUES, max_size=8))
def test_any_cfg_json_normalises_or_is_an_sae_load_error(edit):
    cfg = {"d_in": 32, "d_sae": 64, "hook_name": "blocks.1.hook_resid_pre"} | edit
    try:
        normalize_cfg(json.loads(json.dumps(cfg, default=str)), "cfg.json")
    except SAELoadError:
        pass


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("g.json", '{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("g.dot", "digraph G { " + "subgraph { " * 5_000 + "}" * 5_000 + "}"),
        ("g.dot", 'digraph G { "resid_1.2"; "resid_2.3"; "resid_1.2" -> "resid_2.3" [effect="inf"] }'),
        ("g.json", '{"nodes": [], "edges": [{"source": "resid_1.2", "target": "resid_2.3", "effect": NaN}]}'),
        ("g.json", '{"nodes": [], "edges": [{"source": "resid_1.2", "target": "resid_2", "effect": 1e400}]}'),
        ("g.json", '{"nodes": [], "edges": [{"source": "resid_1.2", "target": "resid_2", "effect": 1.0}]}'),
        ("g.json", '{"nodes": [], "edges": [], "metadata": {"runs": "one run"}}'),
        ("g.json", '{"nodes": [], "edges": [], "metadata": {"runs": [{"id": 3}]}}'),
        ("g.json", '{"nodes": [{"id": "resid_1.2", "site": "resid", "layer": "1"}], "edges": []}'),
    ],
)
def test_a_deeply_nested_or_non_finite_graph_file_is_a_graph_file_error(tmp_path, name, text):
    from sparse_coding.errors import GraphFileError
    from sparse_coding.graphs.graph_files import load_graph

    (tmp_path / name).write_text(text)
    with pytest.raises(GraphFileError, match=name.split(".")[1]):
        load_graph(tmp_path / "g.dot")


@pytest.mark.parametrize("content", [b"\x00garbage", b'{"no": "header"}' * 3])
def test_a_corrupt_thresholds_cache_is_ignored_with_a_warning(make_config, tmp_path, caplog, content):
    from sparse_coding.pipelines.loading import load_spliced_model
    from sparse_coding.pipelines.threshold_cache import THRESHOLDS_FILE, load_thresholds

    config = make_config(DATASET=str(tmp_path / "d.txt"))
    out = config.model_data_dir(config.MODEL_DIR)
    out.mkdir(parents=True)
    (out / THRESHOLDS_FILE).write_bytes(content)
    assert load_thresholds(config, load_spliced_model(config, sites=("resid",))[0]) is None
    assert "Ignoring cached thresholds" in caplog.text


@pytest.mark.parametrize(("header", "npz"), [("[1, 2]", b""), ('{"format": 1}', b"PK\x03\x04 not a zip")])
def test_a_corrupt_contexts_cache_is_a_dataset_error_so_it_is_collected_again(tmp_path, header, npz):
    from sparse_coding.labels.context_cache import ContextCache

    (tmp_path / "c.json").write_text(header)
    (tmp_path / "c.npz").write_bytes(npz)
    with pytest.raises(DatasetError, match="context cache"):
        ContextCache.from_bytes((tmp_path / "c.npz").read_bytes(), tmp_path / "c.npz")
