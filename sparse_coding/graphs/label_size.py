"""The size Graphviz gives an HTML-like label, estimated in Python (no Graphviz run).

A pinned drawing (`drawing`) lays its rows out from these sizes, and sizes
its legend block with them. Tables are sized as Graphviz sizes them: each
column as wide as its widest cell plus padding and cell border, spanning cells
widening their last column, each row as tall as its tallest cell, then cell
spacing and the table's border around it all. Text is measured per character:
printable ASCII by the widest advance Graphviz (2.43, pango) drew each
character with at 8-14 pt where "Helvetica" is drawn with DejaVu Sans (glyph
advances are rounded, so a run of ``W`` is wider than its em widths add up
to), and never less than DejaVu Sans's own widths; other characters at most
1.05 em, East Asian wide ones 1.3 em (a few rare symbols, such as U+2031, are
wider). So a size is an upper bound of what Graphviz draws, and close to it:
tests/test_render.py checks both against Graphviz's own layout of a range of
labels.
"""

from __future__ import annotations

import functools
import math
import unicodedata
import xml.etree.ElementTree as ET

# Widths in hundredths of an em of ASCII 32..126 (see above); bold at most _BOLD times as wide.
_EM_HUNDREDTHS = """
35 42 51 86 67 98 81 31 42 42 53 86 35 38 35 38 67 67 67 67 67 67 67 67 67 67 38 38 86 86 86 57
104 75 70 70 78 67 61 78 76 34 34 69 59 91 76 83 63 83 70 67 62 76 70 104 70 66 70 42 38 42 86 53
53 66 67 59 67 66 36 67 67 31 31 61 31 101 67 66 67 67 42 57 42 67 62 85 62 62 57 67 38 67 86
"""
_EM = dict(zip(map(chr, range(32, 127)), (int(w) / 100 for w in _EM_HUNDREDTHS.split()), strict=True))
_EM["\u00a0"] = _EM[" "]  # spaces are drawn as no-break spaces
_BOLD = 1.26
_LINE_EM = 1.1  # line height in em, as Graphviz spaces lines

Size = tuple[float, float]
Run = tuple[str, float, bool]  # text, font size in points, bold


@functools.lru_cache(maxsize=1 << 16)
def text_width(text: str, size: float, bold: bool = False) -> float:
    """An upper bound of the width in points of one line of `text` drawn at `size` points."""
    em = sum(_EM[c] if c in _EM else 1.3 if unicodedata.east_asian_width(c) in "WF" else 1.05 for c in text)
    return math.ceil(em * size * (_BOLD if bold else 1.0)) + 1  # + 1: Graphviz rounds each run up


def label_size(label: str, size: float = 11.0) -> Size:
    """An upper bound of the (width, height) in points Graphviz gives an HTML-like label (``<...>``)
    drawn at font `size`."""
    root = ET.fromstring(f"<LABEL>{label[1:-1]}</LABEL>")  # a table, or text
    table = root.find("TABLE")
    return _text_size(root, size, False) if table is None else _table_size(table, size, False)


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
