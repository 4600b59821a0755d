"""Neuronpedia annotations for graph nodes: explanations and top logits.

For every feature node with a ``neuronpedia_id`` (the SAE set, e.g.
``gpt2-small/3-res-jb``) this fetches
``{base_url}/api/feature/{neuronpedia_id}/{index}`` and fills the node's
explanation (and its logits if it has none). Neuronpedia is a convenience,
never a dependency of a run:

- every request has a total deadline (a server trickling bytes cannot hold
  it longer than ``timeout_s``) and a body size cap; 429 and 5xx are retried
  with exponential backoff, honouring ``Retry-After`` up to a cap; and the
  whole run spends at most ``budget_s`` (30 s) on Neuronpedia, then goes on
  without it, saying how many features were left unannotated;
- explanations and token strings are cut to a length a label can show, with
  an ellipsis;
- answers (including "feature not found") are cached on disk, one folder per
  server, so a feature is fetched once across runs; a "not found" is asked
  again after a week and an answer after a month, as Neuronpedia adds and
  revises explanations; cache paths are built with `storage.safe_path`, so
  an SAE cfg's ``neuronpedia_id`` (``../../x``) never leads out of the cache;
- requests run concurrently in a thread pool, and after a few network-level
  failures (no network, refused, timed out) the rest are skipped, so an
  offline run costs one timeout, not one per node;
- any failure leaves the node drawn without annotations and ends in a single
  summarised warning;
- the API key (``NEURONPEDIA_API_KEY``, header ``x-api-key``) is only ever put
  in headers of requests to the configured host (a redirect to another host
  drops it), never logged, cached or written; credentials in the base URL
  (``https://user:pass@host``) are never logged either (`redact_url`).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from sparse_coding import storage
from sparse_coding.config import redact_url
from sparse_coding.errors import StorageError
from sparse_coding.graphs.graph import Graph, Node

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
API_KEY_ENV = "NEURONPEDIA_API_KEY"
API_KEY_HEADER = "x-api-key"
# A feature's JSON is ~50 KB; anything far larger is not a feature.
MAX_BODY_BYTES = 2_000_000
# Longer explanations or token strings are cut (with "…"): a label shows ~160 characters.
MAX_EXPLANATION_CHARS = 500
MAX_TOKEN_CHARS = 64
# Seconds a whole run may spend on Neuronpedia (waits and retries included).
DEFAULT_BUDGET_S = 30.0
# Age after which a cached answer is fetched again.
MISSING_TTL_S = 7 * 24 * 3600
FOUND_TTL_S = 30 * 24 * 3600
_RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class FeatureInfo:
    """What Neuronpedia says about one feature (the parts drawn in labels)."""

    explanation: str | None = None
    logits_up: list[tuple[str, float]] = field(default_factory=list)
    logits_down: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class AnnotationStats:
    """Counts of one ``annotate_graph`` call; ``requests`` counts HTTP requests sent."""

    features: int = 0
    from_cache: int = 0
    fetched: int = 0
    failed: int = 0
    requests: int = 0


class FetchError(Exception):
    """One feature could not be fetched; ``kind`` summarises why ("HTTP 500")."""

    def __init__(self, kind: str, detail: str = "", network: bool = False) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.network = network


def feature_url(base_url: str, neuronpedia_id: str, index: int) -> str:
    """``gpt2-small/3-res-jb`` + 331 -> ``{base_url}/api/feature/gpt2-small/3-res-jb/331``."""
    return f"{base_url.rstrip('/')}/api/feature/{quote(neuronpedia_id.strip('/'), safe='/')}/{int(index)}"


def _pairs(strings: Any, values: Any, limit: int) -> list[tuple[str, float]]:
    """Zip token strings with values, dropping anything that is not (str, number)."""
    if not isinstance(strings, list) or not isinstance(values, list):
        return []
    pairs = []
    for token, value in zip(strings, values, strict=False):
        if isinstance(token, str) and isinstance(value, int | float) and not isinstance(value, bool):
            pairs.append((_cut(token, MAX_TOKEN_CHARS), float(value)))
    return pairs[:limit]


def _explanation(data: dict[str, Any]) -> str | None:
    for item in data.get("explanations") or []:
        if (
            isinstance(item, dict)
            and isinstance(item.get("description"), str)
            and item["description"].strip()
        ):
            return _cut(item["description"].strip(), MAX_EXPLANATION_CHARS)
    return None


def _cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_feature(data: Any, max_logits: int = 10) -> FeatureInfo:
    """Pick explanation and top logits out of a feature JSON, tolerating missing parts.

    Raises:
        TypeError: the JSON is not an object.
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return FeatureInfo(
        explanation=_explanation(data),
        logits_up=_pairs(data.get("pos_str"), data.get("pos_values"), max_logits),
        logits_down=_pairs(data.get("neg_str"), data.get("neg_values"), max_logits),
    )


# ---------------------------------------------------------------- cache


def server_cache_dir(cache_dir: Path, base_url: str) -> Path:
    """The cache folder of one server: answers of another server (a self-hosted one) never mix in."""
    server = base_url.split("://", 1)[-1].strip("/")
    return storage.safe_path(cache_dir, server)


def _cache_path(cache_dir: Path, neuronpedia_id: str, index: int) -> Path:
    """``cache_dir/<id parts>/<index>.json``; ids come from SAE cfgs, so ``..`` never leaves the cache."""
    parts = [p for p in neuronpedia_id.strip("/").split("/") if p]
    return storage.safe_path(cache_dir, *parts, f"{int(index)}.json")


def _read_cache(path: Path) -> FeatureInfo | None | bool:
    """The cached info, None for a cached "not found", False when not cached, expired or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
        if age > (MISSING_TTL_S if data.get("missing") else FOUND_TTL_S):
            return False
        if data.get("missing"):
            return None
        up, down = data.get("logits_up", []), data.get("logits_down", [])
        return FeatureInfo(
            data.get("explanation"),
            [(str(t), float(v)) for t, v in up],
            [(str(t), float(v)) for t, v in down],
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _write_cache(path: Path, info: FeatureInfo | None) -> None:
    """Atomic write (`storage.write_atomic`), so concurrent runs never read half a cache file."""
    data = (
        {"missing": True}
        if info is None
        else {
            "explanation": info.explanation,
            "logits_up": info.logits_up,
            "logits_down": info.logits_down,
        }
    )
    try:
        storage.write_atomic(path, json.dumps(data, ensure_ascii=False))
    except StorageError as e:  # a cache, never a reason to fail the run
        logger.debug("could not cache %s: %s", path, e)


# ---------------------------------------------------------------- HTTP


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class _KeyOnlyToHost(requests.Session):
    """A session that drops the API key when a redirect leaves the configured origin.

    requests strips ``Authorization`` on such redirects but keeps custom
    headers such as ``x-api-key``; this strips that too.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.origin = _origin(base_url)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)
        if _origin(str(prepared_request.url)) != self.origin:
            prepared_request.headers.pop(API_KEY_HEADER, None)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer, its body read in full (within the size cap and deadline)."""

    status: int
    body: bytes
    retry_after: float | None


@dataclass
class _Client:
    """Shared settings and state of one annotation run (thread-safe counters)."""

    base_url: str
    headers: dict[str, str]
    timeout_s: float
    retries: int
    backoff_s: float
    max_backoff_s: float
    max_logits: int
    max_network_failures: int
    deadline: float  # time.monotonic() when the run's Neuronpedia budget is spent
    requests_sent: int = 0
    network_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = _KeyOnlyToHost(self.base_url)
        return self.local.session

    def offline(self) -> bool:
        with self.lock:
            return self.network_failures >= self.max_network_failures

    def remaining(self) -> float:
        """Seconds left of the run's budget; FetchError when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchError("skipped: Neuronpedia time budget spent", network=True)
        return left

    def get(self, url: str) -> _Answer:
        if self.offline():
            raise FetchError("skipped", "Neuronpedia unreachable earlier in this run", network=True)
        timeout = min(self.timeout_s, self.remaining())
        with self.lock:
            self.requests_sent += 1
        try:
            with self.session().get(url, headers=self.headers, timeout=timeout, stream=True) as response:
                body = _read_body(response, time.monotonic() + timeout)
                return _Answer(response.status_code, body, _retry_after(response))
        except (requests.RequestException, TimeoutError) as e:
            with self.lock:
                self.network_failures += 1
            kind = "timeout" if isinstance(e, (requests.Timeout, TimeoutError)) else "no connection"
            raise FetchError(kind, type(e).__name__, network=True) from e

    def fetch(self, neuronpedia_id: str, index: int) -> FeatureInfo | None:
        """The feature's info, or None when Neuronpedia does not have it (404)."""
        url = feature_url(self.base_url, neuronpedia_id, index)
        shown_url = redact_url(url)
        for attempt in range(self.retries + 1):
            answer = self.get(url)
            if answer.status == 404:
                return None
            if answer.status in _RETRY_STATUS and attempt < self.retries:
                wait = self.backoff_s * 2**attempt if answer.retry_after is None else answer.retry_after
                time.sleep(min(wait, self.max_backoff_s, self.remaining()))
                continue
            if answer.status != 200:
                raise FetchError(f"HTTP {answer.status}", shown_url)
            try:
                return parse_feature(json.loads(answer.body), self.max_logits)
            except (ValueError, TypeError) as e:
                raise FetchError("malformed JSON", shown_url) from e
        raise AssertionError("unreachable: the last attempt returns or raises")


def _read_body(response: requests.Response, deadline: float) -> bytes:
    """The whole body, read a chunk at a time so that neither its size nor its duration is unbounded.

    Raises:
        FetchError: over MAX_BODY_BYTES.
        TimeoutError: not finished by `deadline` (a server trickling bytes).
    """
    body = bytearray()
    while chunk := response.raw.read1(65536, decode_content=True):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FetchError("response too large", f"over {MAX_BODY_BYTES} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("body not received within the request deadline")
    return bytes(body)


# ---------------------------------------------------------------- graph


def _wanted(node: Node) -> bool:
    """Feature nodes with a known SAE set that still lack an explanation or logits."""
    if node.feature is None or not node.neuronpedia_id:
        return False
    return node.explanation is None or not (node.logits_up or node.logits_down)


def _apply(node: Node, info: FeatureInfo) -> None:
    if node.explanation is None and info.explanation:
        node.explanation = info.explanation
    if not node.logits_up and not node.logits_down:
        node.logits_up, node.logits_down = list(info.logits_up), list(info.logits_down)


def _lookup(client: _Client, cache_dir: Path, key: tuple[str, int]) -> tuple[FeatureInfo | None, bool]:
    """(info or None, came from cache); raises FetchError."""
    path = _cache_path(cache_dir, *key)
    cached = _read_cache(path)
    if cached is not False:
        return cached, True  # type: ignore[return-value]
    info = client.fetch(*key)
    _write_cache(path, info)
    return info, False


def _warn_failures(failures: dict[tuple[str, int], str], total: int) -> None:
    if not failures:
        return
    counts = Counter(failures.values())
    reasons = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    (np_id, index), kind = next(iter(failures.items()))
    logger.warning(
        "Neuronpedia: %d of %d features drawn without annotations (%s; e.g. %s/%d: %s)",
        len(failures),
        total,
        reasons,
        np_id,
        index,
        kind,
    )


def annotate_graph(
    graph: Graph,
    *,
    enabled: bool = True,
    base_url: str = DEFAULT_BASE_URL,
    cache_dir: Path,
    api_key: str | None = None,
    timeout_s: float = 10.0,
    max_workers: int = 8,
    retries: int = 3,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    max_logits: int = 10,
    max_network_failures: int = 3,
    budget_s: float = DEFAULT_BUDGET_S,
) -> AnnotationStats:
    """Fill explanations (and missing logits) of feature nodes from Neuronpedia.

    Never raises for network, HTTP or JSON problems: affected nodes stay
    unannotated and one warning summarises them.

    Args:
        graph: annotated in place.
        enabled: False skips Neuronpedia entirely (offline runs).
        base_url: Neuronpedia server, e.g. a self-hosted instance.
        cache_dir: folder of the on-disk cache (a folder per server, one small
            JSON per feature).
        api_key: sent as ``x-api-key``; defaults to ``$NEURONPEDIA_API_KEY``.
        timeout_s: per-request deadline (connect, headers and body together).
        max_workers: concurrent requests.
        retries, backoff_s, max_backoff_s: retries on 429/5xx, waiting
            ``backoff_s * 2**attempt`` or ``Retry-After``, at most ``max_backoff_s``.
        max_logits: up-/down-weighted tokens kept per feature.
        max_network_failures: after this many network-level failures the
            remaining features are skipped.
        budget_s: seconds the whole call may spend on Neuronpedia; features
            still unfetched then are skipped (and counted in the warning).

    Returns:
        Counts of features looked up, cache hits, fetches, failures and requests.
    """
    stats = AnnotationStats()
    nodes = [n for n in graph.nodes.values() if _wanted(n)]
    keys = sorted({(str(n.neuronpedia_id), int(n.feature)) for n in nodes})  # type: ignore[arg-type]
    stats.features = len(keys)
    if not enabled or not keys:
        logger.info("Neuronpedia annotations %s", "off" if not enabled else "not needed")
        return stats
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    client = _Client(
        base_url,
        {API_KEY_HEADER: key} if key else {},
        timeout_s,
        retries,
        backoff_s,
        max_backoff_s,
        max_logits,
        max_network_failures,
        time.monotonic() + budget_s,
    )
    cache = server_cache_dir(cache_dir, redact_url(base_url))
    results, failures = _lookup_all(client, cache, keys, max_workers, stats)
    for node in nodes:
        if (info := results.get((str(node.neuronpedia_id), int(node.feature)))) is not None:  # type: ignore[arg-type]
            _apply(node, info)
    stats.requests = client.requests_sent
    _warn_failures(failures, len(keys))
    logger.info(
        "Neuronpedia: %d features, %d cached, %d fetched, %d requests",
        stats.features,
        stats.from_cache,
        stats.fetched,
        stats.requests,
    )
    return stats


def _lookup_all(
    client: _Client,
    cache_dir: Path,
    keys: list[tuple[str, int]],
    max_workers: int,
    stats: AnnotationStats,
) -> tuple[dict[tuple[str, int], FeatureInfo | None], dict[tuple[str, int], str]]:
    """Look every key up concurrently; returns infos and failure kinds by key."""
    results: dict[tuple[str, int], FeatureInfo | None] = {}
    failures: dict[tuple[str, int], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="neuronpedia") as pool:
        futures = {key: pool.submit(_lookup, client, cache_dir, key) for key in keys}
        for key, future in futures.items():
            try:
                info, cached = future.result()
            except FetchError as e:
                failures[key] = e.kind
                stats.failed += 1
                continue
            except Exception as e:  # a run never fails because of Neuronpedia
                logger.debug("Neuronpedia lookup of %s/%d failed", *key, exc_info=True)
                failures[key] = f"unexpected {type(e).__name__}"
                stats.failed += 1
                continue
            results[key] = info
            stats.from_cache += cached
            stats.fetched += not cached
            if info is None:
                failures[key] = "not on Neuronpedia (404)"
    return results, failures
