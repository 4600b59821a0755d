"""The legend and caption drawn with every graph, in the image and the HTML viewer.

A PNG pasted into a paper must explain itself: what an arrow, its colour and
opacity, a box's rows and a dotted box mean, for the script that made the
graph, and which script, prompt (or dataset), threshold and runs it shows.
The sign sentences come from ``conventions.SIGN_CONVENTIONS`` so the wording
lives in one place.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sparse_coding.graphs.conventions import SIGN_CONVENTIONS

_GENERIC_EDGE = "edge u -> d: positive (blue): u pushes d up, negative (red): u pushes d down"


class LegendEntry(NamedTuple):
    """One legend row: the thing drawn and what it means."""

    symbol: str
    meaning: str


def latest_run(metadata: dict[str, Any]) -> dict[str, Any]:
    """The record of the graph's latest run (`graph_files` keeps them in ``runs``); else the metadata."""
    runs = metadata.get("runs")
    return runs[-1] if isinstance(runs, list) and runs and isinstance(runs[-1], dict) else metadata


def graph_script(metadata: dict[str, Any]) -> str | None:
    """The script that made the graph (latest run), e.g. ``"pipe.py"``."""
    script = metadata.get("script") or latest_run(metadata).get("script")
    return str(script) if script else None


def legend_entries(script: str | None) -> list[LegendEntry]:
    """What each mark means for graphs made by ``script`` (generic when unknown)."""
    signs = SIGN_CONVENTIONS.get(script or "", {})
    entries = [
        LegendEntry("arrow", signs.get("edge", _GENERIC_EDGE)),
        LegendEntry("colour", signs.get("colour", "blue = positive, red = negative")),
        LegendEntry(
            "opacity, width",
            "|effect| relative to the largest feature edge (error-node edges are capped at full colour)",
        ),
        LegendEntry(
            "box",
            "a feature, site_layer.index; rows: hook and numbers, top-activating contexts "
            "(tokens shaded blue by activation), + / − next-token cells, Neuronpedia explanation",
        ),
    ]
    entries += [
        LegendEntry(key.removeprefix("node "), signs[key])
        for key in ("node activation", "node attribution")
        if key in signs
    ]
    if "logit cells" in signs:
        entries.append(LegendEntry("+ / − cells", signs["logit cells"]))
    entries.append(LegendEntry("dotted box", "SAE error node: what the SAE misses at that site"))
    return entries


def _threshold_text(script: str | None, config: dict[str, Any]) -> str | None:
    """How the graph was thresholded, in the config's own terms."""
    if script == "pipe.py":
        exp = config.get("THRESHOLD_EXP")
        return "every non-zero effect" if exp is None else f"|effect| > 2**{exp} = {2.0 ** float(exp):.3g}"
    if script == "fast.py":
        return (
            f"{config.get('NUM_DOWN_NODES')} down-nodes per site, each with its "
            f"{config.get('NUM_UP_NODES')} most positive and most negative edges per upstream site"
        )
    return None


def run_count(metadata: dict[str, Any]) -> int:
    """How many runs the graph merges (a never-merged graph is one run)."""
    runs = metadata.get("runs")
    return len(runs) if isinstance(runs, list) and runs else 1


def run_text(run: dict[str, Any]) -> str:
    """One run's script, prompt (or dataset) and threshold, from its metadata."""
    script = graph_script(run)
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    parts = [script or "graph"]
    parts.append(_text_shown(script, run, config))
    if (threshold := _threshold_text(script, config)) is not None:
        parts.append(f"threshold: {threshold}")
    return "; ".join(parts)


def _text_shown(script: str | None, run: dict[str, Any], config: dict[str, Any]) -> str:
    """What the run explained: fast.py its examples, trace.py its prompt, pipe.py and val.py the text
    INTERP_SOURCE picks."""
    if script == "trace.py":
        return f"prompt {str(run.get('prompt'))!r}"
    if script == "fast.py":
        if config.get("PAIRS_FILE"):
            return f"pairs file {config['PAIRS_FILE']}"
        return f"prompt {str(run.get('prompt'))!r}"
    source = config.get("INTERP_SOURCE") or ("dataset" if config.get("DATASET") else "prompt")
    if source == "dataset" and config.get("DATASET"):
        return f"dataset {config['DATASET']}"
    return f"prompt {str(run.get('prompt'))!r}"


def caption_text(metadata: dict[str, Any]) -> str:
    """One line naming the latest run's script, prompt or dataset, threshold, and the number of runs."""
    runs = run_count(metadata)
    return f"{run_text(latest_run(metadata))}; {runs} run" + ("" if runs == 1 else "s")
