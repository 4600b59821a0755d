"""Graphs that leave the tool: Neuronpedia's graph file (validated with jsonschema), CSV/parquet tables,
pandas and networkx, and the README's notebook cell, on the demo's fast.py graphs."""

import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest

from sparse_coding.cli import run
from sparse_coding.cli.export import export_graph
from sparse_coding.config import load_config
from sparse_coding.errors import GraphFileError
from sparse_coding.graphs.graph import Graph, Node, run_record
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.sharing.neuronpedia_graph import NODE_KINDS, cantor, to_neuronpedia

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"
SCHEMA = REPO / "sparse_coding" / "sharing" / "attribution_graph.schema.json"  # our schema of the export


def graph_schema() -> dict:
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module", params=["sum", "each"])
def demo_graph(request, tmp_path_factory) -> Path:
    """The demo's fast.py graph (nodes summed, or per position), as fast.py writes it."""
    from sparse_coding.pipelines.fast import run_fast

    out = tmp_path_factory.mktemp(f"demo-{request.param}")
    config = dataclasses.replace(load_config(DEMO_CONFIG), DATA_DIR=out, NODE_POSITIONS=request.param)
    run_fast(config)
    return config.model_data_dir(config.MODEL_DIR) / "grads_graph.json"


def _validate_circuit_tracer_rules(data: dict) -> None:
    """What the schema cannot say: links join listed nodes, node ids are unique."""
    ids = [node["node_id"] for node in data["nodes"]]
    assert len(ids) == len(set(ids))
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])


def test_the_demo_graph_exports_a_valid_neuronpedia_file_with_the_graphs_nodes_and_links(demo_graph):
    (path,) = export_graph(demo_graph, "neuronpedia", slug="demo-graph")
    assert path.name == "grads_graph.neuronpedia.json"
    data = json.loads(path.read_text())
    jsonschema.validate(data, graph_schema())
    _validate_circuit_tracer_rules(data)
    graph = load_graph(demo_graph)
    tokens = graph.runs[-1]["prompt_tokens"]
    assert data["metadata"]["prompt_tokens"] == tokens and tokens[0] == "<|endoftext|>"
    assert data["metadata"]["slug"] == "demo-graph"
    ours = {node["node_id"]: node for node in data["nodes"] if node["feature_type"] != "logit"}
    assert ours.keys() == graph.nodes.keys()
    for node_id, entry in ours.items():
        node = graph.nodes[node_id]
        kind = "error" if node.is_error else "feature"
        assert entry["feature_type"] == NODE_KINDS[(kind, node.site)]
        assert entry["feature"] == (-1 if node.is_error else cantor(node.layer, node.feature))
        assert entry["layer"] == str(node.layer)
        assert entry["ctx_idx"] == (len(tokens) - 1 if node.position is None else node.position)
    links = {(link["source"], link["target"]): link["weight"] for link in data["links"]}
    answer = next(node for node in data["nodes"] if node["feature_type"] == "logit")
    assert answer["clerp"].startswith('Output "hot" (p=') and answer["is_target_logit"]
    graph_links = {key: weight for key, weight in links.items() if key[1] != answer["node_id"]}
    assert graph_links == {key: edge.effect for key, edge in graph.edges.items()}
    into_answer = {s: w for (s, t), w in links.items() if t == answer["node_id"]}
    assert into_answer and all(into_answer[s] == graph.nodes[s].attribution for s in into_answer)


def test_a_file_that_breaks_the_rules_fails_the_schema(demo_graph):
    data = to_neuronpedia(load_graph(demo_graph), slug="ok")
    schema = graph_schema()
    for broken in (
        {**data, "qParams": {}},
        {**data, "nodes": [{**data["nodes"][0], "feature": None}]},
        {**data, "metadata": {**data["metadata"], "slug": "no spaces"}},
        {
            **data,
            "nodes": [{**n, "clerp": "Output"} if n["feature_type"] == "logit" else n for n in data["nodes"]],
        },
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_pipe_graphs_and_bad_slugs_are_refused_with_the_reason():
    graph = Graph()
    graph.add_node(Node.from_id("resid_1.5", activation=1.0))
    graph.metadata = {"script": "pipe.py", "prompt_tokens": ["a", "b"]}
    graph.add_run(run_record(graph.metadata, "r"))
    with pytest.raises(GraphFileError, match="only fast.py and trace.py graphs export.*csv or parquet"):
        to_neuronpedia(graph, slug="x")
    graph.runs[-1]["script"] = "fast.py"
    with pytest.raises(GraphFileError, match="slug 'a b' is not valid on Neuronpedia"):
        to_neuronpedia(graph, slug="a b")


@pytest.mark.parametrize(("layer", "index", "value"), [(0, 0, 0), (0, 5, 20), (3, 0, 6), (8, 1, 46)])
def test_features_are_cantor_paired_as_neuronpedia_unpairs_them(layer, index, value):
    assert cantor(layer, index) == value
    # Neuronpedia's getIndexFromCantorValue / getLayerFromCantorValue, written out
    w = int(((8 * value + 1) ** 0.5 - 1) // 2)
    t = (w * w + w) // 2
    assert (w - (value - t), value - t) == (layer, index)


@pytest.fixture(scope="module")
def trace_graph_file(tmp_path_factory) -> Path:
    """The demo's trace.py graph, as trace.py writes it."""
    from sparse_coding.pipelines.trace import run_trace

    config = dataclasses.replace(load_config(DEMO_CONFIG), DATA_DIR=tmp_path_factory.mktemp("trace"))
    run_trace(config)
    return config.model_data_dir(config.MODEL_DIR) / "trace_graph.json"


def test_a_trace_graph_exports_its_nodes_and_links_in_neuronpedias_terms(trace_graph_file):
    (path,) = export_graph(trace_graph_file, "neuronpedia", slug="demo-trace")
    data = json.loads(path.read_text())
    jsonschema.validate(data, graph_schema())
    _validate_circuit_tracer_rules(data)
    graph = load_graph(trace_graph_file)
    run = graph.runs[-1]
    tokens = run["prompt_tokens"]
    assert data["metadata"]["prompt_tokens"] == tokens and data["metadata"]["prompt"] == run["prompt"]
    assert data["metadata"]["pruning_settings"] == {"node_threshold": 0.95, "edge_threshold": 0.98}
    nodes = {node["node_id"]: node for node in data["nodes"]}
    assert nodes.keys() == graph.nodes.keys()
    links = {(link["source"], link["target"]): link["weight"] for link in data["links"]}
    assert links == {key: edge.effect for key, edge in graph.edges.items()}
    expected = {  # circuit-tracer's frontend/graph_models.py, per kind
        "tc_0.0@8": ("cross layer transcoder", "0", 8, cantor(0, 0)),
        "tc_1.1@8": ("cross layer transcoder", "1", 8, cantor(1, 1)),
        "embed@7": ("embedding", "E", 7, 7),
        "logit_7": ("logit", "4", len(tokens) - 1, 7),
    }
    for node_id, (feature_type, layer, ctx_idx, feature) in expected.items():
        entry = nodes[node_id]
        assert (entry["feature_type"], entry["layer"], entry["ctx_idx"], entry["feature"]) == (
            feature_type, layer, ctx_idx, feature)  # fmt: skip
    logit = nodes["logit_7"]
    assert logit["clerp"] == f'Output "hot" (p={graph.nodes["logit_7"].activation:.3f})'
    assert logit["is_target_logit"] and logit["token_prob"] == graph.nodes["logit_7"].activation
    assert nodes["tc_0.0@8"]["activation"] == graph.nodes["tc_0.0@8"].activation
    assert nodes["embed@7"]["activation"] is None and nodes["embed@7"]["clerp"] == ""
    assert all(nodes[i]["influence"] == run["cumulative_influence"][i] for i in run["cumulative_influence"])


def test_cumulative_influence_is_circuit_tracers_pruning_score(tmp_path, make_config):
    """Each kept node's share of the total influence held by it and every node of more influence (nodes
    of equal influence in some order)."""
    import torch

    from sparse_coding.pipelines.trace import compute_trace, node_records, trace_metadata

    config = dataclasses.replace(load_config(DEMO_CONFIG), DATA_DIR=tmp_path)
    tg, _, tokenizer, transcoders = compute_trace(config)
    shares = trace_metadata(tg, config, tokenizer, transcoders)["cumulative_influence"]
    influence = tg.influence.double()
    ids = [node.id for node in node_records(tg, tokenizer)]
    total = influence.sum()
    for node_id, share in shares.items():
        mine = influence[ids.index(node_id)]
        above = float((influence[influence > mine].sum() + mine) / total)  # ties may come either way
        assert above - 1e-6 <= share <= float(influence[influence >= mine].sum() / total) + 1e-6
    kept = {ids[i] for i in torch.nonzero(tg.pruned.node_mask).flatten().tolist()}
    assert set(shares) == {i for i in kept if not i.startswith("logit_")}


def test_dunefsky_transcoder_features_point_at_neuronpedias_tres_dc_sets(trace_graph_file):
    from sparse_coding.transcoders.sources import RELEASES, neuronpedia_set

    assert neuronpedia_set("gpt2-small-transcoders", 8) == "gpt2-small/8-tres-dc"
    assert neuronpedia_set("gpt2-small-transcoders-arena", 3) == "gpt2-small/3-tres-dc"
    assert neuronpedia_set("gpt2-small-clt-relu-sp8", 3) is None
    with_sets = [name for name, release in RELEASES.items() if release.neuronpedia]
    assert with_sets == [f"gpt2-small-transcoders{suffix}" for suffix in ("", "-original", "-arena")]
    graph = load_graph(trace_graph_file)
    for node in graph.nodes.values():
        if node.site == "tc":
            node.neuronpedia_id = neuronpedia_set("gpt2-small-transcoders", node.layer)
    data = to_neuronpedia(graph, slug="x")
    assert data["metadata"]["scan"] == "gpt2-small"
    assert data["metadata"]["feature_details"] == {"neuronpedia_source_set": "tres-dc"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_export_holds_every_node_and_edge(demo_graph, fmt, capsys):
    import pandas as pd

    run("export", [str(demo_graph), "--to", fmt, "-q"], prog="sparse-coding export")
    assert "export: wrote" in capsys.readouterr().out
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    nodes = read(demo_graph.with_name(f"grads_graph.nodes.{fmt}"))
    edges = read(demo_graph.with_name(f"grads_graph.edges.{fmt}"))
    graph = load_graph(demo_graph)
    assert sorted(nodes["id"]) == sorted(graph.nodes)
    got = {(s, t): e for s, t, e in zip(edges["source"], edges["target"], edges["effect"], strict=True)}
    assert got == pytest.approx({key: edge.effect for key, edge in graph.edges.items()})


def test_pandas_rows_per_run_and_networkx_edges_match_the_graph(demo_graph):
    graph = load_graph(demo_graph)
    nodes, edges = graph.to_pandas()
    assert len(nodes) == len(graph.nodes) and len(edges) == len(graph.edges)
    per_node, per_edge = graph.to_pandas(per_run=True)
    assert len(per_node) == sum(len(n.runs) for n in graph.nodes.values())
    assert set(per_edge["run"]) == {run["id"] for run in graph.runs}
    digraph = graph.to_networkx()
    assert set(digraph.nodes) == set(graph.nodes)
    assert {(s, t): d["effect"] for s, t, d in digraph.edges(data=True)} == {
        key: edge.effect for key, edge in graph.edges.items()
    }


def test_the_readme_notebook_cell_runs_from_a_graph_to_a_top_10_and_a_shortest_path(demo_graph):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Tables and networks", 1)[1]
    cell = re.search(r"```python\n(.*?)```", section, re.S)[1]
    shown = '"sparse_coding/demo/output/demo_model/grads_graph.json"'
    assert shown in cell
    namespace: dict = {}
    exec(compile(cell.replace(shown, repr(str(demo_graph))), "README.md", "exec"), namespace)
    assert len(namespace["top"]) == min(10, len(load_graph(demo_graph).nodes))
    path = namespace["path"]
    assert len(path) >= 2 and all(
        (a, b) in load_graph(demo_graph).edges for a, b in zip(path, path[1:], strict=False)
    )
