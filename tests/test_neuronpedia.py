"""Neuronpedia client against a real HTTP server on 127.0.0.1 (no internet)."""

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.labels.neuronpedia import (
    FOUND_TTL_S,
    MISSING_TTL_S,
    annotate_graph,
    feature_url,
    parse_feature,
)
from sparse_coding.pipelines.publish import neuronpedia_answers, save_caches

SET = "gpt2-small/3-res-jb"
SECRET = "sk-test-secret-key-123"
FEATURE = {
    "explanations": [{"description": "  mentions of cats "}],
    "pos_str": ["Ġcat", "Ġkitten"],
    "pos_values": [1.5, 1.25],
    "neg_str": ["Ġdog"],
    "neg_values": [-0.5],
}


class FakeNeuronpedia(BaseHTTPRequestHandler):
    """Answers by feature index: 1 ok, 2 404, 3 429 then ok, 4 500, 5 bad JSON, 6 slow, 12 200 null,
    13 200 [], 14-16 drip the status line / headers / body; every feature of an "unknown/..." set: 500."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        with server.lock:
            server.requests.append((self.path, dict(self.headers)))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if "/api/feature/unknown/" in self.path:
                self.reply(500, b'{"error": "unknown source"}')
            else:
                self.answer(int(self.path.rsplit("/", 1)[-1]))
        finally:
            with server.lock:
                server.in_flight -= 1

    def answer(self, index: int) -> None:
        server = self.server
        if index == 2:
            return self.reply(404, b'{"error": "not found"}')
        if index == 3 and server.hits.setdefault(index, 0) == 0:
            server.hits[index] = 1
            return self.reply(429, b"slow down", {"Retry-After": str(server.retry_after)})
        if index == 4:
            return self.reply(500, b"oops")
        if index == 5:
            return self.reply(200, b'{"explanations": [')
        if index == 6:
            time.sleep(1.0)
        if index == 7:  # redirect to another host name of this same server
            return self.reply(
                302, b"", {"Location": f"http://localhost:{server.server_address[1]}/api/feature/x/1"}
            )
        if index == 8:
            return self.reply(200, b'{"explanations": [], "junk": "' + b"x" * 5_000_000 + b'"}')
        if index == 9:
            return self.reply(200, json.dumps({"explanations": [{"description": "long " * 4000}]}).encode())
        if index == 10:
            return self.reply(503, b"busy", {"Retry-After": "540"})
        if index == 11:
            return self.trickle(json.dumps(FEATURE).encode())
        if index in (12, 13):  # Neuronpedia's answer for a feature it does not have
            return self.reply(200, b"null" if index == 12 else b"[]")
        if index in (14, 15, 16):
            return self.drip(("status line", "headers", "body")[index - 14])
        if index >= 100:
            time.sleep(0.05)
        self.reply(200, json.dumps(FEATURE).encode())

    def reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def trickle(self, body: bytes) -> None:
        """One byte every 0.2 s: each read is well within a socket timeout, the whole far beyond."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up, as it should

    def drip(self, phase: str) -> None:
        """Send one part of the answer a byte every 0.2 s (the rest at once): ~20 s in all."""
        body = json.dumps(FEATURE).encode()
        parts = {
            "status line": b"HTTP/1.1 200 OK" + b" " * 100 + b"\r\n",
            "headers": f"Content-Length: {len(body)}\r\nX-Pad: {'x' * 100}\r\n\r\n".encode(),
            "body": body,
        }
        if phase != "status line":
            parts["status line"] = b"HTTP/1.1 200 OK\r\n"
        try:
            for name, part in parts.items():
                chunks = [part[i : i + 1] for i in range(len(part))] if name == phase else [part]
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if name == phase:
                        time.sleep(0.2)
        except OSError:
            pass  # the client gave up, as it should
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeNeuronpedia)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.requests, httpd.hits = [], {}
    httpd.in_flight = httpd.max_in_flight = 0
    httpd.retry_after = 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)


def graph_of(*indices: int) -> Graph:
    graph = Graph()
    for index in indices:
        graph.add_node(Node.from_id(f"resid_3.{index}", neuronpedia_id=SET))
    return graph


def annotate(graph: Graph, server, cache: Path, **kwargs):
    """annotate_graph, then its answers cached as the scripts cache them."""
    options = dict(base_url=server.url, cache_dir=cache, timeout_s=0.3, retries=2, backoff_s=0.01)
    stats = annotate_graph(graph, **{**options, **kwargs})
    save_caches(stats.answers)
    return stats


def test_feature_url_follows_the_api():
    assert (
        feature_url("https://www.neuronpedia.org/", SET, 331)
        == "https://www.neuronpedia.org/api/feature/gpt2-small/3-res-jb/331"
    )


def test_a_found_feature_fills_explanation_and_logits(server, tmp_path):
    graph = graph_of(1)
    stats = annotate(graph, server, tmp_path)
    node = graph.nodes["resid_3.1"]
    assert node.explanation == "mentions of cats"
    assert node.logits_up == [("Ġcat", 1.5), ("Ġkitten", 1.25)]
    assert node.logits_down == [("Ġdog", -0.5)]
    assert [path for path, _ in server.requests] == ["/api/feature/gpt2-small/3-res-jb/1"]
    assert "x-api-key" not in {k.lower() for k in server.requests[0][1]}
    assert (stats.fetched, stats.requests) == (1, 1)


def test_logits_already_on_the_node_are_kept(server, tmp_path):
    graph = graph_of(1)
    graph.nodes["resid_3.1"].logits_up = [("mine", 9.0)]
    annotate(graph, server, tmp_path)
    assert graph.nodes["resid_3.1"].logits_up == [("mine", 9.0)]
    assert graph.nodes["resid_3.1"].explanation == "mentions of cats"


def test_the_key_is_sent_but_never_logged_or_cached(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    annotate(graph_of(1, 2, 4), server, tmp_path)
    assert all(headers.get("x-api-key") == SECRET for _, headers in server.requests)
    assert SECRET not in caplog.text
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert SECRET not in file.read_text(encoding="utf-8")


def test_a_missing_feature_is_drawn_plain_and_cached(server, tmp_path, caplog):
    graph = graph_of(2)
    annotate(graph, server, tmp_path)
    assert graph.nodes["resid_3.2"].explanation is None
    assert "404" in caplog.text
    server.requests.clear()
    annotate(graph_of(2), server, tmp_path)
    assert server.requests == []


def test_429_is_retried_honouring_retry_after(server, tmp_path):
    server.retry_after = 1
    graph = graph_of(3)
    start = time.perf_counter()
    annotate(graph, server, tmp_path, max_backoff_s=5)
    assert time.perf_counter() - start >= 0.9
    assert len(server.requests) == 2
    assert graph.nodes["resid_3.3"].explanation == "mentions of cats"


def test_retry_after_is_capped_by_max_backoff(server, tmp_path):
    server.retry_after = 30
    start = time.perf_counter()
    annotate(graph_of(3), server, tmp_path, max_backoff_s=0.05)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("index", "kind", "requests"),
    [(4, "HTTP 500", 2), (5, "malformed JSON", 1), (6, "timeout", 1)],
)
def test_failures_leave_the_node_plain_with_one_warning(server, tmp_path, caplog, index, kind, requests):
    graph = graph_of(index)
    stats = annotate(graph, server, tmp_path)
    assert graph.nodes[f"resid_3.{index}"].explanation is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and kind in warnings[0].getMessage()
    assert (stats.failed, len(server.requests)) == (1, requests)
    assert not list(tmp_path.rglob("*.json"))  # failures are not cached


def test_connection_refused_stops_after_a_few_failures(tmp_path, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    graph = graph_of(*range(1, 11))
    stats = annotate_graph(
        graph,
        base_url=f"http://127.0.0.1:{port}",
        cache_dir=tmp_path,
        timeout_s=0.3,
        max_workers=1,
        max_network_failures=3,
    )
    assert stats.requests == 3 and stats.failed == 10
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no connection" in warnings[0].getMessage()


def test_a_mixed_graph_never_raises_and_warns_once(server, tmp_path, caplog):
    graph = graph_of(1, 2, 4, 5)
    graph.add_node(Node.from_id("mlp_error_3", neuronpedia_id=SET))  # error: skipped
    graph.add_node(Node.from_id("attn_3.1"))  # no neuronpedia_id: skipped
    stats = annotate(graph, server, tmp_path)
    assert stats.features == 4
    assert graph.nodes["resid_3.1"].explanation == "mentions of cats"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "3 of 4" in warnings[0].getMessage()


def _age_cache(cache: Path, seconds: float) -> None:
    for file in cache.rglob("*.json"):
        stamp = time.time() - seconds
        os.utime(file, (stamp, stamp))


@pytest.mark.parametrize(("index", "ttl"), [(2, MISSING_TTL_S), (1, FOUND_TTL_S)], ids=["missing", "found"])
def test_a_cached_answer_is_asked_again_once_it_expires(server, tmp_path, index, ttl):
    annotate(graph_of(index), server, tmp_path)
    _age_cache(tmp_path, ttl - 3600)
    server.requests.clear()
    annotate(graph_of(index), server, tmp_path)
    assert server.requests == []  # still fresh
    _age_cache(tmp_path, ttl + 3600)
    annotate(graph_of(index), server, tmp_path)
    assert len(server.requests) == 1


def test_each_server_has_its_own_cache(server, tmp_path):
    annotate(graph_of(1), server, tmp_path)
    server.requests.clear()
    other = annotate(graph_of(1), server, tmp_path, base_url=server.url + "/mirror")
    assert other.fetched == 1 and len(server.requests) == 1


def test_many_nodes_are_fetched_concurrently_and_cached(server, tmp_path):
    graph = graph_of(*range(100, 300))
    start = time.perf_counter()
    cold = annotate(graph, server, tmp_path, max_workers=8, timeout_s=10)
    elapsed = time.perf_counter() - start
    assert (cold.requests, cold.fetched) == (200, 200)
    assert server.max_in_flight > 1
    assert elapsed < 200 * 0.05  # serial round trips would take at least this
    server.requests.clear()
    warm = annotate(graph_of(*range(100, 300)), server, tmp_path)
    assert (warm.requests, warm.from_cache) == (0, 200)
    assert server.requests == []


def test_annotated_nodes_are_not_requested_again(server, tmp_path):
    graph = graph_of(1)
    graph.nodes["resid_3.1"].explanation = "known"
    graph.nodes["resid_3.1"].logits_up = [("a", 1.0)]
    assert annotate(graph, server, tmp_path).requests == 0


def test_disabled_sends_nothing(server, tmp_path):
    graph = graph_of(1)
    config = SimpleNamespace(NEURONPEDIA=False, NEURONPEDIA_URL=server.url, DATA_DIR=tmp_path)
    assert neuronpedia_answers(graph, config) == [] and server.requests == []
    assert graph.nodes["resid_3.1"].explanation is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"explanations": None, "pos_str": "x", "pos_values": None},
        {
            "explanations": [{"description": 3}, "x"],
            "pos_str": [1, "a"],
            "pos_values": [1, True],
        },
    ],
)
def test_parse_feature_tolerates_odd_shapes(data):
    info = parse_feature(data)
    assert info.explanation is None and info.logits_up == [] and info.logits_down == []


def test_parse_feature_rejects_non_objects():
    with pytest.raises(TypeError):
        parse_feature([1, 2])


# --- Faults and secrets (one local server per fault) ---------------------------


def test_the_api_key_is_dropped_on_a_redirect_to_another_host(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", SECRET)
    annotate(graph_of(7), server, tmp_path, timeout_s=5)
    (first, first_headers), (second, second_headers) = server.requests
    assert first.endswith("/7") and first_headers.get("x-api-key") == SECRET
    assert second == "/api/feature/x/1" and "x-api-key" not in {k.lower() for k in second_headers}


def test_credentials_in_the_url_never_reach_logs_metadata_or_cache_paths(server, tmp_path, caplog):
    from sparse_coding.config import config_from_dict

    url = server.url.replace("http://", "http://user:hunter2@")
    with caplog.at_level(logging.DEBUG):
        annotate(graph_of(1, 4), server, tmp_path, base_url=url)
    assert "hunter2" not in caplog.text
    assert not [p for p in tmp_path.rglob("*") if "hunter2" in str(p)]
    metadata = config_from_dict({"NEURONPEDIA_URL": url}).to_metadata()
    assert "hunter2" not in json.dumps(metadata) and metadata["NEURONPEDIA_URL"] == server.url


def test_a_huge_body_leaves_the_node_plain_without_failing(server, tmp_path, caplog):
    graph = graph_of(8)
    stats = annotate(graph, server, tmp_path, timeout_s=10)
    assert stats.failed == 1 and graph.nodes["resid_3.8"].explanation is None
    assert "response too large" in caplog.text


def test_a_long_explanation_is_cut_with_an_ellipsis(server, tmp_path):
    from sparse_coding.labels.neuronpedia import MAX_EXPLANATION_CHARS

    graph = graph_of(9)
    annotate(graph, server, tmp_path, timeout_s=5)
    explanation = graph.nodes["resid_3.9"].explanation
    assert len(explanation) == MAX_EXPLANATION_CHARS and explanation.endswith("…")
    assert explanation[:-1] == ("long " * 4000).strip()[: MAX_EXPLANATION_CHARS - 1]


def test_the_run_spends_at_most_its_budget_then_says_how_many_were_left(server, tmp_path, caplog):
    graph = graph_of(10, *range(200, 220))  # Retry-After: 540 on the first, the rest fine but queued
    start = time.perf_counter()
    stats = annotate(
        graph, server, tmp_path, timeout_s=5, retries=5, max_backoff_s=600, budget_s=1.0, max_workers=1
    )
    assert time.perf_counter() - start < 3
    assert stats.failed >= 1
    assert "time budget spent" in caplog.text and f"of {len(graph.nodes)} features" in caplog.text


def test_a_trickling_server_holds_a_request_no_longer_than_its_deadline(server, tmp_path, caplog):
    start = time.perf_counter()
    stats = annotate(graph_of(11), server, tmp_path, timeout_s=1.0, retries=0)
    assert time.perf_counter() - start < 2.5  # the body alone would take ~40 s
    assert stats.failed == 1 and "timeout" in caplog.text


@pytest.mark.parametrize(("index", "phase"), [(14, "status line"), (15, "headers"), (16, "body")])
def test_the_deadline_covers_every_phase_of_the_exchange(server, tmp_path, caplog, index, phase):
    """A server dripping the status line or the headers (each byte well within a socket timeout)
    is cut at the deadline as a dripping body is."""
    start = time.perf_counter()
    stats = annotate(graph_of(index), server, tmp_path, timeout_s=1.0, retries=0)
    assert time.perf_counter() - start < 2.5, phase  # the phase alone takes ~20 s
    assert stats.failed == 1 and "timeout" in caplog.text


def test_a_server_that_never_accepts_the_connection_is_cut_at_the_deadline(tmp_path, caplog):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.create_connection(("127.0.0.1", port), timeout=5)]  # fills a backlog of 0
        start = time.perf_counter()
        stats = annotate_graph(
            graph_of(1), base_url=f"http://127.0.0.1:{port}", cache_dir=tmp_path, timeout_s=1.0, retries=0
        )
        elapsed = time.perf_counter() - start
        for sock in queued:
            sock.close()
    assert elapsed < 2.5 and stats.failed == 1


@pytest.mark.parametrize("index", [12, 13], ids=["null", "empty list"])
def test_a_200_of_null_or_an_empty_list_is_not_found_and_cached_as_such(server, tmp_path, caplog, index):
    graph = graph_of(index)
    stats = annotate(graph, server, tmp_path)
    assert graph.nodes[f"resid_3.{index}"].explanation is None
    assert "malformed" not in caplog.text and "not on Neuronpedia" in caplog.text
    assert stats.failed == 0 and stats.fetched == 1
    (cached,) = tmp_path.rglob(f"{index}.json")
    assert json.loads(cached.read_text()) == {"missing": True}
    server.requests.clear()
    again = annotate(graph_of(index), server, tmp_path)
    assert server.requests == [] and again.from_cache == 1


def test_a_server_error_is_retried_at_most_once_per_run_per_source(server, tmp_path, caplog):
    graph = Graph()
    for layer, source in enumerate(["unknown/a", "unknown/b"]):
        for index in range(5):
            graph.add_node(Node.from_id(f"resid_{layer}.{index}", neuronpedia_id=source))
    start = time.perf_counter()
    stats = annotate(graph, server, tmp_path, retries=3, max_workers=1, backoff_s=0.5)
    per_source = {s: sum(f"/unknown/{s}/" in path for path, _ in server.requests) for s in "ab"}
    assert per_source == {"a": 5 + 1, "b": 5 + 1}  # each feature once, one retry per source
    assert stats.failed == 10 and time.perf_counter() - start < 5
    assert not list(tmp_path.rglob("*.json"))  # failures are not cached
