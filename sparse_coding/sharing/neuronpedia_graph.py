"""A fast.py or trace.py graph as Neuronpedia's attribution-graph JSON (the file circuit-tracer
writes and Neuronpedia's graph pages read).

The fields are those of Neuronpedia's graph-schema.json and circuit-tracer's
frontend/graph_models.py (``qParams``, the viewer's saved state, empty here);
``attribution_graph.schema.json`` here is our schema of them, with circuit-tracer's stricter types.
What our graph's numbers become there (feature_type per node kind and site: `NODE_KINDS`):
- node_id and jsNodeId: our node id (unique; links name them).
- feature: a feature's ``(layer + index)(layer + index + 1)/2 + index``, the
  Cantor pairing of its layer and index that Neuronpedia's schema-1 graphs
  carry (its pages unpair it to fetch ``{layer}-{source set}/{index}``);
  -1 for an error node; an embedding's position; a logit's token id.
- layer: the model layer; ``E`` for embeddings; one past the last for
  logits (Neuronpedia stacks them on top); ctx_idx: a positioned node's
  position (BOS = 0); a summed node stands for every position and is placed
  at the last prompt token, where the answer is predicted; logits too.
- clerp: the Neuronpedia explanation when the graph has one; a logit's
  ``Output "tok" (p=...)`` (Neuronpedia reads the probability from it);
  empty for embeddings and errors (Neuronpedia writes their own).
- activation: a feature's; influence: trace.py's cumulative influence share
  (circuit-tracer's pruning score: the share of the total influence held by
  the node and every node above it, which Neuronpedia's pruning slider reads).
- links: weight = our edge effect, unchanged. trace.py's sign is
  Neuronpedia's own ("the source raises the target"). fast.py's: positive =
  the source supports the answer through the target (its attribution along
  that edge); each node of the slice's last site also links to the answer
  node with its attribution as weight.
pipe.py graphs are refused: their effects are ablation changes over one or
many sequences at the last position, with no prompt to put on the axis.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sparse_coding import __version__
from sparse_coding.errors import GraphFileError
from sparse_coding.graphs.graph import Graph, Node, prompt_tokens
from sparse_coding.nodes import node_kind

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")  # Neuronpedia's slugs and model ids
SCHEMA_VERSION = 1
SCRIPTS = ("fast.py", "trace.py")


# (node kind, site) -> Neuronpedia's feature_type.
NODE_KINDS: dict[tuple[str, str | None], str] = {
    ("feature", "resid"): "cross layer transcoder",
    ("feature", "mlp"): "cross layer transcoder",
    ("feature", "attn"): "lorsa",
    ("feature", "tc"): "cross layer transcoder",  # circuit-tracer's type for per-layer ones too
    ("feature", "clt"): "cross layer transcoder",
    ("error", "resid"): "mlp reconstruction error",
    ("error", "mlp"): "mlp reconstruction error",
    ("error", "attn"): "lorsa error",
    ("embed", None): "embedding",
    ("logit", None): "logit",
}
QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def cantor(layer: int, index: int) -> int:
    """The Cantor pairing of a feature's layer and index, as Neuronpedia's schema-1 graphs store it."""
    return (layer + index) * (layer + index + 1) // 2 + index


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid Neuronpedia slug/model id, else GraphFileError naming what is valid."""
    if not NAME_RE.fullmatch(value):
        raise GraphFileError(
            f"{kind} {value!r} is not valid on Neuronpedia: use letters, digits, '_', '.' and '-' only"
        )
    return value


def to_neuronpedia(graph: Graph, *, slug: str) -> dict[str, Any]:
    """The attribution-graph JSON object of a fast.py or trace.py graph; GraphFileError when it
    cannot say it."""
    meta = graph.runs[-1] if graph.runs else graph.metadata
    if meta.get("script") not in SCRIPTS:
        raise GraphFileError(
            f"only fast.py and trace.py graphs export to Neuronpedia; this graph is "
            f"{meta.get('script')!r}'s. pipe.py's ablation effects are measured at the last position over "
            f"one or many sequences, which the format's per-token nodes cannot say; export it --to csv or "
            f"parquet"
        )
    tokens = _tokens(graph, str(meta.get("script")))
    last = len(tokens) - 1
    influence = meta.get("cumulative_influence") or {}
    logits = {int(t["token_id"]): t for t in meta.get("logit_targets") or []}  # trace.py: likeliest first
    nodes = [_node_entry(node, last, influence.get(node.id), logits) for node in graph.sorted_nodes()]
    links = [{"source": e.source, "target": e.target, "weight": e.effect} for e in graph.sorted_edges()]
    answer = _answer(graph, meta, last) if meta.get("script") == "fast.py" else None
    if answer is not None:
        nodes.append(answer)
        links += _answer_links(graph, answer["node_id"])
    return {
        "metadata": _metadata(graph, meta, tokens, slug),
        "qParams": dict(QPARAMS),
        "nodes": nodes,
        "links": links,
    }


def _tokens(graph: Graph, script: str) -> list[str]:
    """The prompt tokens; the runs of a merged graph must agree on them."""
    tokens = prompt_tokens(graph.metadata)
    seen = {tuple(run["prompt_tokens"]) for run in graph.runs if run.get("prompt_tokens")}
    if not tokens or len(seen) > 1:
        why = "records no prompt tokens" if not tokens else f"merges runs on {len(seen)} different prompts"
        raise GraphFileError(
            f"the graph {why}; Neuronpedia's format puts one tokenized prompt on its axis. Run {script} "
            f"again with --new-graph (one prompt per graph) and export that"
        )
    positions = [node.position for node in graph.nodes.values() if node.position is not None]
    if positions and max(positions) >= len(tokens):
        raise GraphFileError(f"node position {max(positions)} lies past the prompt's {len(tokens)} tokens")
    return tokens


def _node_entry(
    node: Node, last: int, influence: float | None, logits: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """One node of the file: its kind's rules applied (module docstring); `logits`: trace.py's logit
    targets by token id, likeliest first (circuit-tracer's target logit)."""
    kind = node_kind(node.id)
    position = last if kind == "logit" or node.position is None else node.position
    if kind == "feature":
        feature = cantor(node.layer, node.feature)
    else:
        feature = {"error": -1, "embed": position, "logit": node.feature}[kind]
    entry = {
        "node_id": node.id,
        "feature": feature,
        "layer": "E" if kind == "embed" else str(node.layer + 1 if kind == "logit" else node.layer),
        "ctx_idx": position,
        "feature_type": NODE_KINDS[(kind, node.site if kind in ("feature", "error") else None)],
        "jsNodeId": node.id,
        "clerp": (node.explanation or "") if kind == "feature" else "",
        "activation": node.activation if kind == "feature" else None,
        "influence": influence,
    }
    if kind == "logit":  # a trace.py logit: its probability is its activation
        probability = float(node.activation or 0.0)
        token = logits.get(node.feature, {}).get("token", "")
        entry |= {
            "clerp": f'Output "{token}" (p={probability:.3f})',
            "token_prob": probability,
            "is_target_logit": bool(logits) and node.feature == next(iter(logits)),
        }
    return entry


def _answer(graph: Graph, meta: dict[str, Any], last: int) -> dict[str, Any] | None:
    """The answer's logit node (circuit-tracer's target logit), when the run recorded its token."""
    if meta.get("answer_token_id") is None:
        return None
    token_id, probability = int(meta["answer_token_id"]), meta.get("answer_probability")
    shown = "n/a" if probability is None else f"{probability:.3f}"
    return {
        "node_id": f"logit_{token_id}",
        "feature": token_id,
        "layer": str(max((node.layer for node in graph.nodes.values()), default=0) + 1),
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
    nodes = [node for node in graph.sorted_nodes() if node.attribution is not None]
    bottom = max((node.rank_key() for node in nodes), default=None)
    return [
        {"source": node.id, "target": answer_id, "weight": node.attribution}
        for node in nodes
        if node.rank_key() == bottom
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
    if pruning := _pruning_keys(meta):
        metadata["pruning_settings"] = {name: config.get(key) for name, key in pruning.items()}
        metadata["node_threshold"] = config.get(pruning["node_threshold"])
    return metadata


def _pruning_keys(meta: dict[str, Any]) -> dict[str, str]:
    """The config keys of the run's node and edge thresholds, when it pruned by threshold."""
    if meta.get("script") == "trace.py":
        return {"node_threshold": "TRACE_NODE_THRESHOLD", "edge_threshold": "TRACE_EDGE_THRESHOLD"}
    if (meta.get("config") or {}).get("SELECTION") == "threshold":
        return {"node_threshold": "NODE_THRESHOLD", "edge_threshold": "EDGE_THRESHOLD"}
    return {}


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
    main = next((by_site[site] for site in ("resid", "mlp", "tc", "clt") if site in by_site), None)
    if main:
        sets["neuronpedia_source_set"] = main
    if by_site.get("attn"):
        sets["neuronpedia_lorsa_source_set"] = by_site["attn"]
    return scan, sets


def _description(meta: dict[str, Any]) -> str:
    if meta.get("script") == "trace.py":
        return (
            f"sparse_coding trace.py attribution graph (circuit-tracer's method) through "
            f"{meta.get('transcoders') or 'transcoders'}; nodes per token position. Link weight = direct "
            f"effect in the local replacement model: positive = the source raises the target. "
            f"{meta.get('summary', '')}"
        ).strip()
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
