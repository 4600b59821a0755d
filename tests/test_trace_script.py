"""trace.py end to end on the tiny model: the files hold the library's pruned graph; clean errors."""

import argparse
import json

import pytest
import torch
from transcoder_files import write_set

from sparse_coding.algorithms.trace_graph import TraceOptions, trace_graph
from sparse_coding.models.gpt2 import load_model, tokenize_prompt
from sparse_coding.nodes import node_kind
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.transcoders.loading import load_transcoders


def run_trace(config) -> dict:
    import sparse_coding.cli.trace as trace

    trace.main(config, argparse.Namespace(phases=PhaseTimer(), new_graph=False))
    return json.loads((config.model_data_dir(config.MODEL_DIR) / "trace_graph.json").read_text())


def test_the_graph_file_holds_the_pruned_graph_with_positioned_ids(tmp_path, make_config):
    template, _ = write_set(tmp_path / "tc", "sparsify_clt", 3)
    config = make_config(TRANSCODERS=template, TRACE_PROMPT="When Mary and John went")
    written = run_trace(config)
    model, tokenizer = load_model(config.MODEL_DIR, torch.device("cpu"))
    tcs = load_transcoders(template, n_layers=3, d_model=model.config.n_embd)
    ids = tokenize_prompt(tokenizer, config.TRACE_PROMPT, prepend_bos=True)[0]
    graph = trace_graph(
        model,
        tcs,
        ids,
        bos_token_id=tokenizer.bos_token_id,
        options=config.options(TraceOptions, prefix="TRACE_"),
    )
    assert len(written["nodes"]) == int(graph.pruned.node_mask.sum())
    assert len(written["edges"]) == int(graph.pruned.edge_mask.sum())
    kinds = {node_kind(node["id"]) for node in written["nodes"]}
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


def test_a_config_with_transcoders_alone_traces(tmp_path, make_config):
    template, _ = write_set(tmp_path / "tc", "dunefsky", 3)
    unset = {"RESID_SAES": None, "ATTN_SAES": None, "MLP_SAES": None}
    written = run_trace(make_config(**unset, TRANSCODERS=template, TRACE_PROMPT="When Mary and John"))
    assert written["metadata"]["runs"][0]["sae_sources"] == {"transcoders": template}


@pytest.mark.parametrize("layout", ["arena", "saelens_transcoder"])
def test_trace_tokenizes_as_the_transcoders_were_trained_unless_prepend_bos_says_otherwise(
    tmp_path, make_config, caplog, layout
):
    from sparse_coding.pipelines.trace import trace_prepend_bos
    from sparse_coding.transcoders.sources import RELEASES, trained_prepend_bos

    assert all(trained_prepend_bos(name) is True for name in RELEASES)  # docs/transcoders.md: each with BOS
    template, _ = write_set(tmp_path / "tc", layout, 3)
    assert trained_prepend_bos(template) is True  # the cfg's prepend_bos (top level or under metadata)
    cfg = next((tmp_path / "tc").glob("*0*/cfg.json"))
    raw = json.loads(cfg.read_text())
    raw.get("metadata", raw)["prepend_bos"] = False
    cfg.write_text(json.dumps(raw))
    assert trace_prepend_bos(make_config(TRANSCODERS=template, PREPEND_BOS=None)) is False
    with caplog.at_level("WARNING"):
        assert trace_prepend_bos(make_config(TRANSCODERS=template, PREPEND_BOS=True), warn=True) is True
    assert "trained without BOS" in caplog.text
    unknown = tmp_path / "sparsify"
    template, _ = write_set(unknown, "sparsify", 3)
    assert trained_prepend_bos(template) is None  # nothing recorded: BOS, as circuit-tracer prepends it
    assert trace_prepend_bos(make_config(TRANSCODERS=template, PREPEND_BOS=None)) is True
