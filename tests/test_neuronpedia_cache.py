"""The Neuronpedia cache stays inside its folder whatever an SAE cfg's neuronpedia_id says."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.labels.neuronpedia import annotate_graph
from sparse_coding.pipelines.publish import save_caches

HOSTILE_IDS = ["../../x", "..", "../../../../../../tmp/x", "a/../../b", "./../x", "//x//..//.."]


class Explains(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"explanations": [{"description": f"seen at {self.path}"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Explains)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_hostile_neuronpedia_ids_write_nothing_outside_the_cache_folder(tmp_path, server_url):
    cache = tmp_path / "data" / "neuronpedia_cache"
    for victim in ("x/3.json", "data/x/3.json", "b/3.json", "data/b/3.json", "3.json", "data/3.json"):
        (tmp_path / victim).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / victim).write_text("victim")
    before = files_under(tmp_path)
    graph = Graph()
    for layer, np_id in enumerate(HOSTILE_IDS):
        graph.add_node(Node.from_id(f"resid_{layer}.3", neuronpedia_id=np_id))
    stats = annotate_graph(graph, base_url=server_url, cache_dir=cache, max_workers=2)
    save_caches(stats.answers)
    assert stats.fetched == len(HOSTILE_IDS) and all(n.explanation for n in graph.nodes.values())
    after = files_under(tmp_path)
    assert {p: b for p, b in after.items() if not p.is_relative_to(cache)} == before
    assert len([p for p in after if p.is_relative_to(cache)]) == len(HOSTILE_IDS)  # one per id: none collide
    again = Graph(nodes={k: Node.from_id(k, neuronpedia_id=n.neuronpedia_id) for k, n in graph.nodes.items()})
    assert annotate_graph(again, base_url=server_url, cache_dir=cache).from_cache == len(HOSTILE_IDS)


@pytest.mark.parametrize("where", ["server folder", "set folder"])
def test_a_link_in_the_cache_folder_leaves_features_uncached_and_never_fails_the_run(
    tmp_path, server_url, where
):
    cache, outside = tmp_path / "data" / "neuronpedia_cache", tmp_path / "outside"
    outside.mkdir()
    server = cache / server_url.split("://", 1)[1].replace(":", "_")
    link = server if where == "server folder" else server / "gpt2-small"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    graph = Graph()
    graph.add_node(Node.from_id("resid_3.7", neuronpedia_id="gpt2-small/3-res-jb"))
    stats = annotate_graph(graph, base_url=server_url, cache_dir=cache)
    save_caches(stats.answers)
    assert graph.nodes["resid_3.7"].explanation and stats.fetched == 1
    assert list(outside.rglob("*")) == [] and list(cache.rglob("*.json")) == []
