"""What a graph's or report's numbers and colours mean: the one source of those sentences.

`sentences(script, settings)` words them for the script and the config values
that shaped the result. A run records them as ``sign_convention``, and the
image and viewer legends are drawn from that record, so a picture pasted into
a paper says what its graph's file says.

One sign rule underlies them: positive (blue) means the upstream node pushes
what is downstream of it up; for fast.py, what is downstream is the answer
(positive = supports it), for pipe.py the downstream feature's activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METRIC_TEXT = {
    "cross_entropy": "m = cross-entropy of the answer, -log p(answer)",
    "logprob": "m = -log p(answer), as cross-entropy (METRIC logprob reports log p)",
    "logit_diff": "m = logit difference, logit(patch answer) - logit(answer)",
}
BASELINE_TEXT = {
    "zero": "zero",
    "patch": "its value on the patch prompt",
    "mean": "its mean activation over DATASET",
}
_OPACITY = "opacity and width = |value| relative to the largest feature edge drawn"


def sentences(script: str, settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Quantity -> sentence (``{"edge": ..., "colour": ...}``): what each quantity of `script`'s result
    means, given the config values that shaped it.

    Args:
        script: "pipe.py", "fast.py", "trace.py", "val.py" or "steer.py".
        settings: config keys as a run records them (``config.to_metadata()``);
            missing keys take their defaults. fast.py also reads
            ``down_node_selection`` ("thresholds" when hist.py chose the down-nodes).
    """
    if script not in SCRIPTS:
        raise ValueError(f"no sentences for script {script!r}; known: {', '.join(SCRIPTS)}")
    return _BY_SCRIPT[script](settings or {})


def _fast(settings: Mapping[str, Any]) -> dict[str, str]:
    metric = str(settings.get("METRIC") or "cross_entropy")
    baseline = str(settings.get("BASELINE") or "zero")
    steps = int(settings.get("IG_STEPS") or 1)
    estimate = "first-order estimate" if steps == 1 else f"integrated-gradients estimate ({steps} steps)"
    each = settings.get("NODE_POSITIONS") == "each"
    positions = "one node per token position (id @position, BOS = 0)" if each else "summed over positions"
    return {
        "colour": f"blue = supports the answer through this path, red = works against it; {_OPACITY}",
        "edge": (
            "u's attribution through d alone (residual stream only, other SAE sites held fixed): "
            "positive = u supports the answer through d"
        ),
        "node attribution": (
            f"{estimate} of m(node at {BASELINE_TEXT.get(baseline, baseline)}) - m(clean), "
            f"{METRIC_TEXT.get(metric, metric)}; {positions}, mean over examples: "
            f"positive = the node supports the answer"
        ),
        "node activation": (
            "the feature's largest activation at the node's position (id @position, BOS = 0)"
            if each
            else "the feature's largest activation over the prompt's positions"
        ),
        "logit cells": (
            "direct logit effect of W_dec[feature], centred and times the final layer norm's gain, "
            "through W_U (its 1/std left out; tokens rank as on Neuronpedia): "
            "blue = the feature promotes the token, red = it suppresses it"
        ),
        "nodes": fast_selection(settings),
    }


def fast_selection(settings: Mapping[str, Any]) -> str:
    """How a fast.py run chose its down-nodes and edges, in the config's terms."""
    if settings.get("down_node_selection") == "thresholds":
        percentile = settings.get("THRESHOLD_PERCENTILE", 99.99)
        return (
            f"down-nodes: features above hist.py's {percentile}th-percentile thresholds at the last "
            f"position; edges: the {settings.get('NUM_UP_NODES', 5)} most positive and most negative "
            f"per upstream site"
        )
    if settings.get("SELECTION") == "threshold":
        return (
            f"Marks et al.: nodes (features and errors) with |attribution| > "
            f"{settings.get('NODE_THRESHOLD', 0.1)}; edges between two such nodes with |effect| > "
            f"{settings.get('EDGE_THRESHOLD', 0.01)}, read at the (example, position) entries whose own "
            f"|attribution| passes the node threshold"
        )
    return (
        f"down-nodes: the {settings.get('NUM_DOWN_NODES', 5)} largest |attribution| per site; edges: the "
        f"{settings.get('NUM_UP_NODES', 5)} most positive and most negative per upstream site"
    )


def _pipe(settings: Mapping[str, Any]) -> dict[str, str]:
    return {
        "colour": f"blue = the upstream feature raises the downstream one, red = lowers it; {_OPACITY}",
        "edge": (
            "act_d(clean) - act_d(u zero-ablated) at the last position, mean over sequences (u ablated at "
            "every position, SAE error terms kept): positive = u raises d"
        ),
        "node activation": "the feature's largest activation over the interpreted positions",
        "logit cells": (
            "log p(token | clean) - log p(token | feature zero-ablated) after the last token: "
            "blue = the feature up-weights the token, red = it down-weights it"
        ),
        "nodes": pipe_selection(settings),
    }


def pipe_selection(settings: Mapping[str, Any]) -> str:
    """How a pipe.py run chose its edges, in the config's terms."""
    exp = settings.get("THRESHOLD_EXP", 5.0)
    kept = "every non-zero effect" if exp is None else f"|effect| > 2**{exp} = {2.0 ** float(exp):.3g}"
    start = "the pinned feature" if settings.get("DIMS_PINNED") else "the first layer's active features"
    return f"edges: {kept}; ablated: {start}, then every feature an edge reached"


def _trace(settings: Mapping[str, Any]) -> dict[str, str]:
    return {
        "colour": f"blue = u raises d (for a logit: the logit), red = lowers it; {_OPACITY}",
        "edge": (
            "direct effect of u on d in the local replacement model (transcoders in place of the MLPs, "
            "with error nodes; attention patterns and layer-norm scales frozen at the prompt's run): "
            "u's value times the derivative of d's pre-activation (for a logit: the logit minus the mean "
            "logit) along paths through no other node: positive = u raises d"
        ),
        "node attribution": (
            "influence on the logits (circuit-tracer): the probability-weighted share of the logits' "
            "inputs that flows from the node along all paths, each edge counted as its share of its "
            "target's |inputs|; unsigned"
        ),
        "node activation": (
            "a feature's activation at its position; a logit's probability; an error node's norm"
        ),
        "replacement score": (
            "influence of the token embeddings / (that + influence of the error nodes): 1 = the "
            "tokens reach the logits through features only"
        ),
        "completeness score": (
            "influence-weighted mean over nodes of the share of a node's input that comes from no error node"
        ),
        "logit cells": (
            "decoder row (a cross-layer feature's decoders summed over the layers it writes), centred and "
            "times the final layer norm's gain, through W_U (tokens rank as on Neuronpedia): "
            "blue = the feature promotes the token, red = it suppresses it"
        ),
        "nodes": (
            f"pruned by influence: nodes carrying {settings.get('TRACE_NODE_THRESHOLD', 0.8)} and edges "
            f"carrying {settings.get('TRACE_EDGE_THRESHOLD', 0.98)} of the cumulative influence"
        ),
        "box": (
            "a transcoder feature tc_layer.index@position (clt_: cross-layer, read at that layer), a token "
            "embedding embed@position or a logit logit_tokenid; rows: id, numbers, top-activating contexts, "
            "+ / − next-token cells, Neuronpedia explanation"
        ),
        "error node": (
            "MLP error node mlp_error_layer@position: the MLP's output minus its transcoders' "
            "reconstruction at that position"
        ),
    }


def _val(settings: Mapping[str, Any]) -> dict[str, str]:
    errors = str(settings.get("VALIDATION_ERRORS") or "keep")
    transcoders = settings.get("spliced") == "transcoders"
    return {
        "ablation": (
            f"the circuit's features zeroed at every position, {'MLP' if transcoders else 'SAE'} error "
            f"terms kept"
        ),
        "baseline": "mean ablation (each feature set to its mean activation over the real tokens evaluated)",
        "errors": _VAL_TRANSCODER_ERRORS if transcoders else _VAL_ERRORS.get(errors, errors),
        "change": (
            "p(ablated) - p(clean) of the next token after the last token: 'increases' are tokens the "
            "ablation makes more likely (the circuit suppressed them), 'decreases' tokens it makes "
            "less likely (the circuit promoted them)"
        ),
        "faithfulness": (
            "(m(C) - m(empty)) / (m(M) - m(empty)), m = mean next-token cross-entropy: "
            "1 = the circuit alone recovers the model, 0 = no better than every feature mean-ablated"
        ),
        "completeness": (
            "(m(M \\ C) - m(empty)) / (m(M) - m(empty)): 0 = without the circuit the model is "
            "no better than every feature mean-ablated (the circuit is complete)"
        ),
    }


_VAL_TRANSCODER_ERRORS = (
    "transcoder circuit: each MLP's error term (its output minus its transcoders' reconstruction) kept "
    "in every run, so a transcoder feature is ablated by changing only its own decoded contribution"
)
_VAL_ERRORS = {
    "keep": "SAE error terms kept at every site in every run (VALIDATION_ERRORS: keep)",
    "ablate": (
        "SAE error terms mean-ablated like features (VALIDATION_ERRORS: ablate): in m(C) at every site "
        "whose error node is not in the circuit, in m(empty) at every site, in m(M\\C) at the circuit's "
        "error nodes"
    ),
}


def _steer(settings: Mapping[str, Any]) -> dict[str, str]:
    return {
        "intervention": (
            "set v: the feature's activation becomes v; scale c: it is multiplied by c; add v: "
            "v * W_dec[i] is added whether the feature fires or not (times the input's layer-norm std "
            "for SAEs with layer-normalised inputs, so v is in the feature's activation units); each "
            "changes the site by (new - old activation) * decoder row, the SAE error term kept; a "
            "transcoder feature changes every MLP output it writes (a cross-layer one: its layer's and "
            "every later one's), the MLP's error term kept"
        ),
        "change": (
            "p(steered) - p(clean) of a next token, both models reading the clean continuation: "
            "'rose' = more likely under the intervention, 'fell' = less likely"
        ),
        "kl": "KL(clean || steered) of the next-token distributions in nats, on the clean continuation",
        "activation": (
            "the SAE's own activation (as on Neuronpedia) on the clean continuation, without (clean) and "
            "with (steered) the intervention; an intervened feature's steered value is after its edit"
        ),
        "curve": (
            "x = the swept value (set: the activation, scale: the factor, add: v); y = each watched "
            "feature's activation at the prompt's last token and log p(answer) after it"
        ),
    }


_BY_SCRIPT = {"pipe.py": _pipe, "fast.py": _fast, "trace.py": _trace, "val.py": _val, "steer.py": _steer}
SCRIPTS = tuple(_BY_SCRIPT)
