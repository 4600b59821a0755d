"""What a graph's signs mean, one sentence per quantity and script (issue 16).

One meaning for colour everywhere: blue = the upstream node pushes what is
downstream of it *up*, red = *down*, opacity = magnitude. The sentences below
are the single source of that wording: graph metadata (``sign_convention``),
the image legend and the HTML viewer all read them from here.
"""

from __future__ import annotations

SIGN_CONVENTIONS: dict[str, dict[str, str]] = {
    "pipe.py": {
        "edge": (
            "edge u -> d: act_d(clean) - act_d(u ablated) at the last position; "
            "positive (blue): u raises d, negative (red): u lowers d"
        ),
        "logits": (
            "logit cell: log p(clean) - log p(u ablated) of the next token; "
            "blue: the feature up-weights the token, red: it down-weights it"
        ),
        "activation": "act: the feature's activation at the last position of the clean run",
    },
    "fast.py": {
        "edge": (
            "edge u -> d: attribution of u to the loss through d; positive (blue): "
            "u supports the answer through d, negative (red): u works against it"
        ),
        "attribution": (
            "attr: positive means the node supports the answer (removing it would raise the loss)"
        ),
        "logits": "logit cell: W_dec · W_U; blue: the feature promotes the token, red: it suppresses it",
        "activation": "act: the feature's activation at the prompt's last token",
    },
    "val.py": {
        "change": (
            "change: log p(circuit ablated) - log p(clean) of a next token; "
            "positive: ablating the circuit raises the token, negative: lowers it"
        ),
    },
}
