"""A small reader for the DOT language.

It reads everything `graph_files` writes, plus ordinary hand-written DOT
(subgraphs, edge chains, ports, comments, "a" + "b"). pydot is not a
dependency and is slow on megabytes of HTML labels.
"""

from __future__ import annotations

import itertools
import re

from sparse_coding.graphs.elements import UserDrawing

_SCAN_RE = re.compile(
    r"""(?P<skip>\s+|//[^\n]*|/\*.*?\*/|(?m:^\#[^\n]*))
    |(?P<quoted>"(?:[^"\\]|\\.)*")
    |(?P<op>->|--|[{}\[\];,=:+])
    |(?P<bare>-?(?:\.\d+|\d+(?:\.\d*)?)|[A-Za-z_\u0080-\U0010ffff][\w\u0080-\U0010ffff]*)""",
    re.VERBOSE | re.DOTALL,
)
_ANGLE_RE = re.compile(r"[<>]")
_KEYWORDS = {"graph", "digraph", "subgraph", "node", "edge", "strict"}


def _unquote(body: str) -> str:
    """Inverse of ``render.quote``; backslash-newline is a line continuation."""

    def one(match: re.Match[str]) -> str:
        char = match[1]
        return "" if char == "\n" else char if char in '"\\' else match[0]

    return re.sub(r"\\(.)", one, body, flags=re.DOTALL)


def _html_end(text: str, start: int) -> int:
    """Index just past the ``>`` closing the HTML string opened at ``start``."""
    depth = 0
    for match in _ANGLE_RE.finditer(text, start):
        depth += 1 if match[0] == "<" else -1
        if depth == 0:
            return match.end()
    raise ValueError(f"unclosed HTML string at character {start}")


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) pairs; kind "id" (bare, quoted or HTML), "kw" or "op"."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "<":
            end = _html_end(text, pos)
            tokens.append(("id", text[pos:end]))
            pos = end
            continue
        match = _SCAN_RE.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected {text[pos : pos + 20]!r} at character {pos}")
        pos = match.end()
        if match["quoted"] is not None:
            value = _unquote(match["quoted"][1:-1])
            if len(tokens) >= 2 and tokens[-1] == ("op", "+") and tokens[-2][0] == "id":
                tokens.pop()
                value = tokens.pop()[1] + value  # "a" + "b" concatenation
            tokens.append(("id", value))
        elif match["op"]:
            tokens.append(("op", match["op"]))
        elif match["bare"]:
            word = match["bare"]
            tokens.append(("kw", word.lower()) if word.lower() in _KEYWORDS else ("id", word))
    return tokens


class _DotParser:
    """Recursive descent over the DOT grammar, recording into a UserDrawing."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.out = UserDrawing()

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token[0] != kind or (value is not None and token[1] != value):
            raise ValueError(
                f"expected {value or kind}, found {token[1] or 'end of file'!r} (token {self.pos})"
            )
        self.pos += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        if self.peek() == (kind, value):
            self.pos += 1
            return True
        return False

    def parse(self) -> UserDrawing:
        self.accept("kw", "strict")
        if not (self.accept("kw", "digraph") or self.accept("kw", "graph")):
            raise ValueError("a .dot file starts with 'digraph' or 'graph'")
        if self.peek()[0] == "id":
            self.pos += 1
        self.take("op", "{")
        self.statements(top=True)
        self.take("op", "}")
        if self.peek()[0] != "end":
            raise ValueError(f"unexpected {self.peek()[1]!r} after the graph")
        return self.out

    def statements(self, top: bool) -> list[str]:
        """Statements up to the closing brace; returns the node ids mentioned."""
        mentioned: list[str] = []
        while self.peek() != ("op", "}"):
            if self.peek()[0] == "end":
                raise ValueError("missing closing '}'")
            mentioned += self.statement(top)
            self.accept("op", ";")
        return mentioned

    def statement(self, top: bool) -> list[str]:
        kind, value = self.peek()
        if kind == "kw" and value in ("graph", "node", "edge"):
            self.pos += 1
            attrs = self.attr_lists()
            if value == "graph" and top:
                self.out.graph_attrs.update(attrs)
            return []
        if kind == "id" and self.peek(1) == ("op", "="):
            self.pos += 2
            attr_value = self.take("id")
            if top:
                self.out.graph_attrs[value] = attr_value
            return []
        return self.node_or_edge()

    def operand(self) -> list[str]:
        """A node id (with optional port) or a subgraph: the node ids it stands for."""
        if self.peek() in (("kw", "subgraph"), ("op", "{")):
            if self.accept("kw", "subgraph") and self.peek()[0] == "id":
                self.pos += 1
            self.take("op", "{")
            ids = self.statements(top=False)
            self.take("op", "}")
            return ids
        node_id = self.take("id")
        while self.accept("op", ":"):
            self.take("id")  # port or compass point: not part of the node id
        self.out.nodes.setdefault(node_id, {})
        return [node_id]

    def node_or_edge(self) -> list[str]:
        chain = [self.operand()]
        while self.peek() in (("op", "->"), ("op", "--")):
            self.pos += 1
            chain.append(self.operand())
        attrs = self.attr_lists() if self.peek() == ("op", "[") else {}
        if len(chain) == 1:
            for node_id in chain[0]:
                self.out.nodes[node_id].update(attrs)
        for tails, heads in itertools.pairwise(chain):
            for tail in tails:
                for head in heads:
                    self.out.edges.setdefault((tail, head), {}).update(attrs)
        return [node_id for ids in chain for node_id in ids]

    def attr_lists(self) -> dict[str, str]:
        attrs: dict[str, str] = {}
        while self.accept("op", "["):
            while not self.accept("op", "]"):
                key = self.take("id")
                attrs[key] = self.take("id") if self.accept("op", "=") else "true"
                self.accept("op", ",") or self.accept("op", ";")
        return attrs


def parse_dot(text: str) -> UserDrawing:
    """What DOT text draws, as a UserDrawing; raises ValueError naming what was expected and where."""
    return _DotParser(text).parse()
