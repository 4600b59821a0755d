"""The ``.dot`` of a graph: written from a Graph, and read back from any ``.dot``.

The ``.dot`` that `graph_files` writes is derived from the canonical
``.json`` and says so in its first line; besides the drawing it carries what
reloads it without the ``.json``: graph ``sc_format`` and ``sc_metadata``
(JSON), ``sc_user_graph`` (the user's graph attributes, JSON); node
``sc_site``, ``sc_layer``, ``sc_feature``, ``activation``, ``attribution``,
``hook``, ``neuronpedia_id``, ``sc_annotations`` and ``sc_runs`` (JSON: run
id -> values); edge ``effect`` (the mean over runs), ``sc_runs`` and a
``tooltip`` giving the number of runs. Floats are written with ``repr``.

Reading accepts this tool's files, hand-made ones and the seed tool's
(sparse_circuit_discovery: ``9.331`` -> ``resid_9.331``, ``resid_error_9.0``
-> ``resid_error_9``). Edges with ``effect`` become measured edges (untied
to a run when the file does not say which, or when ``effect`` was edited
away from the mean of ``sc_runs``); edges without it and nodes that are not
node ids are the user's drawing, kept and drawn again as they were.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from sparse_coding.graphs.dot_parser import DotGraph, parse_dot
from sparse_coding.graphs.graph import Edge, Graph, Node, finite
from sparse_coding.graphs.render import RenderOptions, dot_source, quote
from sparse_coding.nodes import parse_positioned_id

FORMAT = 2  # of the .dot and the .json together
DERIVED_NOTE = "Drawn by sparse_coding from its canonical .json twin (same name)"
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SEED_FEATURE_RE = re.compile(r"^(\d+)\.(\d+)$")  # seed tool: "9.331" is resid layer 9, feature 331
_SEED_ERROR_RE = re.compile(r"^(resid|attn|mlp)_error_(\d+)(?:\.\d+)?$")


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON that keeps Unicode readable but is always encodable as UTF-8.

    A lone surrogate (a broken token) is written as its ``\\udc80``-style escape,
    which reads back as itself; other values fall back to ``str``.
    """
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, default=str)
    return _SURROGATE_RE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _float(value: str | None) -> float | None:
    """A stored number; inf and nan are no effect or activation a run writes (ValueError)."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number


def _runs_text(n_runs: int) -> str:
    return f"measured by {n_runs} runs, drawn at their mean" if n_runs > 1 else "measured by 1 run"


def _node_data_attrs(node: Node) -> dict[str, str]:
    attrs = {"sc_site": node.site, "sc_layer": str(node.layer)}
    if node.feature is not None:
        attrs["sc_feature"] = str(node.feature)
    for key in ("activation", "attribution"):
        if (value := getattr(node, key)) is not None:
            attrs[key] = repr(value)
    for key in ("hook", "neuronpedia_id"):
        if (value := getattr(node, key)) is not None:
            attrs[key] = value
    if annotations := node.annotations():
        attrs["sc_annotations"] = json_text(annotations)
    if node.runs:
        attrs |= {"sc_runs": json_text(node.runs), "tooltip": f"{node.id}: {_runs_text(len(node.runs))}"}
    return attrs


def _edge_data_attrs(edge: Edge) -> dict[str, str]:
    attrs = {"effect": repr(edge.effect)}
    if edge.runs:
        tooltip = f"{edge.source} -> {edge.target}: effect {edge.effect:.4g}, {_runs_text(len(edge.runs))}"
        attrs |= {"sc_runs": json_text(edge.runs), "tooltip": tooltip}
    return attrs


def _user_lines(graph: Graph) -> list[str]:
    """The user's own drawing (kept from an imported .dot), as DOT statements."""
    lines = []
    for name, attrs in graph.user.nodes.items():
        lines.append(f"  {quote(name)} [{', '.join(f'{k}={quote(v)}' for k, v in attrs.items())}];")
    for (source, target), attrs in graph.user.edges.items():
        if (source, target) not in graph.edges:  # a measured edge replaces the drawn one
            attr_text = ", ".join(f"{k}={quote(v)}" for k, v in attrs.items())
            lines.append(f"  {quote(source)} -> {quote(target)} [{attr_text}];")
    return lines


def graph_to_dot(graph: Graph, options: RenderOptions | None = None) -> str:
    """The derived ``.dot`` text: a header comment, the drawing, and every attribute needed to reload it."""
    graph_attrs = {"sc_format": str(FORMAT), "sc_metadata": json_text(graph.metadata)}
    if graph.user.graph_attrs:
        graph_attrs |= {"sc_user_graph": json_text(graph.user.graph_attrs), **graph.user.graph_attrs}
    text = dot_source(
        graph,
        options=options,
        node_attrs={n.id: _node_data_attrs(n) for n in graph.nodes.values()},
        edge_attrs={key: _edge_data_attrs(e) for key, e in graph.edges.items()},
        graph_attrs=graph_attrs,
    )
    if user := _user_lines(graph):
        text = text.removesuffix("}\n") + "\n".join(user) + "\n}\n"
    return f"// {DERIVED_NOTE}; edits made here are detected and imported on the next run.\n" + text


def import_node_id(name: str) -> str | None:
    """This tool's id for a .dot node name (the seed tool's ``9.331`` -> ``resid_9.331``); None if none."""
    if match := _SEED_FEATURE_RE.match(name):
        return f"resid_{match[1]}.{match[2]}"
    if match := _SEED_ERROR_RE.match(name):
        return f"{match[1]}_error_{match[2]}"
    try:
        parse_positioned_id(name)
    except ValueError:
        return None
    return name


def _drawing_only(name: str, attrs: dict[str, str]) -> bool:
    """Layout helpers this module draws itself (rank anchors, the summary node)."""
    return name.startswith("__") or attrs.get("style") == "invis"


def _tied_or_edited(runs: dict, means: dict[str, float | None], merged: Node | Edge) -> dict:
    """`runs` when their means are the values written beside them, else {} (edited by hand: untied)."""
    return runs if all(getattr(merged, key) == value for key, value in means.items()) else {}


def _node_from_dot(node_id: str, attrs: dict[str, str]) -> Node:
    values = {key: _float(attrs.get(key)) for key in ("activation", "attribution")}
    if "sc_site" not in attrs:
        return Node.from_id(node_id, **values)
    data: dict[str, Any] = {
        "id": node_id,
        "site": attrs["sc_site"],
        "layer": attrs["sc_layer"],
        "feature": attrs.get("sc_feature"),
        **{k: attrs.get(k) for k in ("activation", "attribution", "hook", "neuronpedia_id")},
    }
    if "sc_annotations" in attrs:
        data.update(json.loads(attrs["sc_annotations"]))
    node = Node.from_dict(data)
    if "sc_runs" in attrs:
        probe = dataclasses.replace(node, runs={})
        probe.merge(dataclasses.replace(node, runs=json.loads(attrs["sc_runs"])))
        node.runs = _tied_or_edited(probe.runs, values, probe)
    return node


def _edge_from_dot(source: str, target: str, attrs: dict[str, str]) -> Edge:
    effect = finite(attrs["effect"])
    edge = Edge(source, target, effect)
    if "sc_runs" in attrs:
        runs = {str(run): float(value) for run, value in json.loads(attrs["sc_runs"]).items()}
        probe = Edge(source, target, 0.0, {})
        probe.merge(Edge(source, target, 0.0, runs))
        edge.runs = _tied_or_edited(probe.runs, {"effect": effect}, probe)
    return edge


def _graph_from_parsed(parsed: DotGraph) -> Graph:
    ours = "sc_format" in parsed.graph_attrs
    graph = Graph(metadata=dict(json.loads(parsed.graph_attrs.get("sc_metadata", "{}"))))
    user_graph = parsed.graph_attrs.get("sc_user_graph")
    graph.user.graph_attrs = (
        json.loads(user_graph) if user_graph else ({} if ours else dict(parsed.graph_attrs))
    )
    names: dict[str, str] = {}  # .dot name -> node id
    for name, attrs in parsed.nodes.items():
        if ours and _drawing_only(name, attrs):
            continue
        if (node_id := import_node_id(name)) is None:
            graph.user.nodes[name] = attrs
            continue
        names[name] = node_id
        graph.add_node(_node_from_dot(node_id, attrs))
    for (source, target), attrs in parsed.edges.items():
        if "effect" not in attrs:
            if not (ours and _drawing_only(source, parsed.nodes.get(source, {}))):
                graph.user.edges[(names.get(source, source), names.get(target, target))] = attrs
            continue
        for end in (source, target):
            if end not in names:
                raise ValueError(
                    f"the edge {source} -> {target} carries an effect, but {end!r} is not a node id "
                    f"(site_layer.index such as resid_3.331, or site_error_layer)"
                )
        graph.edges[(names[source], names[target])] = _edge_from_dot(names[source], names[target], attrs)
    return graph


def graph_from_dot(text: str) -> Graph:
    """A Graph from .dot text (this tool's, a hand-made one, or the seed tool's).

    Values the file does not tie to runs stay untied (see `Graph.add_run`).

    Raises:
        ValueError, KeyError, TypeError: the text is not a graph this module reads.
    """
    return _graph_from_parsed(parse_dot(text))
