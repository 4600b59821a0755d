"""What each script's numbers and colours mean: one sentence per quantity, as data.

One meaning everywhere: blue (positive) = the node pushes what is
downstream of it up, red (negative) = down, opacity = magnitude. Each
graph's metadata records its script's sentences as ``sign_convention``,
val.py's report records its own, and the images' legend is drawn from the
same sentences, so a graph pasted into a paper says what it means.
"""

COLOURS = (
    "blue = positive (the upstream node pushes the downstream quantity up), red = negative; "
    "opacity = magnitude relative to the largest feature edge shown"
)

SIGN_CONVENTIONS: dict[str, dict[str, str]] = {
    "pipe.py": {
        "edge": (
            "effect of u -> d = act_d(clean) - act_d(u zero-ablated) at the last position, mean over "
            "sequences (u ablated at every position, SAE error terms kept): positive = u raises d"
        ),
        "logit cells": (
            "log p(token | clean) - log p(token | feature zero-ablated) after the last token: "
            "blue = the feature up-weights the token, red = it down-weights it"
        ),
        "node activation": "the feature's largest activation over the interpreted positions",
        "colour": COLOURS,
    },
    "fast.py": {
        "node attribution": (
            "grad_a m . (0 - a), m = cross-entropy of the prompt's last token (first-order effect of "
            "removing the node on the loss): positive = the node supports the answer (removing it would "
            "raise the loss)"
        ),
        "edge": (
            "attribution of u through d alone (residual stream only, other sites held fixed): "
            "positive = u supports the answer through d"
        ),
        "logit cells": (
            "W_dec[feature] . W_U (direct effect on the logits, final layer norm ignored): "
            "blue = the feature promotes the token, red = it suppresses it"
        ),
        "node activation": "the feature's largest activation over the prompt's positions",
        "colour": COLOURS,
    },
    "trace.py": {
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
            "influence-weighted mean over nodes of the share of a node's input that comes from "
            "no error node"
        ),
        "logit cells": (
            "W_dec[feature] @ W_U (a cross-layer feature's decoders summed over the layers it writes; "
            "final layer norm ignored): blue = the feature promotes the token, red = it suppresses it"
        ),
        "colour": COLOURS,
    },
    "val.py": {
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
    },
}


def sign_convention(script: str) -> dict[str, str]:
    """The sentences of `script` ("pipe.py", "fast.py", "trace.py", "val.py"), a copy for metadata."""
    return dict(SIGN_CONVENTIONS[script])
