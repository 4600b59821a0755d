"""trace.py end to end on the tiny model: the files hold the library's pruned graph; clean errors."""

import argparse
import json

import pytest
import torch
from transcoder_files import write_set

from sparse_coding.algorithms.trace_graph import trace_graph
from sparse_coding.models.gpt2 import load_model, tokenize_prompt
from sparse_coding.nodes import parse_any_id
from sparse_coding.phases import PhaseTimer
from sparse_coding.pipelines.trace import trace_options
from sparse_coding.transcoders.loading import load_transcoders


def run_trace(config) -> dict:
    import sparse_coding.trace as trace

    trace.main(config, argparse.Namespace(phases=PhaseTimer(), new_graph=False))
    return json.loads((config.model_data_dir(config.MODEL_DIR) / "trace_graph.json").read_text())


def test_the_graph_file_holds_the_pruned_graph_with_positioned_ids(tmp_path, make_config):
    template, _ = write_set(tmp_path / "tc", "sparsify_clt", 3)
    config = make_config(TRANSCODERS=template, TRACE_PROMPT="When Mary and John went")
    written = run_trace(config)
    model, tokenizer = load_model(config.MODEL_DIR, torch.device("cpu"))
    tcs = load_transcoders(template, n_layers=3, d_model=model.config.n_embd)
    ids = tokenize_prompt(tokenizer, config.TRACE_PROMPT, prepend_bos=True)[0]
    graph = trace_graph(model, tcs, ids, bos_token_id=tokenizer.bos_token_id, options=trace_options(config))
    assert len(written["nodes"]) == int(graph.pruned.node_mask.sum())
    assert len(written["edges"]) == int(graph.pruned.edge_mask.sum())
    kinds = {parse_any_id(node["id"]).kind for node in written["nodes"]}
    assert kinds <= {"feature", "error", "embed", "logit"} and {"embed", "logit"} <= kinds
    assert all(node["site"] == "clt" for node in written["nodes"] if node["id"].startswith("clt_"))
    run = written["metadata"]["runs"][0]
    assert run["script"] == "trace.py" and run["prompt"] == "When Mary and John went"
    assert run["replacement_score"] == pytest.approx(graph.replacement_score)
    assert "replacement score" in run["sign_convention"] and "completeness score" in run["sign_convention"]


def test_without_transcoders_trace_stops_before_loading(make_config):
    from sparse_coding.errors import ConfigError

    config = make_config(TRANSCODERS=None)
    with pytest.raises(ConfigError, match="TRANSCODERS is unset"):
        run_trace(config)


def test_offline_a_release_missing_from_the_cache_is_named_before_loading(make_config, hub_cache):
    from sparse_coding.errors import SparseCodingError

    config = make_config(TRANSCODERS="gpt2-small-transcoders")
    with pytest.raises(SparseCodingError, match="HF_HUB_OFFLINE.*jacobdunefsky/gpt2small-transcoders"):
        run_trace(config)
