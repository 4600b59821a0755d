"""The size Graphviz gives an HTML-like label, estimated in Python (no Graphviz run).

A pinned drawing (`drawing`) lays its rows out from these sizes, and sizes
its legend block with them. Tables are sized as Graphviz sizes them: each
column as wide as its widest cell plus padding and cell border, spanning cells
widening their last column, each row as tall as its tallest cell, then cell
spacing and the table's border around it all. Text is measured with the widths
of DejaVu Sans, the widest of the sans fonts that fontconfig draws
"Helvetica" with (Liberation Sans and Nimbus Sans are narrower), so each size
is an upper bound of what Graphviz draws, and close to it (tests/test_render.py
checks both against Graphviz's own layout of a range of labels).
"""

from __future__ import annotations

import functools
import math
import unicodedata
import xml.etree.ElementTree as ET

# Widths in em of ASCII 32..126 in DejaVu Sans, rounded up; other characters at most 1 em, East Asian wide
# ones 1.25; bold at most _BOLD times regular.
_EM_HUNDREDTHS = """
32 41 46 84 64 96 78 28 40 40 50 84 32 37 32 34 64 64 64 64 64 64 64 64 64 64 34 34 84 84 84 54
100 69 69 70 78 64 58 78 76 30 30 66 56 87 75 79 61 79 70 64 62 74 69 99 69 62 69 40 34 40 84 50
50 62 64 55 64 62 36 64 64 28 28 58 28 98 64 62 64 64 42 53 40 64 60 82 60 60 53 64 34 64 84
"""
_EM = dict(zip(map(chr, range(32, 127)), (int(w) / 100 for w in _EM_HUNDREDTHS.split()), strict=True))
_EM["\u00a0"] = _EM[" "]  # spaces are drawn as no-break spaces
_BOLD = 1.27
_LINE_EM = 1.1  # line height in em, as Graphviz spaces lines

Size = tuple[float, float]
Run = tuple[str, float, bool]  # text, font size in points, bold


@functools.lru_cache(maxsize=1 << 16)
def text_width(text: str, size: float, bold: bool = False) -> float:
    """An upper bound of the width in points of one line of `text` drawn at `size` points."""
    em = 0.0
    for char in text:
        width = _EM.get(char)
        if width is None:
            width = 1.25 if unicodedata.east_asian_width(char) in "WF" else 1.0
        em += width
    return math.ceil(em * size * (_BOLD if bold else 1.0)) + 1  # + 1: Graphviz rounds each run up


def label_size(label: str, size: float = 11.0) -> Size:
    """An upper bound of the (width, height) in points Graphviz gives an HTML-like label (``<...>``)
    drawn at font `size`."""
    root = ET.fromstring(label[1:-1])
    return _table_size(root, size, False) if root.tag == "TABLE" else _text_size(root, size, False)


def _table_size(table: ET.Element, size: float, bold: bool) -> Size:
    border = int(table.get("BORDER", 1))
    pad = 2 * (int(table.get("CELLPADDING", 2)) + int(table.get("CELLBORDER", border)))
    spacing = int(table.get("CELLSPACING", 2))
    widths: list[float] = []
    spanning: list[tuple[int, int, float]] = []  # (first column, columns, width) of cells spanning several
    height = 0.0
    for row in table:
        col, row_height = 0, 0.0
        for cell in row:
            span = int(cell.get("COLSPAN", 1))
            inner = cell.find("TABLE")
            cell_w, cell_h = _text_size(cell, size, bold) if inner is None else _table_size(inner, size, bold)
            if col + span > len(widths):
                widths += [0.0] * (col + span - len(widths))
            if span == 1:
                widths[col] = max(widths[col], cell_w + pad)
            else:
                spanning.append((col, span, cell_w + pad))
            row_height = max(row_height, cell_h + pad)
            col += span
        height += row_height + spacing
    for col, span, cell_w in spanning:  # after the single columns: widen the last column if short
        short = cell_w - sum(widths[col : col + span]) - (span - 1) * spacing
        if short > 0:
            widths[col + span - 1] += short
    gaps = 2 * border + spacing
    return sum(widths) + len(widths) * spacing + gaps, height + gaps


def _text_size(element: ET.Element, size: float, bold: bool) -> Size:
    """Width of the widest line and the lines' heights, each line as tall as its largest font."""
    if not len(element):  # one run of plain text: most cells
        return (text_width(element.text, size, bold) if element.text else 0.0), math.ceil(_LINE_EM * size)
    lines: list[list[Run]] = [[]]
    _add_runs(element, size, bold, lines)
    width = max(sum(text_width(*run) for run in line) for line in lines)
    height = sum(math.ceil(_LINE_EM * max((run[1] for run in line), default=size)) for line in lines)
    return width, height


def _add_runs(element: ET.Element, size: float, bold: bool, lines: list[list[Run]]) -> None:
    """Append each run of text under `element` to the last line of `lines`; a ``<BR/>`` starts a line."""
    if element.text:
        lines[-1].append((element.text, size, bold))
    for child in element:
        if child.tag == "BR":
            lines.append([])
        else:
            _add_runs(child, float(child.get("POINT-SIZE", size)), bold or child.tag == "B", lines)
        if child.tail:
            lines[-1].append((child.tail, size, bold))
