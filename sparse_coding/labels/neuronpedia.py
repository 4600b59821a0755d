"""Neuronpedia annotations for graph nodes: explanations and top logits.

For every feature node with a ``neuronpedia_id`` (the SAE set, e.g.
``gpt2-small/3-res-jb``) this fetches
``{base_url}/api/feature/{neuronpedia_id}/{index}`` and fills the node's
explanation (and its logits if it has none). Neuronpedia is a convenience,
never a dependency of a run:

- requests run concurrently in a thread pool, each under a deadline and
  retried as `neuronpedia_http` says; the whole run spends at most
  ``budget_s`` (30 s) on Neuronpedia, and after a few network-level failures
  the rest are skipped, so an offline run costs one timeout, not one per node;
- explanations and token strings are cut to a length a label can show, with
  an ellipsis; values that are not finite numbers are dropped;
- answers, including "not found" (a 404, or a 200 whose body is ``null`` or
  ``[]``: older versions of Neuronpedia's feature route built the 404 body
  without returning it), are cached one file per feature and one folder per
  server (the caller writes `AnnotationStats.answers`), and asked again after
  a week ("not found") or a month (an answer), as Neuronpedia adds and
  revises explanations. Paths go through
  `storage.safe_path`, so an SAE cfg's ``neuronpedia_id`` (``../../x``) never
  leads out of the cache, and a link there only leaves that feature uncached;
- any failure leaves the node drawn without annotations and ends in a single
  summarised warning;
- the API key (``NEURONPEDIA_API_KEY``) only goes to the configured host
  (`neuronpedia_http`) and is never logged, cached or written; nor are
  credentials in the base URL (`redact_url`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sparse_coding.config import redact_url
from sparse_coding.config.schema import NEURONPEDIA_URL
from sparse_coding.errors import StorageError
from sparse_coding.files import storage
from sparse_coding.files.cache import Cache, Stored
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.labels.neuronpedia_http import API_KEY_HEADER, Client, FetchError

logger = logging.getLogger(__name__)

API_KEY_ENV = "NEURONPEDIA_API_KEY"
# Longer explanations or token strings are cut (with "…"): a label shows ~160 characters.
MAX_EXPLANATION_CHARS = 500
MAX_TOKEN_CHARS = 64
# Seconds a whole run may spend on Neuronpedia (waits and retries included).
DEFAULT_BUDGET_S = 30.0
# Age after which a cached answer is fetched again.
MISSING_TTL_S = 7 * 24 * 3600
FOUND_TTL_S = 30 * 24 * 3600
NOT_FOUND = "not on Neuronpedia (404, or an empty answer)"


@dataclass(frozen=True)
class FeatureInfo:
    """What Neuronpedia says about one feature (the parts drawn in labels)."""

    explanation: str | None = None
    logits_up: list[tuple[str, float]] = field(default_factory=list)
    logits_down: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class AnnotationStats:
    """Counts of one ``annotate_graph`` call, and what it fetched as (cache file, answer) pairs for
    the caller to write (`Cache.save`)."""

    features: int = 0
    from_cache: int = 0
    fetched: int = 0
    failed: int = 0
    requests: int = 0
    answers: list[tuple[Cache, FeatureInfo | None]] = field(default_factory=list)


def feature_url(base_url: str, neuronpedia_id: str, index: int) -> str:
    """``gpt2-small/3-res-jb`` + 331 -> ``{base_url}/api/feature/gpt2-small/3-res-jb/331``."""
    return f"{base_url.rstrip('/')}/api/feature/{quote(neuronpedia_id.strip('/'), safe='/')}/{int(index)}"


def _pairs(strings: Any, values: Any, limit: int) -> list[tuple[str, float]]:
    """Zip token strings with values, dropping anything that is not (str, finite number)."""
    if not isinstance(strings, list) or not isinstance(values, list):
        return []
    pairs = []
    for token, value in zip(strings, values, strict=False):
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if isinstance(token, str) and number:
            pairs.append((_cut(token, MAX_TOKEN_CHARS), float(value)))
    return pairs[:limit]


def _explanation(data: dict[str, Any]) -> str | None:
    for item in data.get("explanations") or []:
        text = item.get("description") if isinstance(item, dict) else None
        if isinstance(text, str) and text.strip():
            return _cut(text.strip(), MAX_EXPLANATION_CHARS)
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


def _encode(info: FeatureInfo | None, key: dict[str, Any]) -> bytes:
    data = (
        {"missing": True}
        if info is None
        else {"explanation": info.explanation, "logits_up": info.logits_up, "logits_down": info.logits_down}
    )
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _decode(data: bytes) -> tuple[dict[str, Any], FeatureInfo | None]:
    stored = json.loads(data)
    if stored.get("missing"):
        return {}, None
    explanation = stored.get("explanation")
    up, down = (_pairs([t for t, _ in pairs], [v for _, v in pairs], 10**6) for pairs in (
        stored.get("logits_up", []), stored.get("logits_down", [])
    ))  # fmt: skip
    return {}, FeatureInfo(explanation if isinstance(explanation, str) else None, up, down)


def _too_old(stored: Stored[FeatureInfo | None], key: dict[str, Any]) -> list[str]:
    ttl = MISSING_TTL_S if stored.value is None else FOUND_TTL_S
    return [f"{stored.age_s / 86400:.0f} days old"] if stored.age_s > ttl else []


# ---------------------------------------------------------------- fetch


def fetch(client: Client, neuronpedia_id: str, index: int, max_logits: int) -> FeatureInfo | None:
    """The feature's info, or None when Neuronpedia does not have it (404, or 200 ``null``/``[]``).

    Raises:
        FetchError: why it could not be fetched.
    """
    url = feature_url(client.base_url, neuronpedia_id, index)
    status, body = client.get(url, source=neuronpedia_id)
    if status == 404:
        return None
    if status != 200:
        raise FetchError(f"HTTP {status}", redact_url(url))
    try:
        data = json.loads(body)
        return None if data is None or data == [] else parse_feature(data, max_logits)
    except (ValueError, TypeError) as e:
        raise FetchError("malformed JSON", redact_url(url)) from e


# ---------------------------------------------------------------- graph


def _wanted(node: Node) -> bool:
    """Feature nodes with a known SAE set that still lack an explanation or logits."""
    if node.feature is None or not node.neuronpedia_id:
        return False
    return node.explanation is None or not (node.logits_up or node.logits_down)


def _apply_all(nodes: list[Node], infos: dict[tuple[str, int], FeatureInfo | None]) -> None:
    """Fill what each node lacks from its feature's info, where one was found."""
    for node in nodes:
        info = infos.get((str(node.neuronpedia_id), int(node.feature)))  # type: ignore[arg-type]
        if info is not None and node.explanation is None and info.explanation:
            node.explanation = info.explanation
        if info is not None and not node.logits_up and not node.logits_down:
            node.logits_up, node.logits_down = list(info.logits_up), list(info.logits_down)


def _lookup(
    client: Client, cache_dir: Path | None, key: tuple[str, int], max_logits: int
) -> tuple[FeatureInfo | None, Cache | None, bool]:
    """(info or None, its cache file ``cache_dir/<id parts>/<index>.json`` (None: not cached), came from
    cache); raises FetchError."""
    cache = None
    try:
        if cache_dir is not None:
            parts = [part for part in key[0].split("/") if part]
            path = storage.safe_path(cache_dir, *parts, f"{key[1]}.json")
            cache = Cache(path, {}, _encode, _decode, _too_old, inside=cache_dir)
    except StorageError as e:  # a link in the cache folder: this feature is not cached
        logger.debug("not caching %s/%d: %s", *key, e)
    lookup = cache.load() if cache is not None else None
    if lookup is not None and lookup.problem == "":
        return lookup.value, cache, True
    return fetch(client, *key, max_logits), cache, False


def _report(stats: AnnotationStats, failures: dict[tuple[str, int], str]) -> None:
    """One warning summarising the failures, if any, then one line of counts."""
    if failures:
        counts = Counter(failures.values())
        reasons = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
        (np_id, index), kind = next(iter(failures.items()))
        logger.warning(
            "Neuronpedia: %d of %d features drawn without annotations (%s; e.g. %s/%d: %s)",
            len(failures), stats.features, reasons, np_id, index, kind,
        )  # fmt: skip
    logger.info(
        "Neuronpedia: %d features, %d cached, %d fetched, %d requests",
        stats.features, stats.from_cache, stats.fetched, stats.requests,
    )  # fmt: skip


def annotate_graph(
    graph: Graph,
    *,
    base_url: str = NEURONPEDIA_URL,
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
    """Fill explanations (and missing logits) of feature nodes from Neuronpedia; never raises for
    network, HTTP or JSON problems (see the module docstring).

    Args:
        graph: annotated in place.
        base_url: Neuronpedia server, e.g. a self-hosted instance.
        cache_dir: the on-disk cache (a folder per server, a small JSON per feature).
        api_key: sent as ``x-api-key``; defaults to ``$NEURONPEDIA_API_KEY``.
        timeout_s: per-request deadline (connect, headers and body together).
        max_workers: concurrent requests.
        retries, backoff_s, max_backoff_s: retries on 429/5xx (a 5xx once per SAE set),
            waiting as urllib3's ``Retry`` does (``backoff_s * 2**(n - 1)`` from the
            second retry on) or ``Retry-After``, at most ``max_backoff_s``.
        max_logits: up-/down-weighted tokens kept per feature.
        max_network_failures: network-level failures after which the rest are skipped.
        budget_s: seconds the whole call may spend on Neuronpedia; the rest are skipped.
    """
    nodes = [n for n in graph.nodes.values() if _wanted(n)]
    keys = sorted({(str(n.neuronpedia_id), int(n.feature)) for n in nodes})  # type: ignore[arg-type]
    stats = AnnotationStats(features=len(keys))
    if not keys:
        logger.info("Neuronpedia annotations not needed")
        return stats
    client = Client(
        base_url, _headers(api_key), timeout_s, retries, backoff_s, max_backoff_s, max_network_failures,
        time.monotonic() + budget_s,
    )  # fmt: skip
    results, failures = _lookup_all(
        client, _server_cache(cache_dir, base_url), keys, max_workers, max_logits, stats
    )
    _apply_all(nodes, results)
    stats.requests = client.requests_sent
    _report(stats, failures)
    return stats


def _headers(api_key: str | None) -> dict[str, str]:
    """The API key header, from `api_key` or else ``$NEURONPEDIA_API_KEY``; none without a key."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {API_KEY_HEADER: key} if key else {}


def _server_cache(cache_dir: Path, base_url: str) -> Path | None:
    """The server's cache folder (a self-hosted server's answers never mix in); None (with a warning)
    when a link leads it out of `cache_dir`."""
    try:
        return storage.safe_path(cache_dir, redact_url(base_url).split("://", 1)[-1].strip("/"))
    except StorageError as e:
        logger.warning("Neuronpedia answers are not cached this run: %s", e)
        return None


def _lookup_all(
    client: Client,
    cache_dir: Path | None,
    keys: list[tuple[str, int]],
    max_workers: int,
    max_logits: int,
    stats: AnnotationStats,
) -> tuple[dict[tuple[str, int], FeatureInfo | None], dict[tuple[str, int], str]]:
    """Look every key up concurrently; returns infos and failure kinds by key (answers go to `stats`)."""
    results: dict[tuple[str, int], FeatureInfo | None] = {}
    failures: dict[tuple[str, int], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="neuronpedia") as pool:
        futures = {key: pool.submit(_lookup, client, cache_dir, key, max_logits) for key in keys}
        for key, future in futures.items():
            try:
                info, cache, cached = future.result()
            except FetchError as e:
                failures[key] = e.kind
                stats.failed += 1
            except Exception as e:  # a run never fails because of Neuronpedia
                logger.debug("Neuronpedia lookup of %s/%d failed", *key, exc_info=True)
                failures[key] = f"unexpected {type(e).__name__}"
                stats.failed += 1
            else:
                results[key] = info
                stats.from_cache += cached
                stats.fetched += not cached
                if cache is not None and not cached:
                    stats.answers.append((cache, info))
                if info is None:
                    failures[key] = NOT_FOUND
    return results, failures
