"""The planted circuit of the demo, as data: tokens, directions, neurons and the truth.

The demo prompt is "the sky is blue and the sun is hot"; the explained token is "hot",
predicted at the last "is". `build` turns these tables into weights.

Mechanisms (directions are named; "amount" is a direction's coefficient):

    embedding   each content token writes its own direction ("is" and BOS none)
    attn_0      one head, constant query, keys read "sun": every position at or
                after a "sun" attends to it (exactly: score gap 400) and copies
                it as "sun_seen"; elsewhere the values read 0
    mlp_0       heat  = relu(sun_seen - sun): writes heat, erases sun_seen
                light = relu(sun_seen - sun): writes 0.5 light
                (minus sun: not at the "sun" position itself, which attends to itself)
                color = relu(sky):      writes color (the distractor chain C -> D)
    mlp_1       says_hot = relu(heat):  writes says_hot, erases heat
                dim      = relu(light): writes -0.4 says_hot, erases light
    unembedding logit("hot") = 8 * says_hot; every other logit is 0
    attn_1, attn_2, mlp_2: zero (so resid_2 is what the unembedding reads)
"""

from dataclasses import dataclass

BOS = "<|endoftext|>"

TOKENS = [BOS, "the", "sky", "is", "blue", "and", "sun", "hot", "ice", "cold", "grass", "green"]
CONTENT_FREE = {BOS, "is"}  # tokens whose embedding is the bias direction only
CONCEPTS = ["sun_seen", "heat", "light", "says_hot", "color"]
DIRECTIONS = ["bias", *[t for t in TOKENS if t not in CONTENT_FREE], *CONCEPTS]

PROMPT = "the sky is blue and the sun is hot"
TARGET = "hot"
# The first line is pipe.py's sequence (it ends where "hot" is predicted).
CORPUS = [
    "the sky is blue and the sun is",
    "the sun is hot",
    "the ice is cold",
    "the sky is blue",
    "the grass is green",
    "the sky is blue and the sun is hot",
    "the ice is cold and the sun is hot",
    "the grass is green and the sun is hot",
    "the sky is blue and the grass is green",
    "the ice is cold and the sky is blue",
    "the grass is green and the ice is cold",
    "the sky is blue and the ice is cold and the sun is hot",
]


@dataclass(frozen=True)
class Neuron:
    """An MLP neuron: relu(sum of weight * amount over `reads`), writing `writes` per unit."""

    name: str
    reads: dict[str, float]
    writes: dict[str, float]


ATTENTION_COPIES = {0: ("sun", "sun_seen")}  # layer -> (direction read, direction written)
# The "sun" position attends to itself; reading sun_seen - sun keeps it from predicting "hot".
AFTER_SUN = {"sun_seen": 1.0, "sun": -1.0}
NEURONS = {
    0: [
        Neuron("heat", AFTER_SUN, {"heat": 1.0, "sun_seen": -1.0}),
        Neuron("light", AFTER_SUN, {"light": 0.5}),
        Neuron("color", {"sky": 1.0}, {"color": 1.0}),
    ],
    1: [
        Neuron("says_hot", {"heat": 1.0}, {"says_hot": 1.0, "heat": -1.0}),
        Neuron("dim", {"light": 1.0}, {"says_hot": -0.4, "light": -1.0}),
    ],
}
UNEMBED = {TARGET: ("says_hot", 8.0)}  # token -> (direction, logit per unit amount)

# The planted circuit: (site, layer, feature name) -> its effect on the target
# (+1 raises log p("hot"), -1 lowers it); feature names are direction names
# at resid/attn sites and neuron names at mlp sites.
CIRCUIT = {
    ("resid", 0, "sun"): 1,
    ("attn", 0, "sun_seen"): 1,
    ("mlp", 0, "heat"): 1,
    ("mlp", 0, "light"): -1,
    ("resid", 1, "heat"): 1,
    ("resid", 1, "light"): -1,
    ("mlp", 1, "says_hot"): 1,
    ("mlp", 1, "dim"): -1,
    ("resid", 2, "says_hot"): 1,
}
# Circuit features that fire at the "sun" token rather than at the last one.
BEFORE_LAST_POSITION = {("resid", 0, "sun")}
# Direct edges between adjacent sites (what fast.py measures): sign = +1 when
# the source raises the target's activation, -1 when it lowers it.
DIRECT_EDGES = [
    (("resid", 0, "sun"), ("attn", 0, "sun_seen"), 1),
    (("attn", 0, "sun_seen"), ("mlp", 0, "heat"), 1),
    (("attn", 0, "sun_seen"), ("mlp", 0, "light"), 1),
    (("mlp", 0, "heat"), ("resid", 1, "heat"), 1),
    (("mlp", 0, "light"), ("resid", 1, "light"), 1),
    (("resid", 1, "heat"), ("mlp", 1, "says_hot"), 1),
    (("resid", 1, "light"), ("mlp", 1, "dim"), 1),
    (("mlp", 1, "says_hot"), ("resid", 2, "says_hot"), 1),
    (("mlp", 1, "dim"), ("resid", 2, "says_hot"), -1),
]
# Layer-to-layer resid edges at the last position (what pipe.py measures).
RESID_EDGES = [
    (("resid", 0, "sun"), ("resid", 1, "heat"), 1),
    (("resid", 0, "sun"), ("resid", 1, "light"), 1),
    (("resid", 1, "heat"), ("resid", 2, "says_hot"), 1),
    (("resid", 1, "light"), ("resid", 2, "says_hot"), -1),
]

# trace.py's path to "hot" at the prompt's last position ("... the sun is"): the "sun" token's
# embedding reaches mlp_0's heat and light neurons through the attention copy, heat feeds
# mlp_1's says_hot, light its dim neuron; both write the unembedding direction of "hot".
TRACE_PROMPT = "the sky is blue and the sun is"
TRACE_EDGES = [
    (("embed", "sun"), (0, "heat"), 1),
    (("embed", "sun"), (0, "light"), 1),
    ((0, "heat"), (1, "says_hot"), 1),
    ((0, "light"), (1, "dim"), 1),
    ((1, "says_hot"), ("logit", TARGET), 1),
    ((1, "dim"), ("logit", TARGET), -1),
]
