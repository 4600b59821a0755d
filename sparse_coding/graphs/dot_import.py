"""Import a ``.dot`` that has no ``.json``: the one place a ``.dot`` is ever read (once, by `graph_files`).

It reads this tool's own files, including older formats whose ``.dot``
carried the data (graph ``sc_metadata``/``sc_user_graph``; node ``sc_site``,
``sc_layer``, ``sc_feature``, ``sc_annotations``; ``sc_runs``, kept as runs
when the values beside them are their means, else taken as edited by hand),
and hand-made files and the seed tool's (``9.331`` -> ``resid_9.331``,
``resid_error_9.0`` -> ``resid_error_9``): edges with ``effect`` become
measured edges; edges without it and nodes that are not node ids are the
user's drawing, kept and drawn again as they were.

Values the file does not assign to a run become the run of the import (script
``imported``); a file written before runs were kept apart describes its last
run in its metadata, and that becomes the import's run record.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from sparse_coding.graphs.dot_parser import parse_dot
from sparse_coding.graphs.graph import MEASURED, Edge, Graph, Node, finite, loads_strict, run_record
from sparse_coding.nodes import parse_positioned_id

_SEED_FEATURE_RE = re.compile(r"^(\d+)\.(\d+)$")  # seed tool: "9.331" is resid layer 9, feature 331
_SEED_ERROR_RE = re.compile(r"^(resid|attn|mlp)_error_(\d+)(?:\.\d+)?$")


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


def _number(value: str | None, what: str) -> float | None:
    return None if value is None else finite(float(value), what)


def _drawing_only(name: str, attrs: dict[str, str]) -> bool:
    """Layout helpers this tool draws itself (rank anchors, the summary node)."""
    return name.startswith("__") or attrs.get("style") == "invis"


def _runs_unless_edited(kind: type[Node | Edge], data: dict, sc_runs: str, keys: tuple[str, ...]) -> dict:
    """The runs of `sc_runs` when their means are the values written beside them (`data`), else {}
    (edited by hand: no run)."""
    item = kind.from_dict(data | {"runs": loads_strict(sc_runs)})
    means = dataclasses.replace(item, runs={})
    means.merge(item)
    return item.runs if all(getattr(means, key) == getattr(item, key) for key in keys) else {}


def _node_from_dot(node_id: str, attrs: dict[str, str]) -> Node:
    values = {key: _number(attrs.get(key), f"node {node_id} {key}") for key in MEASURED}
    if "sc_site" not in attrs:
        return Node.from_id(node_id, **values, hook=attrs.get("hook"))
    data: dict[str, Any] = {
        "id": node_id,
        "site": attrs["sc_site"],
        "layer": int(attrs["sc_layer"]),
        "feature": int(attrs["sc_feature"]) if "sc_feature" in attrs else None,
        **values,
        **{key: attrs.get(key) for key in ("hook", "neuronpedia_id")},
    }
    if "sc_annotations" in attrs:
        data.update(loads_strict(attrs["sc_annotations"]))
    node = Node.from_dict(data)
    if "sc_runs" in attrs:
        node.runs = _runs_unless_edited(Node, data, attrs["sc_runs"], MEASURED)
    return node


def _edge_from_dot(source: str, target: str, attrs: dict[str, str]) -> Edge:
    data: dict[str, Any] = {"source": source, "target": target, "effect": float(attrs["effect"])}
    edge = Edge.from_dict(data)
    if "sc_runs" in attrs:
        edge.runs = _runs_unless_edited(Edge, data, attrs["sc_runs"], ("effect",))
    return edge


def graph_from_dot(text: str) -> Graph:
    """A Graph from .dot text, values of no run where the file does not assign them to runs; ValueError,
    KeyError or TypeError when the text is not a graph this module reads."""
    parsed = parse_dot(text)
    ours = "sc_format" in parsed.graph_attrs
    graph = Graph(metadata=dict(loads_strict(parsed.graph_attrs.get("sc_metadata", "{}"))))
    user_graph = parsed.graph_attrs.get("sc_user_graph")
    graph.user.graph_attrs = (
        loads_strict(user_graph) if user_graph else ({} if ours else dict(parsed.graph_attrs))
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


def import_dot(dot_path: Path, text: str) -> Graph:
    """The graph of `dot_path` (read as `text`), its values of no run assigned to a run of the import;
    raises as `graph_from_dot`."""
    graph = graph_from_dot(text)
    if graph.has_values_of_no_run():
        described = {} if graph.runs else graph.metadata
        graph.add_run(run_record({"script": "imported", **described, "imported_from": Path(dot_path).name}))
    graph.check()
    return graph
