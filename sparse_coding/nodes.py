"""Node ids and the forward order of SAE sites.

A *site* is where an SAE reads and is spliced: ``resid``, ``attn`` or ``mlp``. The ids
(``resid_3.331``, ``mlp_error_7``, site key ``attn_4``, positioned ``resid_9.331@7`` with BOS = 0,
and trace.py's ``tc_3.12@5``, ``clt_3.12@5``, ``embed@0``, ``logit_262``) are fixed by
docs/design.md ("Node ids") and used everywhere: .dot, JSON, config, printed output.
"""

import functools
import re
from typing import NamedTuple

SITES: tuple[str, ...] = ("resid", "attn", "mlp")
# Feature kinds of transcoder graphs: per-layer transcoders and cross-layer transcoders.
TRANSCODER_KINDS: tuple[str, ...] = ("tc", "clt")

# Position of each hook inside a transformer block, in forward order.
HOOK_ORDER: dict[str, int] = {
    "hook_resid_pre": 0,
    "hook_attn_out": 1,
    "hook_resid_mid": 2,
    "hook_mlp_out": 3,
    "hook_resid_post": 4,
}

_FEATURE_RE = re.compile(r"^(resid|attn|mlp|tc|clt)_(\d+)\.(\d+)(?:@(\d+))?$")
_ERROR_RE = re.compile(r"^(resid|attn|mlp)_error_(\d+)(?:@(\d+))?$")
_EMBED_RE = re.compile(r"^embed@(\d+)$")
_LOGIT_RE = re.compile(r"^logit_(\d+)$")
_SITE_KEY_RE = re.compile(r"^(resid|attn|mlp)_(\d+)$")


class NodeId(NamedTuple):
    """A parsed node id; ``feature`` is None for an error node."""

    site: str
    layer: int
    feature: int | None

    def __str__(self) -> str:
        if self.feature is None:
            return error_id(self.site, self.layer)
        return feature_id(self.site, self.layer, self.feature)


def feature_id(site: str, layer: int, feature: int) -> str:
    """Id of one SAE feature, e.g. ``resid_3.331``."""
    return f"{site}_{layer}.{feature}"


def error_id(site: str, layer: int) -> str:
    """Id of a site's SAE error term, e.g. ``mlp_error_7``."""
    return f"{site}_error_{layer}"


def site_key(site: str, layer: int) -> str:
    """Key of one spliced site, e.g. ``attn_4``."""
    return f"{site}_{layer}"


def embed_id(position: int) -> str:
    """Id of the token embedding at `position`, e.g. ``embed@0``."""
    return f"embed@{position}"


def logit_id(token_id: int) -> str:
    """Id of the output logit of a token (at the last position), e.g. ``logit_262``."""
    return f"logit_{token_id}"


def parse_node_id(node_id: str) -> NodeId:
    """Parse a feature or error id (an ``@{position}`` suffix is accepted and dropped; see
    `parse_positioned_id`); raises ValueError naming the accepted forms."""
    if match := _FEATURE_RE.fullmatch(node_id):
        return NodeId(match[1], int(match[2]), int(match[3]))
    if match := _ERROR_RE.fullmatch(node_id):
        return NodeId(match[1], int(match[2]), None)
    raise ValueError(
        f"{node_id!r} is not a node id; expected '{{site}}_{{layer}}.{{index}}' "
        f"(e.g. 'resid_3.331') or '{{site}}_error_{{layer}}' (e.g. 'mlp_error_7'), "
        f"site one of {SITES + TRANSCODER_KINDS}, optionally '@{{position}}' (e.g. 'tc_3.12@5')"
    )


def node_kind(node_id: str) -> str:
    """The kind of any node id, trace.py's included: "feature" or "error" (summed or ``@{position}``),
    "embed" (``embed@{pos}``) or "logit" (``logit_{token id}``); ValueError naming the accepted forms."""
    if _EMBED_RE.fullmatch(node_id):
        return "embed"
    if _LOGIT_RE.fullmatch(node_id):
        return "logit"
    try:
        return "error" if parse_node_id(node_id).feature is None else "feature"
    except ValueError as e:
        raise ValueError(f"{e}; or 'embed@{{position}}', or 'logit_{{token id}}'") from None


def parse_site_key(key: int | str) -> tuple[str, int]:
    """Parse a pinned-dims key: an int layer means the resid site, else ``attn_7``."""
    if isinstance(key, bool):
        raise ValueError(f"{key!r} is not a layer or site key")
    if isinstance(key, int) and key >= 0:
        return "resid", key
    text = str(key).strip()
    if text.isdigit():
        return "resid", int(text)
    if match := _SITE_KEY_RE.match(text):
        return match[1], int(match[2])
    raise ValueError(
        f"{key!r} is not a layer or site key; expected an int layer (resid site) "
        f"or '{{site}}_{{layer}}' with site one of {SITES}, e.g. 'attn_7'"
    )


@functools.lru_cache(maxsize=4096)
def hook_position(hook_name: str) -> tuple[int, int]:
    """(layer, order within the block) of a TransformerLens hook name.

    ``blocks.3.hook_resid_pre`` -> (3, 0). Sorting sites by this gives the
    forward order in which the model computes them.
    """
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook_name)
    if not match or match[2] not in HOOK_ORDER:
        raise ValueError(
            f"{hook_name!r} is not a supported hook; expected 'blocks.{{layer}}.HOOK' "
            f"with HOOK one of {sorted(HOOK_ORDER)}"
        )
    return int(match[1]), HOOK_ORDER[match[2]]


_POSITION_RE = re.compile(r"^(.+)@(\d+)$")


def with_position(node_id: str, position: int | None) -> str:
    """``node_id`` at token `position` (``resid_9.331@7``); unchanged for None (a summed node)."""
    return node_id if position is None else f"{node_id}@{position}"


def split_position(node_id: str) -> tuple[str, int | None]:
    """(id without its ``@position``, the position or None): ``resid_9.331@7`` -> (``resid_9.331``, 7)."""
    if match := _POSITION_RE.fullmatch(node_id):
        return match[1], int(match[2])
    return node_id, None


def parse_positioned_id(node_id: str) -> tuple[NodeId, int | None]:
    """A feature or error id with an optional ``@position``; ValueError as `parse_node_id`."""
    base, position = split_position(node_id)
    return parse_node_id(base), position
