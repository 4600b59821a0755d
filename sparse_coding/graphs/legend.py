"""The caption and legend drawn with every graph, in the image and the HTML viewer.

A picture pasted into a paper must explain itself: what an arrow, its colour,
a box and a dotted box mean (the legend, the graph's own ``sign_convention``
record), and which script, text and node choice it shows (the caption).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sparse_coding.graphs.conventions import SCRIPTS, sentences
from sparse_coding.graphs.markup import truncate

_GENERIC = {
    "edge": "edge u -> d: positive (blue): u pushes d up, negative (red): u pushes d down",
    "colour": "blue = positive, red = negative",
}
# Legend rows: sentence key -> the symbol it explains, in drawing order.
_ROWS = {
    "colour": "colour",
    "edge": "arrow",
    "node attribution": "attr",
    "node activation": "act",
    "logit cells": "+ / − cells",
}
_BOX = (
    "a feature, site_layer.index; rows: hook and numbers, top-activating contexts (tokens shaded "
    "blue by activation), + / − next-token cells, Neuronpedia explanation"
)
_DOTTED = "SAE error node: what the SAE misses at that site"
_PROMPT_CHARS = 60  # a prompt longer than this is cut in the caption (the .json holds it whole)


def runs_of(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The graph's run records, oldest first; a never-merged graph's metadata is its one run."""
    runs = metadata.get("runs") if isinstance(metadata.get("runs"), list) else []
    return [run for run in runs if isinstance(run, dict)] or [metadata]


def graph_script(metadata: dict[str, Any]) -> str | None:
    """The script that made the graph (latest run), e.g. ``"pipe.py"``."""
    script = metadata.get("script") or runs_of(metadata)[-1].get("script")
    return str(script) if script else None


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    return config | {"down_node_selection": run.get("down_node_selection")}


def meaning(run: dict[str, Any]) -> dict[str, str]:
    """A run's sentences: its recorded ``sign_convention``, else `conventions.sentences` for its script."""
    recorded = run.get("sign_convention")
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v) for k, v in recorded.items()}
    script = graph_script(run)
    return sentences(script, _settings(run)) if script in SCRIPTS else dict(_GENERIC)


def legend_entries(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """(symbol, meaning) rows from the latest run's sentences; boxes as its script words them
    (trace.py: transcoder features, embeddings, logits, MLP error nodes), else SAE features and errors."""
    run = runs_of(metadata)[-1]
    signs = meaning(run)
    entries = [(symbol, signs[key]) for key, symbol in _ROWS.items() if key in signs]
    script = graph_script(run)
    boxes = sentences(script, _settings(run)) if script in SCRIPTS else {}  # graphs recorded before
    entries.append(("box", signs.get("box") or boxes.get("box") or _BOX))
    entries.append(("dotted box", signs.get("error node") or boxes.get("error node") or _DOTTED))
    return entries


def _short(name: str) -> str:
    """A local file by its name (the .json holds the path), a hub dataset as it is."""
    return Path(name).name if Path(name).is_absolute() else name


def text_shown(run: dict[str, Any]) -> str:
    """What the run explained: fast.py its examples, trace.py its prompt, pipe.py and val.py the text
    INTERP_SOURCE picks."""
    config = _settings(run)
    if graph_script(run) == "fast.py" and config.get("PAIRS_FILE"):
        return f"pairs file {_short(str(config['PAIRS_FILE']))}"
    source = config.get("INTERP_SOURCE") or ("dataset" if config.get("DATASET") else "prompt")
    if graph_script(run) in ("pipe.py", "val.py") and source == "dataset" and config.get("DATASET"):
        return f"dataset {_short(str(config['DATASET']))}"
    return f"prompt {truncate(str(run.get('prompt')), _PROMPT_CHARS)!r}"


def selection_text(run: dict[str, Any]) -> str:
    """How the run chose its nodes, in a few words (the full sentence is its ``nodes`` meaning)."""
    config, script = _settings(run), graph_script(run)
    if script == "pipe.py":
        exp = config.get("THRESHOLD_EXP", 5.0)
        kept = "every non-zero edge" if exp is None else f"edges |effect| > 2**{exp}"
        return kept + (", from the pinned feature" if config.get("DIMS_PINNED") else "")
    if script == "trace.py":
        nodes, edges = config.get("TRACE_NODE_THRESHOLD", 0.8), config.get("TRACE_EDGE_THRESHOLD", 0.98)
        return f"pruned to {nodes} / {edges} of the influence (nodes / edges)"
    if script != "fast.py":
        return "nodes as imported"
    if config.get("down_node_selection") == "thresholds":
        percentile = config.get("THRESHOLD_PERCENTILE", 99.99)
        return f"down-nodes above hist.py's {percentile}th-percentile thresholds"
    if config.get("SELECTION") == "threshold":
        return f"down-nodes |attribution| > {config.get('NODE_THRESHOLD', 0.1)}"
    return f"top {config.get('NUM_DOWN_NODES', 5)} down-nodes per site"


def run_label(run: dict[str, Any]) -> str:
    """One run in a line, distinct for distinct runs: id, script, text, node choice."""
    parts = [f"run {run.get('id')}" if run.get("id") else "run", graph_script(run) or "graph"]
    return ", ".join([*parts, text_shown(run), selection_text(run)])


def _counted(items: Iterable[str], most: int = 2) -> str:
    """'a (3 runs), b (1 run)', the `most` commonest, then how many others."""
    counts = Counter(items).most_common()
    shown = [f"{item} ({n} run{'s' if n > 1 else ''})" for item, n in counts[:most]]
    rest = len(counts) - most
    return "; ".join(shown) + (f"; {rest} more in the .json" if rest > 0 else "")


def caption_lines(metadata: dict[str, Any]) -> list[str]:
    """The caption: what the graph shows and how its nodes were chosen; a line or two per topic.

    One run: script and text, its node choice, its own summary. Several runs:
    how many of which script, their texts and node choices counted, how
    values are combined, and the latest run's summary.
    """
    runs = runs_of(metadata)
    latest = runs[-1]
    if len(runs) == 1:
        lines = [f"{graph_script(latest) or 'graph'}, {text_shown(latest)}", meaning(latest).get("nodes")]
        return [line for line in (*lines, latest.get("summary")) if line]
    scripts = Counter(graph_script(run) or "graph" for run in runs)
    lines = [
        f"{len(runs)} runs merged ({', '.join(f'{s} x{n}' for s, n in scripts.items())}): "
        + _counted(text_shown(run) for run in runs),
        "nodes: " + _counted(selection_text(run) for run in runs),
        "a value measured by several runs is drawn at their mean"
        + (f"; latest run: {latest['summary']}" if latest.get("summary") else ""),
    ]
    signs = {tuple(sorted((k, v) for k, v in meaning(run).items() if k != "nodes")) for run in runs}
    if len(signs) > 1:
        lines.append("runs measured different quantities (METRIC, BASELINE...); the legend is the latest's")
    return lines
