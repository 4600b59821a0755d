"""A fast.py graph as Neuronpedia's attribution-graph JSON (the file circuit-tracer writes and
Neuronpedia's graph pages read).

Fields (Neuronpedia's graph-schema.json, circuit-tracer's frontend/graph_models.py):
``metadata`` (slug, scan = the Neuronpedia model id, prompt_tokens, prompt,
feature_details, info, pruning_settings, schema_version, transcoder_list),
``qParams`` (the viewer's saved state, empty here), ``nodes`` (node_id,
feature, layer, ctx_idx, feature_type, jsNodeId, clerp, activation, influence)
and ``links`` (source, target, weight). `GRAPH_SCHEMA` is our schema of those
fields, with circuit-tracer's stricter types.

What our graph's numbers become there:
- node_id and jsNodeId: our node id (unique; links name them); feature: the
  SAE feature index (-1 for an error node, the token id for the answer);
  layer: the model layer; feature_type, from `NODE_KINDS` by node kind and
  site; clerp: the Neuronpedia explanation when the graph has one.
- ctx_idx: a positioned node's position (BOS = 0); a summed node stands for
  every position and is placed at the last prompt token, where the answer is
  predicted.
- links: weight = our edge effect, unchanged. fast.py's sign: positive = the
  source supports the answer through the target (its attribution along that
  edge), where Neuronpedia's own graphs mean "the source raises the target".
  Each node of the slice's last site also links to the answer node with its
  attribution as weight.
pipe.py graphs are refused: their effects are ablation changes over one or
many sequences at the last position, with no prompt to put on the axis.
"""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from typing import Any

from sparse_coding import __version__
from sparse_coding.errors import GraphFileError
from sparse_coding.graphs.graph import Graph, Node, prompt_tokens

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")  # Neuronpedia's slugs and model ids
SCHEMA_VERSION = 1
# (node kind, site) -> feature_type in Neuronpedia's vocabulary; trace.py's kinds join this table.
NODE_KINDS: dict[tuple[str, str | None], str] = {
    ("feature", "resid"): "cross layer transcoder",
    ("feature", "mlp"): "cross layer transcoder",
    ("feature", "attn"): "lorsa",
    ("error", "resid"): "mlp reconstruction error",
    ("error", "mlp"): "mlp reconstruction error",
    ("error", "attn"): "lorsa error",
    ("logit", None): "logit",
}
QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def graph_schema() -> dict[str, Any]:
    """Our JSON schema of the attribution-graph file (package data)."""
    text = resources.files("sparse_coding.sharing").joinpath("attribution_graph.schema.json").read_text()
    return json.loads(text)


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid Neuronpedia slug/model id, else GraphFileError naming what is valid."""
    if not NAME_RE.fullmatch(value):
        raise GraphFileError(
            f"{kind} {value!r} is not valid on Neuronpedia: use letters, digits, '_', '.' and '-' only"
        )
    return value


def to_neuronpedia(graph: Graph, *, slug: str) -> dict[str, Any]:
    """The attribution-graph JSON object of a fast.py graph; GraphFileError when it cannot say it."""
    meta = _latest_run(graph)
    if meta.get("script") != "fast.py":
        raise GraphFileError(
            f"only fast.py graphs export to Neuronpedia; this graph is {meta.get('script')!r}'s. pipe.py's "
            f"ablation effects are measured at the last position over one or many sequences, which the "
            f"format's per-token nodes cannot say; export it --to csv or parquet"
        )
    tokens = _tokens(graph)
    last = len(tokens) - 1
    nodes = [_node_entry(node, last) for node in graph.sorted_nodes()]
    links = [{"source": e.source, "target": e.target, "weight": e.effect} for e in graph.sorted_edges()]
    answer = _answer(graph, meta, last)
    if answer is not None:
        nodes.append(answer)
        links += _answer_links(graph, answer["node_id"])
    return {
        "metadata": _metadata(graph, meta, tokens, slug),
        "qParams": dict(QPARAMS),
        "nodes": nodes,
        "links": links,
    }


def _latest_run(graph: Graph) -> dict[str, Any]:
    return graph.runs[-1] if graph.runs else graph.metadata


def _tokens(graph: Graph) -> list[str]:
    """The prompt tokens; the runs of a merged graph must agree on them."""
    tokens = prompt_tokens(graph.metadata)
    seen = {tuple(run["prompt_tokens"]) for run in graph.runs if run.get("prompt_tokens")}
    if not tokens or len(seen) > 1:
        why = "records no prompt tokens" if not tokens else f"merges runs on {len(seen)} different prompts"
        raise GraphFileError(
            f"the graph {why}; Neuronpedia's format puts one tokenized prompt on its axis. Run fast.py "
            f"again with --new-graph (one prompt per graph) and export that"
        )
    positions = [node.position for node in graph.nodes.values() if node.position is not None]
    if positions and max(positions) >= len(tokens):
        raise GraphFileError(f"node position {max(positions)} lies past the prompt's {len(tokens)} tokens")
    return tokens


def _node_entry(node: Node, last: int) -> dict[str, Any]:
    kind = "error" if node.is_error else "feature"
    return {
        "node_id": node.id,
        "feature": -1 if node.feature is None else node.feature,
        "layer": str(node.layer),
        "ctx_idx": last if node.position is None else node.position,
        "feature_type": NODE_KINDS[(kind, node.site)],
        "jsNodeId": node.id,
        "clerp": node.explanation or "",
        "activation": node.activation,
        "influence": None,
    }


def _answer(graph: Graph, meta: dict[str, Any], last: int) -> dict[str, Any] | None:
    """The answer's logit node (circuit-tracer's target logit), when the run recorded its token."""
    if meta.get("answer_token_id") is None:
        return None
    token_id, probability = int(meta["answer_token_id"]), meta.get("answer_probability")
    shown = "n/a" if probability is None else f"{probability:.3f}"
    layers = [node.layer for node in graph.nodes.values()]
    return {
        "node_id": f"logit_{token_id}",
        "feature": token_id,
        "layer": str(max(layers, default=0) + 1),
        "ctx_idx": last,
        "feature_type": NODE_KINDS[("logit", None)],
        "jsNodeId": f"logit_{token_id}",
        "clerp": f'Output "{meta.get("answer_token", "")}" (p={shown})',
        "token_prob": 0.0 if probability is None else float(probability),
        "is_target_logit": True,
        "activation": None,
        "influence": None,
    }


def _answer_links(graph: Graph, answer_id: str) -> list[dict[str, Any]]:
    """Each node of the last site to the answer, weighted by its attribution."""
    nodes = [node for node in graph.nodes.values() if node.attribution is not None]
    if not nodes:
        return []
    bottom = max(node.rank_key() for node in nodes)
    return [
        {"source": node.id, "target": answer_id, "weight": node.attribution}
        for node in graph.sorted_nodes()
        if node.attribution is not None and node.rank_key() == bottom
    ]


def _metadata(graph: Graph, meta: dict[str, Any], tokens: list[str], slug: str) -> dict[str, Any]:
    scan, sets = _neuronpedia_sources(graph, meta)
    config = meta.get("config") or {}
    metadata: dict[str, Any] = {
        "slug": check_name("slug", slug),
        "scan": check_name("scan (model id)", scan),
        "prompt_tokens": tokens,
        "prompt": str(meta.get("prompt") or "".join(tokens)),
        "schema_version": SCHEMA_VERSION,
        "transcoder_list": [],
        "info": {
            "description": _description(meta),
            "generator": {"name": "sparse_coding", "version": __version__},
            "source_urls": sorted(set((meta.get("sae_sources") or {}).values())),
            "create_time_ms": int(time.time() * 1000),
        },
    }
    if sets:
        metadata["feature_details"] = sets
    if config.get("SELECTION") == "threshold":
        metadata["pruning_settings"] = {
            "node_threshold": config.get("NODE_THRESHOLD"),
            "edge_threshold": config.get("EDGE_THRESHOLD"),
        }
    return metadata


def _neuronpedia_sources(graph: Graph, meta: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(scan, feature_details): the Neuronpedia model and source sets of the SAEs (``gpt2-small/9-res-jb``:
    model ``gpt2-small``, set ``res-jb``); without Neuronpedia ids, the model's name and no sets."""
    by_site: dict[str, str] = {}
    models = set()
    for node in graph.nodes.values():
        if node.neuronpedia_id and "/" in node.neuronpedia_id:
            model, source = node.neuronpedia_id.split("/", 1)
            models.add(model)
            by_site.setdefault(node.site, source.split("-", 1)[-1])
    if len(models) == 1:
        scan = models.pop()
    else:
        name = str(meta.get("model") or graph.metadata.get("model") or "model").rstrip("/").split("/")[-1]
        scan = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    sets = {}
    main = by_site.get("resid") or by_site.get("mlp")
    if main:
        sets["neuronpedia_source_set"] = main
    if by_site.get("attn"):
        sets["neuronpedia_lorsa_source_set"] = by_site["attn"]
    return scan, sets


def _description(meta: dict[str, Any]) -> str:
    positioned = (meta.get("config") or {}).get("NODE_POSITIONS") == "each"
    where = (
        "one node per token position"
        if positioned
        else "nodes summed over positions, placed at the last token"
    )
    return (
        f"sparse_coding fast.py gradient graph (Marks et al. 2024) over SAE features and errors; {where}. "
        f"Link weight = edge attribution: positive = the source supports the answer through the target. "
        f"{meta.get('summary', '')}"
    ).strip()
