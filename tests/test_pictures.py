"""The pictures a researcher pastes, opened as a researcher opens them: headless Chromium, 1600 x 1200.

Every script's image after one and after three runs, on the demo and on a
300-node graph: the graph's boxes lie in the first screen, and no text line
is wider than the graph plus the legend. The legend says what the graph's
.json says, for every metric and baseline. The viewer opens a 612-node /
40,000-edge graph on boxes of legible size.
"""

import random
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from sparse_coding.config import config_from_dict
from sparse_coding.graphs.drawing import draw_image
from sparse_coding.graphs.graph import Context, Graph, Node, run_record
from sparse_coding.graphs.graph_files import load_graph
from sparse_coding.graphs.legend import legend_entries
from sparse_coding.graphs.viewer import viewer_data, write_viewer
from sparse_coding.pipelines.publish import run_metadata
from sparse_coding.runtime.phases import PhaseTimer

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "sparse_coding" / "config" / "demo_config.yaml"
WINDOW = (1600, 1200)
SVG = "{http://www.w3.org/2000/svg}"

_GEOMETRY = """
const out = {nodes: [], texts: []};
for (const g of document.querySelectorAll("g.node")) {
  const name = g.querySelector("title").textContent, r = g.getBoundingClientRect();
  if (!name.startsWith("__")) out.nodes.push([r.left, r.top, r.right, r.bottom]);
}
for (const t of document.querySelectorAll("text")) {
  const r = t.getBoundingClientRect();
  out.texts.push([t.textContent.replace(/\\u00a0/g, " "), r.left, r.right]);
}
return out;
"""


@pytest.fixture(scope="module")
def window(browser):
    """The module's Chromium with a 1600 x 1200 viewport, as a researcher's screen."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    return browser


def _demo_runs(folder: Path) -> dict[tuple[str, int], Path]:
    """fast.py and pipe.py on the demo, three runs each; their images after the first and the third."""
    from sparse_coding.pipelines.fast import run_fast
    from sparse_coding.pipelines.pipe import run_pipe

    raw = yaml.safe_load(DEMO_CONFIG.read_text()) | {"DATA_DIR": str(folder / "data")}
    config = config_from_dict(raw, source_path=DEMO_CONFIG)
    out, images = config.model_data_dir(config.MODEL_DIR), {}
    scripts = (("fast.py", run_fast, config.GRADS_FILE), ("pipe.py", run_pipe, config.GRAPH_FILE))
    for script, run, name in scripts:
        for n_runs in (1, 2, 3):
            run(config, PhaseTimer())
            if n_runs in (1, 3):
                images[script, n_runs] = shutil.copy(out / name, folder / f"demo_{script}_{n_runs}.svg")
    return images


def _benchmark_graph(script: str, n_nodes: int, rng: random.Random) -> Graph:
    """A graph shaped as `script` draws on GPT-2: pipe.py 3 resid layers, fast.py 3 layers x 3 sites."""
    sites = ["resid"] if script == "pipe.py" else ["resid", "attn", "mlp"]
    ranks = [(layer, site) for layer in (9, 10, 11) for site in sites]
    graph = Graph()
    for i in range(n_nodes):
        layer, site = ranks[i % len(ranks)]
        words = [rng.choice(["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat"]) for _ in range(9)]
        graph.add_node(
            Node.from_id(
                f"{site}_{layer}.{i}",
                activation=rng.random(),
                attribution=rng.gauss(0, 1) if script == "fast.py" else None,
                hook=f"blocks.{layer}.hook_{site}",
                contexts=[Context(words, [rng.random() for _ in words])],
                logits_up=[("Ġup", 0.5), ("Ġhigh", 0.25)],
                logits_down=[("Ġdown", -0.5)],
            )
        )
    ordered = graph.sorted_nodes()
    while len(graph.edges) < 3 * n_nodes:
        a, b = sorted(rng.sample(range(len(ordered)), 2))
        if ordered[a].rank_key() < ordered[b].rank_key():
            graph.add_edge(ordered[a].id, ordered[b].id, rng.gauss(0, 1))
    return graph


def _with_runs(graph: Graph, script: str, n_runs: int) -> Graph:
    config = config_from_dict({"NUM_DOWN_NODES": 5, "THRESHOLD_EXP": -2.0})
    merged = Graph(nodes=graph.nodes, edges=graph.edges, metadata={})
    for i in range(n_runs):
        metadata = run_metadata(config, {}, script) | {"prompt": f"The capital of France is, take {i}"}
        metadata["summary"] = "features explain ~50% of the effect"
        merged.metadata.setdefault("runs", []).append(run_record(metadata, f"r{i}"))
    return merged


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[tuple[str, str, int], tuple[Path, Graph | None]]:
    folder = tmp_path_factory.mktemp("pictures")
    found = {("demo", s, n): (path, None) for (s, n), path in _demo_runs(folder).items()}
    rng = random.Random(0)
    for script in ("fast.py", "pipe.py"):
        graph = _benchmark_graph(script, 300, rng)
        for n_runs in (1, 3):
            drawn = _with_runs(graph, script, n_runs)
            path = folder / f"big_{script}_{n_runs}.svg"
            draw_image(drawn, path, fmt="svg")
            found["300 nodes", script, n_runs] = (path, drawn)
    return found


def _legend_width(texts: list[list], metadata: dict) -> float:
    """Width of the legend's meaning column: the text lines that are pieces of its sentences (long
    enough not to be a token of some context)."""
    meanings = " ".join(meaning for _, meaning in legend_entries(metadata))
    lines = [t for t in texts if len(t[0].strip()) >= 15 and t[0] in meanings]
    return max(t[2] for t in lines) - min(t[1] for t in lines)


@pytest.mark.parametrize("kind", ["demo", "300 nodes"])
@pytest.mark.parametrize("script", ["fast.py", "pipe.py"])
@pytest.mark.parametrize("n_runs", [1, 3])
def test_the_image_shows_the_graph_in_the_first_screen(window, images, kind, script, n_runs):
    path, graph = images[kind, script, n_runs]
    if graph is None:  # the demo: the graph its runs stored
        stem = "grads_graph" if script == "fast.py" else "cognition_graph"
        graph = load_graph(next(path.parent.glob(f"data/*/{stem}.dot")))
    window.get(path.as_uri())
    found = window.execute_script(_GEOMETRY)
    boxes = found["nodes"]
    assert len(boxes) >= (4 if kind == "demo" else 250)
    for left, top, right, bottom in boxes:  # the whole graph in the first screen
        assert left >= -1 and top >= -1 and right <= WINDOW[0] + 1 and bottom <= WINDOW[1] + 1
    graph_width = max(b[2] for b in boxes) - min(b[0] for b in boxes)
    legend_width = _legend_width(found["texts"], graph.metadata)
    widest = max(found["texts"], key=lambda t: t[2] - t[1])
    assert widest[2] - widest[1] <= graph_width + legend_width + 1, widest[0]


FAST_SETTINGS = [
    (metric, baseline, steps)
    for metric in ("cross_entropy", "logprob", "logit_diff")
    for baseline in ("zero", "patch", "mean")
    for steps in (1, 4)
    if steps == 1 or baseline == "patch"
]
# Words a correct sentence must hold for each setting (written here, not read from the code).
METRIC_WORDS = {"cross_entropy": "cross-entropy", "logprob": "log p", "logit_diff": "logit difference"}
BASELINE_WORDS = {"zero": "at zero", "patch": "patch prompt", "mean": "mean activation"}


@pytest.mark.parametrize(("metric", "baseline", "steps"), FAST_SETTINGS)
def test_the_legend_of_image_and_viewer_says_what_the_metadata_says(tmp_path, metric, baseline, steps):
    config = config_from_dict(
        {"METRIC": metric, "BASELINE": baseline, "IG_STEPS": steps, "PATCH_PROMPT": "the sun is cold"}
    )
    metadata = run_metadata(config, {}, "fast.py")
    graph = Graph(metadata={"runs": [run_record(metadata, "r1")]})
    graph.add_node(Node.from_id("resid_0.1", attribution=0.5))
    graph.add_node(Node.from_id("resid_1.2", attribution=-0.5))
    graph.add_edge("resid_0.1", "resid_1.2", 0.25)
    draw_image(graph, tmp_path / "g.svg", fmt="svg")
    texts = [t.text or "" for t in ET.parse(tmp_path / "g.svg").getroot().iter(f"{SVG}text")]
    drawn = " ".join(texts).replace("\xa0", " ")
    recorded = metadata["sign_convention"]
    shown = dict(viewer_data(graph)["legend"])
    for key, sentence in recorded.items():
        if key != "nodes":  # how nodes were chosen is the caption's, in short
            assert sentence in drawn, key
            assert sentence in shown.values(), key
    attribution = recorded["node attribution"]
    assert METRIC_WORDS[metric] in attribution and BASELINE_WORDS[baseline] in attribution
    assert ("integrated-gradients" in attribution) == (steps > 1)
    assert "supports the answer" in recorded["colour"]


def test_run_labels_say_how_each_run_chose_its_nodes_and_differ_when_the_runs_differ():
    top = config_from_dict({"NUM_DOWN_NODES": 3})
    runs = [
        run_record(run_metadata(top, {}, "fast.py") | {"prompt": "p"}, "r1"),
        run_record(
            run_metadata(top, {}, "fast.py", "thresholds")
            | {"prompt": "p", "down_node_selection": "thresholds"},
            "r2",
        ),
    ]
    graph = Graph(metadata={"runs": runs})
    graph.add_node(Node.from_id("resid_0.1"))
    labels = viewer_data(graph)["runs"]
    assert len(set(labels)) == 2
    assert "top 3 down-nodes per site" in labels[0] and "hist.py" in labels[1]
    caption = " ".join(viewer_data(graph)["caption"])
    assert "2 runs merged" in caption and "(1 run)" in caption


def _huge_graph(rng: random.Random) -> Graph:
    """612 features on three resid layers and ~40,800 edges: pipe.py with every non-zero edge kept."""
    graph = Graph(metadata={"script": "pipe.py", "prompt": "p", "config": {"THRESHOLD_EXP": None}})
    layers = [[f"resid_{layer}.{i}" for i in range(204)] for layer in (9, 10, 11)]
    for ids in layers:
        for node_id in ids:
            graph.add_node(Node.from_id(node_id, activation=rng.random()))
    for upper, lower in zip(layers, layers[1:], strict=False):
        for source in upper:
            for target in lower:
                if rng.random() < 0.49:
                    graph.add_edge(source, target, rng.gauss(0, 1) ** 3)
    return graph


def test_the_viewer_opens_a_40000_edge_graph_on_its_strongest_edges_in_legible_boxes(window, tmp_path):
    graph = _huge_graph(random.Random(0))
    assert len(graph.nodes) == 612 and len(graph.edges) > 40_000
    page = write_viewer(graph, tmp_path / "huge.html")
    window.get(page.as_uri())
    root = window.find_element("css selector", ".sc-viewer")
    magnitudes = sorted((abs(e.effect) for e in graph.edges.values()), reverse=True)
    expected = sum(1 for m in magnitudes if m >= magnitudes[299])  # the 300 strongest (and ties)
    assert int(root.get_attribute("data-visible-edges")) == expected
    stage = window.execute_script(
        "return arguments[0].querySelector('.sc-stage').getBoundingClientRect()", root
    )
    boxes = window.execute_script("return arguments[0].scViewer.screenBoxes()", root)
    inside = [
        b
        for b in boxes
        if b[1] >= stage["left"]
        and b[2] >= stage["top"]
        and b[1] + b[3] <= stage["right"]
        and b[2] + b[4] <= stage["bottom"]
    ]
    assert len(inside) >= 30
    assert min(b[3] for b in inside) >= 100 and min(b[4] for b in inside) >= 26  # px: ids ~10 px high
    root.find_element("css selector", ".sc-all").click()
    assert int(root.get_attribute("data-visible-edges")) == len(graph.edges)
