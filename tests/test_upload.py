"""`sparse-coding upload` against a fake Neuronpedia on 127.0.0.1: the three steps, the key's reach,
refusals, Retry-After, a redirect to another host and malformed replies."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparse_coding.cli import run
from sparse_coding.errors import ConfigError
from sparse_coding.sharing.upload import UploadError, api_base, upload

KEY = "np-secret-key"


class FakeNeuronpedia:
    """A server whose replies per path are set by the test; every request is recorded."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[dict] = []
        self.replies: dict[str, list[tuple[int, dict, bytes]]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "headers": dict(self.headers),
                        "body": body,
                        "time": time.monotonic(),
                    }
                )
                queue = fake.replies.get(path) or [(404, {}, b"{}")]
                status, headers, data = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, path: str, *replies) -> None:
        self.replies[path] = list(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeNeuronpedia()
    yield fake
    fake.close()


@pytest.fixture
def graph_file(tmp_path):
    data = {"metadata": {"slug": "my-graph", "scan": "gpt2-small", "prompt_tokens": ["a"], "prompt": "a"}}
    data["nodes"] = [{"node_id": f"n{i}", "padding": "x" * 40} for i in range(40)]  # over the 1 KiB minimum
    path = tmp_path / "grads_graph.neuronpedia.json"
    path.write_text(json.dumps(data))
    return path


def _ok(data: dict) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _success(server) -> None:
    server.reply(
        "/api/graph/signed-put", _ok({"url": f"{server.url}/s3/upload?sig=1", "putRequestId": "req-1"})
    )
    server.reply("/s3/upload", (200, {}, b""))
    server.reply("/api/graph/save-to-db", _ok({"url": "https://np.example/gpt2-small/graph?slug=my-graph"}))


def test_upload_runs_the_three_steps_and_sends_the_key_only_to_the_api(server, graph_file):
    _success(server)
    reply = upload(graph_file, base_url=server.url, api_key=KEY)
    assert reply["url"].endswith("slug=my-graph")
    signed, put, save = server.requests
    assert (signed["method"], signed["path"]) == ("POST", "/api/graph/signed-put")
    assert json.loads(signed["body"]) == {
        "filename": graph_file.name,
        "contentLength": graph_file.stat().st_size,
    }
    assert signed["headers"]["x-api-key"] == KEY and save["headers"]["x-api-key"] == KEY
    assert (put["method"], put["body"]) == ("PUT", graph_file.read_bytes())
    assert "x-api-key" not in {name.lower() for name in put["headers"]}
    assert json.loads(save["body"]) == {"putRequestId": "req-1"}


@pytest.mark.parametrize(
    "status, message",
    [(401, "401: NEURONPEDIA_API_KEY was refused"), (413, "413: the file is too large for Neuronpedia")],
)
def test_refusals_name_the_step_and_the_reason(server, graph_file, status, message):
    server.reply("/api/graph/signed-put", (status, {}, b'{"error": "no"}'))
    with pytest.raises(UploadError, match=f"signed-put: 127.0.0.1 answered {message}"):
        upload(graph_file, base_url=server.url, api_key=KEY)
    assert len(server.requests) == 1


def test_429_is_retried_after_the_servers_retry_after(server, graph_file):
    _success(server)
    server.reply(
        "/api/graph/signed-put",
        (429, {"Retry-After": "1"}, b"{}"),
        server.replies["/api/graph/signed-put"][0],
    )
    upload(graph_file, base_url=server.url, api_key=KEY)
    first, second = [r for r in server.requests if r["path"] == "/api/graph/signed-put"]
    assert second["time"] - first["time"] >= 0.9


def test_a_redirect_to_another_host_is_not_followed_and_the_key_never_reaches_it(server, graph_file):
    other = FakeNeuronpedia("127.0.0.2")
    try:
        server.reply("/api/graph/signed-put", (307, {"Location": f"{other.url}/api/graph/signed-put"}, b""))
        with pytest.raises(UploadError, match="redirected to 127.0.0.2; not followed"):
            upload(graph_file, base_url=server.url, api_key=KEY)
        assert other.requests == []
    finally:
        other.close()


@pytest.mark.parametrize(
    "reply, message",
    [
        ((200, {}, b"<html>oops"), "replied with no JSON"),
        (_ok({"putRequestId": "x"}), "without a url and putRequestId"),
    ],
)
def test_a_malformed_reply_is_a_clear_error(server, graph_file, reply, message):
    server.reply("/api/graph/signed-put", reply)
    with pytest.raises(UploadError, match=message):
        upload(graph_file, base_url=server.url, api_key=KEY)


def test_files_and_names_neuronpedia_would_refuse_are_stopped_before_sending(server, tmp_path, graph_file):
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"metadata": {"slug": "a", "scan": "b"}}))
    with pytest.raises(UploadError, match="takes graph files of 1024 to"):
        upload(small, base_url=server.url, api_key=KEY)
    bad = tmp_path / "bad.json"
    bad.write_text(graph_file.read_text().replace('"my-graph"', '"my graph"'))
    with pytest.raises(UploadError, match="metadata.slug 'my graph' must use letters"):
        upload(bad, base_url=server.url, api_key=KEY)
    assert server.requests == []
    with pytest.raises(ConfigError, match="must be https"):
        api_base("http://neuronpedia.example")


def test_dry_run_sends_nothing_and_a_missing_key_is_a_clear_error(
    server, graph_file, tmp_path, monkeypatch, capsys
):
    config = tmp_path / "c.yaml"
    config.write_text(f'NEURONPEDIA_URL: "{server.url}"\n')
    run("upload", [str(graph_file), "--dry-run", "--config", str(config), "-q"])
    assert "nothing sent" in capsys.readouterr().out and server.requests == []
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        run("upload", [str(graph_file), "--config", str(config), "-q"])
    assert "NEURONPEDIA_API_KEY is unset" in capsys.readouterr().err
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    _success(server)
    run("upload", [str(graph_file), "--config", str(config), "-q"])
    out = capsys.readouterr()
    assert "saved on" in out.out and KEY not in out.out + out.err
