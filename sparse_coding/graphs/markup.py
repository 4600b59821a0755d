"""Graphviz HTML-like node labels, and escaping that lets any token show as itself.

Graphviz parses HTML-like labels with an XML parser, and SVG output is XML, so
every token must become well-formed XML text that still looks like the token:

- ``& < > " '`` become character references, and a backslash is doubled:
  Graphviz replaces ``\\N``, ``\\G`` and ``\\L`` in labels (the node id,
  the graph name) even in HTML-like labels, so a token ``\\N`` would
  otherwise be drawn as the node's id;
- control characters (newline, tab, NUL, DEL, C1), which XML 1.0 forbids or
  fonts draw as nothing, are drawn as their code in ASCII (``<0x0A>``), the
  notation `sparse_coding.text.tokens` uses for bytes of split characters;
  invisible format characters (bidi controls such as U+202E, zero-width
  spaces, soft hyphens) and code points XML forbids (lone surrogates,
  U+FFFE/F) are drawn as ``<U+202E>``, so none can hide or reorder text;
- spaces become no-break spaces so leading/trailing spaces of GPT-2 tokens
  (" the") stay visible in a cell instead of being trimmed;
- GPT-2 byte-level tokens (``Ġ``, ``Ċ``) and emoji pass through unchanged.

Labels are strings ``<...>``, written into a ``label=`` attribute as they are.
"""

from __future__ import annotations

import functools
import math
import textwrap
import unicodedata
from collections.abc import Sequence

from sparse_coding.graphs.graph import Context, Node

# Cell colours: blue for raising/activating, red for lowering.
_BLUE = (33, 102, 172)
_RED = (178, 24, 43)
_WHITE = (255, 255, 255)
_MAX_EXPLANATION_CHARS = 160
# Compact labels (big graphs) keep a window of the top context and a few logits.
_COMPACT_CONTEXT_RADIUS = 4
_COMPACT_LOGITS = 5
_COMPACT_EXPLANATION_CHARS = 60

_XML_REFS = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#39;",
    "\u00a0": "&#160;",
    # Graphviz's HTML lexer rejects some texts made of brackets alone (e.g. "]").
    "[": "&#91;",
    "]": "&#93;",
    "\\": "\\\\",  # Graphviz's escString: \\N would be drawn as the node id
}
_XML_TABLE = str.maketrans(_XML_REFS)
_INVISIBLE = {"Cf", "Zl", "Zp"}  # Unicode categories drawn as escapes: format characters, separators


def _visible_char(char: str) -> str:
    """How one character appears in a label (before XML escaping)."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"<0x{code:02X}>"
    if 0xD800 <= code < 0xE000 or code in (0xFFFE, 0xFFFF) or unicodedata.category(char) in _INVISIBLE:
        return f"<U+{code:04X}>"
    return char


def visible_text(text: str) -> str:
    """Text as drawn: controls as ``<0x0A>``, invisible characters as ``<U+202E>``, spaces as no-break."""
    if not text.isprintable():  # printable text (most) has none of the characters `_visible_char` changes
        text = "".join(_visible_char(char) for char in text)
    return text.replace(" ", "\u00a0")


@functools.lru_cache(maxsize=1 << 16)
def escape_text(text: str) -> str:
    """Escape arbitrary text for an HTML-like label so that it renders as itself (tokens repeat: cached)."""
    return visible_text(text).translate(_XML_TABLE)


def _mix(colour: tuple[int, int, int], strength: float) -> str:
    """Hex colour between white (strength 0) and ``colour`` (strength 1)."""
    s = min(max(strength, 0.0), 1.0)
    r, g, b = (round(w + (c - w) * s) for c, w in zip(colour, _WHITE, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _cell(text: str, bgcolor: str, strength: float, title: str | None = None) -> str:
    """One table cell; dark backgrounds get white text so tokens stay legible."""
    font = '<FONT COLOR="white">{}</FONT>' if strength > 0.6 else "{}"
    # Graphviz writes a cell's TITLE into the SVG only for a link; an empty HREF makes a bare tooltip.
    tooltip = f' TITLE="{escape_text(title)}" HREF=""' if title is not None else ""
    return f'<TD BGCOLOR="{bgcolor}"{tooltip}>{font.format(escape_text(text) or " ")}</TD>'


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _header_rows(node: Node) -> list[str]:
    """The id in bold, then hook and the numbers that placed the node here."""
    rows = [f"<TR><TD><B>{escape_text(node.id)}</B></TD></TR>"]
    numbers = {"act": node.activation, "attr": node.attribution}
    facts = [node.hook] if node.hook else []
    facts += [f"{name} {_fmt(value)}" for name, value in numbers.items() if value is not None]
    if facts:
        rows.append(f'<TR><TD><FONT POINT-SIZE="9">{escape_text("  ".join(facts))}</FONT></TD></TR>')
    return rows


def _context_row(context: Context, scale: float) -> str:
    """One context as a strip of token cells shaded blue by activation."""
    cells = []
    for token, act in zip(context.tokens, context.activations, strict=True):
        strength = act / scale if scale > 0 else 0.0
        cells.append(_cell(token, _mix(_BLUE, strength), strength, title=_fmt(act)))
    table = '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
    return f"<TR><TD>{table}<TR>{''.join(cells)}</TR></TABLE></TD></TR>"


def shown_logits(cells: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The logit cells worth drawing: a value of exactly 0 says nothing about its token."""
    return [(token, value) for token, value in cells if value != 0]


def _logit_row(label: str, logits: Sequence[tuple[str, float]], scale: float) -> str:
    """Next tokens as cells: blue when raised, red when lowered."""
    cells = [f'<TD><FONT POINT-SIZE="9">{label}</FONT></TD>']
    for token, value in logits:
        strength = abs(value) / scale if scale > 0 else 0.0
        cells.append(_cell(token, _mix(_BLUE if value > 0 else _RED, strength), strength, title=_fmt(value)))
    table = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="1">'
    return f"<TR><TD>{table}<TR>{''.join(cells)}</TR></TABLE></TD></TR>"


def truncate(text: str, n_chars: int) -> str:
    """`text`, cut to `n_chars` characters with "…" when longer."""
    return text if len(text) <= n_chars else text[: n_chars - 1] + "…"


def unique_contexts(contexts: Sequence[Context]) -> list[Context]:
    """Contexts with repeated token rows dropped (the first is kept), order kept."""
    first: dict[tuple[str, ...], Context] = {}
    for context in contexts:
        if context.tokens:
            first.setdefault(tuple(context.tokens), context)
    return list(first.values())


def _around_peak(context: Context, radius: int) -> Context:
    """The tokens within ``radius`` of the context's most activating token."""
    peak = max(range(len(context.activations)), key=context.activations.__getitem__)
    lo, hi = max(0, peak - radius), peak + radius + 1
    return Context(context.tokens[lo:hi], context.activations[lo:hi])


def _label(node: Node, contexts: Sequence[Context], max_logits: int | None, explanation_chars: int) -> str:
    """The box (dotted for an error node): header, context strips, + / − logit rows, explanation."""
    rows = _header_rows(node)
    scale = max((a for c in contexts for a in c.activations), default=0.0)
    rows += [_context_row(c, scale) for c in contexts]
    up, down = (shown_logits(cells)[:max_logits] for cells in (node.logits_up, node.logits_down))
    logit_scale = max((abs(v) for _, v in (*up, *down)), default=0.0)
    rows += [_logit_row(sign, cells, logit_scale) for sign, cells in (("+", up), ("−", down)) if cells]
    if node.explanation:
        rows.append(f"<TR><TD><I>{escape_text(truncate(node.explanation, explanation_chars))}</I></TD></TR>")
    style = ' STYLE="DOTTED"' if node.is_error else ""
    return f'<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0"{style}>{"".join(rows)}</TABLE>>'


def node_label(node: Node, *, max_contexts: int | None = None, max_logits: int | None = None) -> str:
    """Full label: id, hook, at most `max_contexts` distinct contexts (TOP_K; None: all), at most
    `max_logits` up- and down-weighted tokens (LOGIT_TOKENS), explanation."""
    contexts = unique_contexts(node.contexts)[:max_contexts]
    return _label(node, contexts, max_logits, _MAX_EXPLANATION_CHARS)


def compact_label(node: Node) -> str:
    """Small label for big graphs: id, numbers, the top context around its peak, a few logits."""
    contexts = [_around_peak(c, _COMPACT_CONTEXT_RADIUS) for c in unique_contexts(node.contexts)[:1]]
    return _label(node, contexts, _COMPACT_LOGITS, _COMPACT_EXPLANATION_CHARS)


def top_left(label: str, size: tuple[float, float]) -> str:
    """`label` at the top left of a box of `size` points (at least its own size, `label_size`)."""
    width, height = (math.ceil(length) for length in size)
    box = (
        f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0" WIDTH="{width}" HEIGHT="{height}"'
    )
    return f'<{box} FIXEDSIZE="TRUE"><TR><TD ALIGN="LEFT" VALIGN="TOP">{label[1:-1]}</TD></TR></TABLE>>'


def _wrapped(text: str, width: int) -> str:
    """Text wrapped at `width` characters, lines joined by ``<BR/>``."""
    lines = textwrap.wrap(text, width, break_on_hyphens=False) or [""]
    return "<BR/>".join(escape_text(line) for line in lines)


def legend_label(
    caption: Sequence[str], notes: Sequence[str], legend: Sequence[tuple[str, str]], width: int
) -> str:
    """The caption (first line bold), its notes, then the legend as symbol / meaning rows.

    Args:
        width: characters per line; every line of the block is wrapped to it
            (the meanings to `width` minus the symbol column).
    """
    rows = []
    for i, line in enumerate([*caption, *notes]):
        text = _wrapped(line, width)
        size, text = (11, f"<B>{text}</B>") if i == 0 else (10, text)
        cell = f'<TD COLSPAN="2" ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="{size}">{text}</FONT></TD>'
        rows.append(f"<TR>{cell}</TR>")
    symbol_chars = max((len(symbol) for symbol, _ in legend), default=0)
    for symbol, meaning in legend:
        rows.append(
            f'<TR><TD ALIGN="RIGHT" VALIGN="TOP"><FONT POINT-SIZE="9"><B>{escape_text(symbol)}</B></FONT>'
            f'</TD><TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="9">'
            f"{_wrapped(meaning, max(20, width - symbol_chars))}</FONT></TD></TR>"
        )
    return f'<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">{"".join(rows)}</TABLE>>'
