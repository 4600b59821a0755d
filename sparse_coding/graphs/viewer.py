"""One self-contained HTML page per graph, for exploring it by clicking (docs/internals.md).

The page, ``<image stem>.html``, inlines the graph's data as JSON, ``viewer.css``
and the script (``SCRIPT_PARTS``): it makes no request, so it opens from
``file://`` on an air-gapped server and in a Jupyter cell
(``IPython.display.HTML(viewer_fragment(graph))``). ``viewer_data`` is the one
adapter from the `Graph`. Labels are data, never markup: the JSON is embedded
with ``<`` escaped (a ``</script>`` inside a token cannot end the script), and
the script sets every label with ``textContent``.
"""

from __future__ import annotations

import html
import json
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from sparse_coding.config.schema import NEURONPEDIA_URL
from sparse_coding.config.steering import steer_commands
from sparse_coding.files import storage
from sparse_coding.graphs.graph import Graph, Node, prompt_tokens
from sparse_coding.graphs.legend import caption_lines, legend_entries, run_label
from sparse_coding.graphs.markup import shown_logits
from sparse_coding.graphs.render import drawn_rank
from sparse_coding.nodes import node_kind

# The viewer's script in parts, inlined in this order (docs/internals.md says what each holds).
SCRIPT_PARTS = (
    "viewer_common.js",
    "viewer_layout.js",
    "viewer_state.js",
    "viewer_camera.js",
    "viewer_drawing.js",
    "viewer_steer.js",
    "viewer_panel.js",
    "viewer.js",
)


def _asset(name: str) -> str:
    return resources.files("sparse_coding.graphs").joinpath(name).read_text(encoding="utf-8")


def _code_lines(source: str) -> list[str]:
    """A part's lines less blank lines and whole-line comments (a ``/*`` line through the line ending
    ``*/``; a ``//`` line): the comments are for readers of the source and cost the page nothing. The
    parts write no string across lines, so no such line is inside a string."""
    kept, in_comment = [], False
    for line in source.splitlines():
        text = line.strip()
        if in_comment or text.startswith("/*"):
            in_comment = not text.endswith("*/")
        elif text and not text.startswith("//"):
            kept.append(line)
    return kept


def viewer_script() -> str:
    """The parts as one script in one function scope, so that a page or notebook holding two viewers
    declares each name twice without a clash."""
    lines = [line for name in SCRIPT_PARTS for line in _code_lines(_asset(name))]
    return '(() => {\n"use strict";\n' + "\n".join(lines) + "\n})();"


def _run_indices(runs: dict[str, Any], run_index: dict[str, int]) -> list[int] | None:
    """The runs (indices into metadata["runs"]) a node or edge was measured in; None for no run."""
    if not runs:
        return None
    return sorted(run_index[key] for key in runs if key in run_index)


def _page_url(node: Node, metadata: dict[str, Any]) -> str | None:
    """The feature's Neuronpedia page (not its API), when the SAE set is known there."""
    if node.feature is None or not node.neuronpedia_id:
        return None
    config = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
    base = str(config.get("NEURONPEDIA_URL") or NEURONPEDIA_URL).rstrip("/")
    return f"{base}/{node.neuronpedia_id.strip('/')}/{node.feature}"


_ROW_LABELS = {"embed": "token embeddings", "logit": "logits"}  # trace.py's rows without a hook


def _row_label(node: Node) -> str:
    return node.hook or _ROW_LABELS.get(node.site) or f"{node.site} {node.layer}"


def _column(node: Node, tokens: list[str] | None) -> int | None:
    """The token column of a node on a token axis: its position; a logit's, the last token's."""
    if node.position is not None or not tokens:
        return node.position
    return len(tokens) - 1 if node_kind(node.id) == "logit" else None


def _node_data(
    node: Node, row: int, metadata: dict[str, Any], run_index: dict[str, int], tokens: list[str] | None
) -> dict[str, Any]:
    return {
        "id": node.id,
        "position": node.position,
        "column": _column(node, tokens),
        "hook": node.hook,
        "row": row,
        "error": node.is_error,
        "activation": node.activation,
        "attribution": node.attribution,
        "contexts": [{"tokens": c.tokens, "activations": c.activations} for c in node.contexts],
        "up": shown_logits(node.logits_up),  # the logit cells the image draws
        "down": shown_logits(node.logits_down),
        "explanation": node.explanation,
        "url": _page_url(node, metadata),
        "steer": steer_commands(node.id),
        "runs": _run_indices(node.runs, run_index),
    }


def viewer_data(graph: Graph) -> dict[str, Any]:
    """The page's data from a graph (its numbers are finite: see `Graph.check`).

    Returns:
        ``nodes`` (forward order, each with its row), ``edges`` as
        ``[source index, target index, effect, runs]`` (runs: indices into the
        run list, or null for a value of no run), row labels, run labels,
        caption lines and legend (the image's, from `legend`).
    """
    metadata = graph.metadata
    nodes = graph.sorted_nodes()
    labels: dict[tuple[int, int], str] = {}  # a row's label: its first node's
    for node in nodes:
        labels.setdefault(drawn_rank(node), _row_label(node))
    row_of = {rank: row for row, rank in enumerate(sorted(labels))}
    index = {node.id: i for i, node in enumerate(nodes)}
    run_index = {str(run.get("id")): i for i, run in enumerate(metadata.get("runs") or [])}
    tokens = _token_axis(metadata, nodes)
    return {
        "nodes": [_node_data(node, row_of[drawn_rank(node)], metadata, run_index, tokens) for node in nodes],
        "edges": [
            [index[e.source], index[e.target], e.effect, _run_indices(e.runs, run_index)]
            for e in graph.sorted_edges()
            if e.source in index and e.target in index
        ],
        "rows": [labels[rank] for rank in row_of],
        "runs": [run_label(run) for run in metadata.get("runs") or []],
        "caption": caption_lines(metadata),
        "legend": legend_entries(metadata),
        "tokens": tokens,
    }


def _token_axis(metadata: dict[str, Any], nodes: list[Node]) -> list[str] | None:
    """The prompt's tokens when every node has a token column (positioned nodes, and trace.py's logits
    at the last token): the page then draws a token axis; else None."""
    tokens = prompt_tokens(metadata)
    columns = [_column(node, tokens) for node in nodes]
    if not tokens or not columns or None in columns or max(columns) >= len(tokens):
        return None
    return tokens


def script_safe_json(value: Any) -> str:
    """JSON that can sit inside ``<script>``: every ``<`` is ``\\u003c``, so no ``</script>`` or ``<!--``."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)  # lone surrogates too
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def viewer_fragment(graph: Graph, *, root_id: str | None = None) -> str:
    """The viewer as one HTML fragment (style, root element, data, script) for a page or a notebook cell.

    Args:
        graph: the graph shown.
        root_id: the root element's id; by default a fresh one, so the same
            graph shown twice in one notebook gets two working viewers.
    """
    data = script_safe_json(viewer_data(graph))
    root_id = root_id or f"sc-viewer-{uuid.uuid4().hex[:12]}"
    boot = (
        "(() => { const t0 = performance.now();"
        f' const root = document.getElementById("{root_id}");'
        f' const data = JSON.parse(document.getElementById("{root_id}-data").textContent);'
        " scGraphViewer.init(root, data);"
        " root.dataset.firstRenderMs = (performance.now() - t0).toFixed(1); })();"
    )
    return (
        f"<style>{_asset('viewer.css')}</style>\n"
        f'<div class="sc-viewer" id="{root_id}"></div>\n'
        f'<script type="application/json" id="{root_id}-data">{data}</script>\n'
        f"<script>{viewer_script()}\n{boot}</script>\n"
    )


def viewer_page(graph: Graph) -> str:
    """A whole HTML document holding the viewer; it makes no request of any kind."""
    title = html.escape(caption_lines(graph.metadata)[0], quote=False)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n"
        f'<title>{title}</title></head>\n<body class="sc-page">\n'
        f"{viewer_fragment(graph, root_id='sc-viewer')}</body></html>\n"
    )


def write_viewer(graph: Graph, html_path: Path) -> Path:
    """Write a graph's viewer page to `html_path` (atomically); graph files get theirs on every save."""
    storage.write_atomic(Path(html_path), viewer_page(graph))
    return Path(html_path)
