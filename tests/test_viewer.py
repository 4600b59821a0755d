"""The HTML viewer, in a real headless Chromium: counts, panel, slider, search, paths, runs, safety.

Expected values are computed here from the graph's JSON (the counts a
correct page must show), never read back from the page's own code.
"""

import itertools
import json
import random
from collections import deque
from pathlib import Path

import pytest

from sparse_coding.graphs.graph import Context, Graph, Node
from sparse_coding.graphs.viewer import (
    script_safe_json,
    viewer_data,
    viewer_fragment,
    viewer_page,
    write_viewer,
)

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    "</script><script>window.__pwned = 2</script>",
    '<img src=x onerror="window.__pwned = 3">',
    "<!-- open comment",
    "quote \" ' back\\slash",
    "new\nline",
]
SITES = ["resid", "attn", "mlp"]


def random_graph(n_nodes: int, n_edges: int, seed: int = 0) -> Graph:
    """Features over 3 layers x 3 sites, an error node per layer, forward edges, one 'Ġparis' token."""
    rng = random.Random(seed)
    graph = Graph(metadata={"script": "fast.py", "prompt": "The capital of France is", "config": {}})
    for i in range(n_nodes):
        layer, site = rng.randrange(3), rng.choice(SITES)
        tokens = [rng.choice(["Ġthe", "Ġcat", "Ġsat", "Ġon"]) for _ in range(5)]
        if i % 7 == 0:
            tokens[2] = "Ġparis"
        graph.add_node(
            Node.from_id(
                f"{site}_{layer}.{i}",
                activation=rng.random(),
                attribution=rng.gauss(0, 1),
                neuronpedia_id=f"gpt2-small/{layer}-res-jb",
                contexts=[Context(tokens, [rng.random() for _ in tokens])],
                logits_up=[("Ġup", 0.5)],
                logits_down=[("Ġdown", -0.25)],
            )
        )
    for layer in range(3):
        graph.add_node(Node.from_id(f"mlp_error_{layer}", attribution=rng.gauss(0, 1)))
    forward = [
        (a.id, b.id)
        for a, b in itertools.combinations(graph.sorted_nodes(), 2)
        if a.rank_key() < b.rank_key()
    ]
    for source, target in rng.sample(forward, n_edges):
        graph.add_edge(source, target, rng.gauss(0, 1))
    return graph


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A 60-node graph's page on disk, with its JSON form."""
    graph = random_graph(60, 200)
    path = write_viewer(graph, tmp_path_factory.mktemp("viewer") / "graph.html")
    return path, json.loads(graph.to_json())  # the expected counts are computed from the graph's JSON form


def opened(browser, path: Path):
    browser.get(path.as_uri())
    return browser.find_element("css selector", ".sc-viewer")


def counts(root) -> tuple[int, int]:
    return int(root.get_attribute("data-visible-nodes")), int(root.get_attribute("data-visible-edges"))


def click_node(browser, root, node_id: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("arguments[0].scViewer.centreOn(arguments[1])", root, node_id)
    x, y = browser.execute_script("return arguments[0].scViewer.screenPoint(arguments[1])", root, node_id)
    canvas = root.find_element("css selector", "canvas")
    box = canvas.rect
    dx, dy = x - (box["x"] + box["width"] / 2), y - (box["y"] + box["height"] / 2)
    ActionChains(browser).move_to_element_with_offset(canvas, int(dx), int(dy)).click().perform()


def set_slider(browser, root, value: int) -> None:
    slider = root.find_element("css selector", ".sc-slider")
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", slider, value
    )


# ---------------------------------------------------------------- without a browser


def test_embedded_json_cannot_end_the_script_and_reads_back_the_same():
    value = {"tokens": HOSTILE, "line separator": "\u2028"}
    text = script_safe_json(value)
    assert "</" not in text and "<!--" not in text and "<" not in text
    assert json.loads(text) == value


def test_page_data_has_every_node_in_forward_rows_and_every_edge():
    graph = random_graph(30, 60)
    data = viewer_data(graph)
    ids = [n["id"] for n in data["nodes"]]
    assert sorted(ids) == sorted(graph.nodes)
    rows = {n["id"]: n["row"] for n in data["nodes"]}
    for source, target in graph.edges:  # every edge points down the page
        assert rows[source] < rows[target]
    assert sorted((ids[s], ids[t], e) for s, t, e, _ in data["edges"]) == sorted(
        (e.source, e.target, e.effect) for e in graph.edges.values()
    )
    first = next(n for n in data["nodes"] if n["id"].startswith("resid_1."))
    assert first["url"] == f"https://www.neuronpedia.org/gpt2-small/1-res-jb/{first['id'].split('.')[1]}"
    assert all(n["error"] == n["id"].startswith("mlp_error") for n in data["nodes"])


# ---------------------------------------------------------------- in Chromium


def test_the_page_opens_from_file_with_every_node_and_edge(browser, page, tmp_path):
    path, graph_json = page
    root = opened(browser, path)
    assert counts(root) == (len(graph_json["nodes"]), len(graph_json["edges"]))
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    assert (tmp_path / "viewer.png").stat().st_size > 10_000


def test_clicking_a_node_opens_its_contexts_logits_and_neuronpedia_link(browser, page):
    path, graph_json = page
    root = opened(browser, path)
    node = next(n for n in graph_json["nodes"] if n["id"].startswith("attn_2."))
    click_node(browser, root, node["id"])
    assert root.get_attribute("data-selected") == node["id"]
    side = root.find_element("css selector", ".sc-side")
    tokens = [t.text for t in side.find_elements("css selector", ".sc-contexts .sc-token")]
    assert tokens == node["contexts"][0]["tokens"]
    assert "Ġup" in side.text and "Ġdown" in side.text
    link = side.find_element("css selector", "a.sc-link").get_attribute("href")
    assert link == f"https://www.neuronpedia.org/gpt2-small/2-res-jb/{node['feature']}"


def test_hovering_a_node_shows_its_id_hook_activation_and_attribution(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains

    path, graph_json = page
    root = opened(browser, path)
    node = graph_json["nodes"][5]
    click_node(browser, root, node["id"])  # centres it; the pointer stays on it
    ActionChains(browser).move_by_offset(1, 1).perform()
    tip = root.find_element("css selector", ".sc-tip").text
    assert node["id"] in tip and "activation" in tip and "attribution" in tip


def test_the_slider_hides_weak_edges_and_the_nodes_left_without_edges(browser, page):
    path, graph_json = page
    root = opened(browser, path)
    set_slider(browser, root, 700)
    threshold = float(root.get_attribute("data-threshold"))
    assert threshold > 0
    kept = [e for e in graph_json["edges"] if abs(e["effect"]) >= threshold]
    assert 0 < len(kept) < len(graph_json["edges"])
    touched = {e["source"] for e in kept} | {e["target"] for e in kept}
    assert counts(root) == (len(touched), len(kept))


def test_hiding_error_nodes_hides_their_edges(browser, page):
    path, graph_json = page
    root = opened(browser, path)
    root.find_element("css selector", ".sc-errors").click()
    features = [n for n in graph_json["nodes"] if n["feature"] is not None]
    feature_ids = {n["id"] for n in features}
    kept = [e for e in graph_json["edges"] if e["source"] in feature_ids and e["target"] in feature_ids]
    assert counts(root) == (len(features), len(kept))


def test_searching_a_context_token_lists_the_nodes_that_have_it(browser, page):
    path, graph_json = page
    root = opened(browser, path)
    root.find_element("css selector", ".sc-search").send_keys("paris")
    having = [
        n["id"] for n in graph_json["nodes"] if any("Ġparis" in c["tokens"] for c in n.get("contexts", []))
    ]
    assert int(root.get_attribute("data-search-matches")) == len(having) > 0
    listed = [r.text for r in root.find_elements("css selector", ".sc-result")]
    assert sorted(listed) == sorted(having)


def test_selecting_a_node_highlights_everything_upstream_and_downstream(browser, page):
    path, graph_json = page
    root = opened(browser, path)
    node = next(n["id"] for n in graph_json["nodes"] if n["id"].startswith("resid_1."))
    click_node(browser, root, node)
    reach = {node}
    for forward in (True, False):
        queue = deque([node])
        seen = {node}
        while queue:
            here = queue.popleft()
            for e in graph_json["edges"]:
                start, end = (e["source"], e["target"]) if forward else (e["target"], e["source"])
                if start == here and end not in seen:
                    seen.add(end)
                    queue.append(end)
        reach |= seen
    assert int(root.get_attribute("data-path-nodes")) == len(reach)


def test_a_run_filter_hides_what_only_that_run_measured(browser, tmp_path):
    graph_json = json.loads(random_graph(20, 40).to_json())
    graph_json["metadata"]["runs"] = [
        {"id": "run-a", "script": "fast.py", "prompt": "a"},
        {"id": "run-b", "script": "fast.py", "prompt": "b"},
    ]
    for k, edge in enumerate(graph_json["edges"]):  # graph_files' schema: run id -> that run's value
        both = {"run-a": edge["effect"], "run-b": edge["effect"]}
        edge["runs"] = {"run-a": edge["effect"]} if k % 3 == 0 else both
    path = tmp_path / "runs.html"
    path.write_text(viewer_page(Graph.from_dict(graph_json)), encoding="utf-8")
    root = opened(browser, path)
    runs = root.find_elements("css selector", ".sc-run input")
    assert len(runs) == 2 and "prompt 'b'" in root.find_elements("css selector", ".sc-run")[1].text
    runs[0].click()
    kept = [e for e in graph_json["edges"] if "run-b" in e["runs"]]
    assert int(root.get_attribute("data-visible-edges")) == len(kept)


def test_no_request_leaves_the_page(browser, page):
    path, _ = page
    browser.get_log("performance")  # drop earlier tests' entries
    root = opened(browser, path)
    click_node(browser, root, next(iter(json.loads(json.dumps(page[1]))["nodes"]))["id"])
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls and all(url.startswith("file://") for url in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_hostile_labels_are_shown_as_text_and_never_run(browser, tmp_path):
    graph = Graph(metadata={"script": "pipe.py", "prompt": HOSTILE[1], "summary": HOSTILE[0]})
    graph.add_node(
        Node.from_id(
            "resid_0.1",
            contexts=[Context(HOSTILE, [1.0] * len(HOSTILE))],
            logits_up=[(HOSTILE[2], 1.0)],
            explanation=HOSTILE[1],
        )
    )
    graph.add_node(Node.from_id("resid_1.2"))
    graph.add_edge("resid_0.1", "resid_1.2", 1.0)
    path = write_viewer(graph, tmp_path / "hostile.html")
    root = opened(browser, path)
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_elements("css selector", "img") == []
    assert HOSTILE[1] in root.find_element("css selector", ".sc-caption").text
    click_node(browser, root, "resid_0.1")
    tokens = [
        t.get_attribute("textContent") for t in root.find_elements("css selector", ".sc-contexts .sc-token")
    ]
    assert tokens == [t.replace("\n", "\u240a") for t in HOSTILE]
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.title.startswith("pipe.py, prompt")


def test_two_viewers_in_one_page_work_apart_as_in_a_notebook(browser, tmp_path):
    small, other = random_graph(10, 12, seed=1), random_graph(14, 20, seed=2)
    cells = [viewer_fragment(small), viewer_fragment(other), viewer_fragment(small)]  # one graph shown twice
    path = tmp_path / "notebook.html"
    path.write_text(f"<html><body>{''.join(cells)}</body></html>", encoding="utf-8")
    browser.get(path.as_uri())
    roots = browser.find_elements("css selector", ".sc-viewer")
    assert [counts(r) for r in roots] == [(10 + 3, 12), (14 + 3, 20), (10 + 3, 12)]
