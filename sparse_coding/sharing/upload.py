"""Put a Neuronpedia graph file on Neuronpedia (`sparse-coding upload FILE`, `sparse_coding/cli/upload.py`).

Neuronpedia's three steps (its routes /api/graph/signed-put and /api/graph/save-to-db):
1. POST {NEURONPEDIA_URL}/api/graph/signed-put with header ``x-api-key`` and
   ``{"filename", "contentLength"}``; the reply holds a signed ``url`` and a
   ``putRequestId``. The route takes .json files of 1024 bytes to 200 MiB.
2. PUT the file to that url (no key: it is signed).
3. POST {NEURONPEDIA_URL}/api/graph/save-to-db with ``{"putRequestId"}`` and the key.

The key (NEURONPEDIA_API_KEY) goes only to NEURONPEDIA_URL's host, over https
(http only to a loopback host), and never across a redirect: no request here
follows one. 429/502/503/504 are retried with backoff, honouring Retry-After.
Built on urllib3 directly (its Retry and Timeout); small on purpose.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3

from sparse_coding.config import redact_url
from sparse_coding.errors import ConfigError, SparseCodingError
from sparse_coding.sharing.neuronpedia_graph import NAME_RE

logger = logging.getLogger(__name__)

MIN_BYTES, MAX_BYTES = 1024, 200 * 1024 * 1024  # Neuronpedia's signed-put route
LOOPBACK = ("127.0.0.1", "localhost", "::1")
RETRIES = urllib3.Retry(
    total=4,
    connect=2,
    redirect=0,
    raise_on_redirect=False,
    status_forcelist=(429, 502, 503, 504),
    allowed_methods=frozenset({"POST", "PUT"}),
    backoff_factor=0.5,
    respect_retry_after_header=True,
    raise_on_status=False,
)
TIMEOUT = urllib3.Timeout(connect=10, read=120)


class UploadError(SparseCodingError):
    """Neuronpedia refused or broke the upload; the message says which step and why."""


def check_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and metadata, after the checks Neuronpedia's routes make (name, size, slug, scan)."""
    if path.suffix != ".json" or not path.is_file():
        raise UploadError(
            f"{path} is not a .json file; export one with: sparse-coding export GRAPH --to neuronpedia"
        )
    data = path.read_bytes()
    if not MIN_BYTES <= len(data) <= MAX_BYTES:
        raise UploadError(
            f"{path} has {len(data)} bytes; Neuronpedia takes graph files of {MIN_BYTES} to {MAX_BYTES} bytes"
        )
    try:
        metadata = json.loads(data)["metadata"]
        names = {key: metadata[key] for key in ("slug", "scan")}
    except (ValueError, KeyError, TypeError) as e:
        raise UploadError(f"{path} is not a Neuronpedia graph file (no metadata.slug/scan): {e}") from e
    for key, value in names.items():
        if not isinstance(value, str) or not NAME_RE.fullmatch(value):
            raise UploadError(
                f"{path}: metadata.{key} {value!r} must use letters, digits, '_', '.' and '-' only"
            )
    return data, metadata


def api_base(url: str) -> str:
    """NEURONPEDIA_URL without a trailing slash, if the key may go there (https, or http to loopback)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK):
        return url.rstrip("/")
    raise ConfigError(
        f"NEURONPEDIA_URL {redact_url(url)!r} must be https (http only for a local test host): "
        f"the upload sends NEURONPEDIA_API_KEY there"
    )


def upload(path: Path, *, base_url: str, api_key: str) -> dict:
    """The three steps for `path`; the save step's reply (Neuronpedia's answer, e.g. the graph's url)."""
    data, metadata = check_file(path)
    base = api_base(base_url)
    http = urllib3.PoolManager(retries=RETRIES, timeout=TIMEOUT)
    signed = _post(http, base, "signed-put", {"filename": path.name, "contentLength": len(data)}, api_key)
    if not isinstance(signed.get("url"), str) or "putRequestId" not in signed:
        raise UploadError(
            f"signed-put: {urlsplit(base).hostname} replied without a url and putRequestId: {signed}"
        )
    put = http.request(
        "PUT", signed["url"], body=data, headers={"Content-Type": "application/json"}, redirect=False
    )
    _check("PUT to the signed url", put, urlsplit(signed["url"]).hostname)
    logger.info("uploaded %s (%d bytes) for slug %s", path.name, len(data), metadata["slug"])
    return _post(http, base, "save-to-db", {"putRequestId": signed["putRequestId"]}, api_key)


def _post(http: urllib3.PoolManager, base: str, step: str, body: dict, api_key: str) -> dict:
    """POST to the step's route (``{base}/api/graph/{step}``) with the key; its JSON reply, or
    UploadError naming the step and the reason."""
    url, host = f"{base}/api/graph/{step}", urlsplit(base).hostname
    try:
        response = http.request(
            "POST",
            url,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "x-api-key": api_key},
            redirect=False,
        )
    except urllib3.exceptions.HTTPError as e:
        raise UploadError(f"{step}: no answer from {host} ({type(e).__name__}: {e})") from e
    _check(step, response, host)
    try:
        reply = json.loads(response.data)
    except ValueError as e:
        raise UploadError(f"{step}: {host} replied with no JSON: {response.data[:200]!r}") from e
    if not isinstance(reply, dict):
        raise UploadError(f"{step}: {host} replied {reply!r}, not a JSON object")
    return reply


def _check(step: str, response: urllib3.BaseHTTPResponse, host: str | None) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        target = urlsplit(response.headers.get("Location", "")).hostname or "?"
        raise UploadError(
            f"{step}: {host} redirected to {target}; not followed (the key goes to {host} only)"
        )
    reasons = {
        401: "NEURONPEDIA_API_KEY was refused",
        403: "NEURONPEDIA_API_KEY may not do this",
        413: "the file is too large for Neuronpedia",
        429: "too many requests; try again later (Neuronpedia limits uploads per day)",
    }
    reason = reasons.get(status, response.data[:200].decode("utf-8", "replace"))
    raise UploadError(f"{step}: {host} answered {status}: {reason}")
