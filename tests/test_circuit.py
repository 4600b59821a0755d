"""val.py's circuit before loading: pins checked against the slice, a graph's own settings read."""

import argparse
import dataclasses
import json

import pytest

from sparse_coding.cli import val
from sparse_coding.config import DEFAULT_CONFIG_PATH, load_config
from sparse_coding.errors import ConfigError
from sparse_coding.graphs.graph import Graph, Node, run_record
from sparse_coding.graphs.graph_files import save_graph
from sparse_coding.runtime.phases import PhaseTimer


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading the model at all fails the test: every check must come first."""
    import sparse_coding.pipelines.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the failing check")

    monkeypatch.setattr(loading, "load_model", refuse)


def _args(**values) -> argparse.Namespace:
    defaults = {"from_graph": None, "run": None, "config_given": True, "resume": False}
    defaults["phases"] = PhaseTimer()
    return argparse.Namespace(**(defaults | values))


@pytest.mark.parametrize("pins", [{"resid_5": [1]}, {"mlp_0": [1], "attn_7": [2]}])
def test_pins_outside_the_slice_stop_val_before_anything_loads(make_config, nothing_loads, pins):
    config = make_config(ACTS_LAYERS_SLICE="0:2", VALIDATION_DIMS_PINNED=pins)
    with pytest.raises(ConfigError, match="outside ACTS_LAYERS_SLICE '0:2'"):
        val.main(config, _args())


def test_the_default_models_pins_are_checked_before_its_download(tmp_path, hub_cache, nothing_loads):
    """The default hub model is not cached, yet the slice check comes first: its layer count is known."""
    config = dataclasses.replace(load_config(DEFAULT_CONFIG_PATH), VALIDATION_DIMS_PINNED={"resid_3": [1]})
    with pytest.raises(ConfigError, match=r"'resid_3', outside ACTS_LAYERS_SLICE '9:12' \(layers 9..11\)"):
        val.main(config, _args())


def _fast_graph(path, config) -> None:
    graph = Graph(metadata={"script": "fast.py", "prompt": config.PROMPT, "config": config.to_metadata()})
    graph.add_node(Node.from_id("resid_1.3", attribution=0.5))
    graph.add_node(Node.from_id("mlp_1.2", attribution=0.25))
    graph.add_edge("resid_1.3", "mlp_1.2", 0.5)
    graph.add_run(run_record(graph.metadata, "r1"))
    save_graph(graph, path, None)


def test_from_graph_without_config_validates_with_the_graphs_model_and_saes(tmp_path, make_config):
    made_with = make_config(DATA_DIR=str(tmp_path / "graph_data"))
    dot = tmp_path / "graph.dot"
    _fast_graph(dot, made_with)
    default = load_config(DEFAULT_CONFIG_PATH)  # GPT-2 small from the hub: must not be used
    line = val.main(default, _args(from_graph=dot.with_suffix(".json"), config_given=False))
    report = json.loads((made_with.model_data_dir(made_with.MODEL_DIR) / "validation.json").read_text())
    assert report["config"]["MODEL_DIR"] == made_with.MODEL_DIR
    assert report["config"]["RESID_SAES"] == made_with.RESID_SAES
    assert report["circuit"] == {"mlp_1": [2], "resid_1": [3]}
    assert "faithfulness" in line


def test_from_graph_with_a_config_of_other_saes_is_refused_naming_both(tmp_path, make_config, nothing_loads):
    made_with = make_config()
    dot = tmp_path / "graph.dot"
    _fast_graph(dot, made_with)
    other = make_config(RESID_SAES="gpt2-small-res-jb")
    with pytest.raises(ConfigError) as info:
        val.main(other, _args(from_graph=dot))
    message = str(info.value)
    assert f"RESID_SAES: graph {made_with.RESID_SAES!r}, config 'gpt2-small-res-jb'" in message
    assert "drop --config" in message
