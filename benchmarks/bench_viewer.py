"""Time the HTML viewer on a 1,000-node / 5,000-edge graph in headless Chromium.

Not a test: run ``python3 benchmarks/bench_viewer.py [--nodes N --edges M]``
and quote the printed times (targets: first render < 2 s, slider < 200 ms).
The graph is ``bench_render.random_graph`` (full labels: 5 contexts of 17
tokens per node). "First render" is the wall time of loading the page from
``file://`` until its load event (the script draws synchronously before it),
and, inside it, the script's own time to parse the data, lay out and draw.
"Slider" is the in-page time of one input event: filter every edge and node,
refresh the panel, redraw.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_render import random_graph
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from sparse_coding.graphs.viewer import write_viewer

_SLIDE = """
const slider = arguments[0].querySelector(".sc-slider");
const t0 = performance.now();
slider.value = arguments[1];
slider.dispatchEvent(new Event("input"));
return [performance.now() - t0, Number(arguments[0].dataset.visibleEdges)];
"""


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--edges", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    graph = random_graph(args.nodes, args.edges)
    page = write_viewer(graph, Path(tempfile.mkdtemp(prefix="bench_viewer_")) / "graph.html")
    driver = chromium()
    try:
        driver.get("about:blank")  # browser start-up is not the page's time
        loads, inits = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            driver.get(page.as_uri())
            loads.append(time.perf_counter() - start)
            root = driver.find_element("css selector", ".sc-viewer")
            inits.append(float(root.get_attribute("data-first-render-ms")))
        slides = []
        for value in [100, 500, 900, 250, 750, 0] * args.repeats:
            took, _ = driver.execute_script(_SLIDE, root, value)
            slides.append(took)
    finally:
        driver.quit()
    size = page.stat().st_size / 1e6
    print(f"graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges; page {size:.1f} MB at {page}")
    print(
        f"first render (file:// load to load event): median {statistics.median(loads):.2f} s, "
        f"max {max(loads):.2f} s over {args.repeats} loads; of which parse + layout + draw "
        f"median {statistics.median(inits):.0f} ms"
    )
    print(
        f"slider (filter + panel + redraw): median {statistics.median(slides):.0f} ms, "
        f"max {max(slides):.0f} ms over {len(slides)} moves"
    )


if __name__ == "__main__":
    main()
