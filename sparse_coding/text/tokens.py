"""How one token id is shown as text, so that every token is distinguishable.

GPT-2's byte-level BPE splits a multi-byte character (``—`` is E2 80 94)
across tokens; decoding such a token alone gives U+FFFD, so dozens of
different tokens would all be drawn as ``�``. `token_text` shows the bytes
that are not a whole character as ``<0xE2>`` instead, as SentencePiece and
Neuronpedia do. (Control and invisible characters are escaped where text is
drawn, by `sparse_coding.graphs.markup.visible_text`.)
"""

from sparse_coding.text.tokenizer import Tokenizer


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (its `bytes_to_unicode`), inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return {char: b for b, char in chars.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The token's text; bytes of a split multi-byte character as ``<0xE2>``."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str) or not all(char in _BYTE_OF_CHAR for char in piece):
        return text  # not a byte-level token: its U+FFFD is real
    raw = bytes(_BYTE_OF_CHAR[char] for char in piece).decode("utf-8", errors="surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in raw)
