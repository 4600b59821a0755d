"""Labels: every token renders as itself; the .dot parses and the SVG is valid XML."""

import subprocess
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_coding.graphs.dot_format import graph_to_dot
from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.markup import (
    compact_label,
    escape_text,
    legend_label,
    node_label,
    visible_text,
)

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(dot_text: str) -> list[str]:
    """Render with the real dot and return every text element of the SVG."""
    result = subprocess.run(["dot", "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    root = ET.fromstring(result.stdout)
    return [el.text or "" for el in root.iter(f"{SVG}text")]


def labelled_graph(tokens: list[str], explanation: str | None = None) -> Graph:
    graph = Graph(metadata={"summary": "features explain ~50% of the effect"})
    graph.add_node(
        Node.from_id(
            "resid_0.1",
            activation=1.0,
            contexts=[Context(tokens, [float(i) for i in range(len(tokens))])],
            logits_up=[(t, 1.0) for t in tokens],
            logits_down=[(t, -1.0) for t in tokens],
            explanation=explanation,
        )
    )
    return graph


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a&b", "a&amp;b"),
        ("<tag>", "&lt;tag&gt;"),
        ("\"'", "&quot;&#39;"),
        (" the", "&#160;the"),
        ("\n", "&lt;0x0A&gt;"),
        ("\t", "&lt;0x09&gt;"),
        ("\x00\x1b", "&lt;0x00&gt;&lt;0x1B&gt;"),
        ("\x7f", "&lt;0x7F&gt;"),
        ("\x85", "&lt;0x85&gt;"),
        ("\ud800", "&lt;U+D800&gt;"),
        ("\ufffe", "&lt;U+FFFE&gt;"),
        ("a\u202eb", "a&lt;U+202E&gt;b"),
        ("\u200b\u00ad\u2066", "&lt;U+200B&gt;&lt;U+00AD&gt;&lt;U+2066&gt;"),
        ("ĠĊ😀{}\\", "ĠĊ😀{}\\\\"),
    ],
)
def test_escape_text_makes_each_character_visible_and_xml_safe(text, expected):
    assert escape_text(text) == expected


def test_label_shows_id_hook_numbers_contexts_logits_and_explanation():
    node = Node.from_id(
        "resid_3.331",
        activation=2.5,
        attribution=-0.25,
        hook="blocks.3.hook_resid_pre",
        contexts=[Context(["Ġthe", "Ġcat"], [0.0, 2.0])],
        logits_up=[("Ġdog", 1.5), ("Ġzero", 0.0)],
        logits_down=[("Ġsat", -0.75)],
        explanation="cats & dogs",
    )
    label = node_label(node)
    assert label.startswith("<<TABLE") and label.endswith("</TABLE>>")
    for text in [
        "resid_3.331",
        "blocks.3.hook_resid_pre",
        "act&#160;2.5",
        "attr&#160;-0.25",
    ]:
        assert text in label
    assert 'BGCOLOR="#ffffff" TITLE="0" HREF="">Ġthe' in label  # zero activation: white
    assert 'BGCOLOR="#2166ac"' in label  # max activation and largest logit: full blue
    assert "Ġzero" not in label  # a cell of exactly 0 says nothing about its token: not drawn
    assert 'BGCOLOR="#d8' in label  # -0.75 of 1.5: half-strength red
    assert "<I>cats&#160;&amp;&#160;dogs</I>" in label


def test_label_limits_contexts_and_logits():
    node = Node.from_id(
        "attn_1.2",
        contexts=[Context([f"c{i}"], [1.0]) for i in range(5)],
        logits_up=[(f"u{i}", 1.0) for i in range(5)],
    )
    label = node_label(node, max_contexts=2, max_logits=3)
    assert "c1" in label and "c2" not in label
    assert "u2" in label and "u3" not in label


def test_error_nodes_are_dotted():
    error = Node.from_id("mlp_error_7", attribution=0.5)
    assert 'STYLE="DOTTED"' in node_label(error)
    feature = Node.from_id("mlp_7.1", contexts=[Context(["tok"], [1.0])])
    assert 'STYLE="DOTTED"' not in node_label(feature)


def test_compact_labels_keep_the_top_context_around_its_peak_and_a_few_logits():
    tokens = [f"t{i}x" for i in range(11)]
    peak_at_5 = [1.0 - abs(i - 5) / 10 for i in range(11)]
    feature = Node.from_id(
        "mlp_7.1",
        contexts=[Context(tokens, peak_at_5), Context(["second"], [9.0])],
        logits_up=[(f"u{i}x", 1.0) for i in range(8)],
        logits_down=[(f"d{i}x", -1.0) for i in range(8)],
    )
    label = compact_label(feature)
    assert all(f"t{i}x<" in label for i in range(1, 10))
    assert "t0x<" not in label and "t10x<" not in label and "second" not in label
    assert "u4x<" in label and "u5x<" not in label and "d4x<" in label and "d5x<" not in label


def test_identical_context_rows_are_drawn_once():
    row = Context(["same", "row"], [1.0, 2.0])
    node = Node.from_id(
        "mlp_7.1", contexts=[row, Context(["other"], [1.0]), Context(["same", "row"], [3.0, 1.0])]
    )
    label = node_label(node)
    assert label.count(">same<") == 1 and label.count(">other<") == 1


def test_the_caption_escapes_the_summary_text():
    assert "~73%&#160;&lt;x&gt;" in legend_label(["~73% <x>"], [], [], 60)


NASTY = [
    "&",
    "<",
    ">",
    '"',
    "'",
    "\n",
    "\t",
    "\x00",
    "\\",
    "{",
    "}",
    "😀",
    "Ġthe",
    "Ċ",
    "\\N",
    "\\G",
    "\\L",
    "a\\Nb",
    "\u202eevil",
]


def test_nasty_tokens_render_as_themselves_in_svg():
    texts = svg_texts(graph_to_dot(labelled_graph(NASTY, explanation="<&>")))
    for token in NASTY:
        assert visible_text(token) in texts
    assert "<&>" in texts
    # Graphviz escapes are drawn as written, never as the node id or graph name.
    assert {"\\N", "\\G", "\\L", "a\\Nb", "<U+202E>evil"} <= set(texts)


token_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(token_text, min_size=1, max_size=6), explanation=token_text)
def test_arbitrary_unicode_tokens_parse_render_and_round_trip(tokens, explanation):
    graph = labelled_graph(tokens, explanation)
    dot_text = graph_to_dot(graph)
    # dot parses it (-Tcanon) and the SVG is well-formed XML (ET raises otherwise).
    canon = subprocess.run(["dot", "-Tcanon"], input=dot_text.encode(), capture_output=True, timeout=60)
    assert canon.returncode == 0, canon.stderr.decode()
    texts = svg_texts(dot_text)
    for token in tokens:
        assert visible_text(token).strip() in "\n".join(texts)
    # The canonical .json brings every token back exactly.
    assert Graph.from_json(graph.to_json()) == graph
