"""The HTTP side of the Neuronpedia client: one GET under a wall-clock deadline, retried by urllib3's `Retry`.

- Deadline: ``timeout_s`` bounds the whole exchange (connect, status line,
  headers, body), not each socket read, so a server that drips bytes cannot
  hold a request longer. A timer shuts the connection's socket when the
  deadline passes (`_Deadline`, on connection classes mounted into the
  session's pools); the body is read in chunks against the same deadline and
  a size cap. With an HTTP proxy (whose pools are not ours) only the body is
  held to the deadline.
- Retries: urllib3's `Retry` on 429 and 5xx, backing off exponentially and
  honouring ``Retry-After``, every wait capped by ``max_backoff_s`` and by
  what is left of the run's budget. A 5xx is retried at most once per run
  per source (SAE set): an unknown source answers 500 to every feature, and
  asking again only spends the budget.
- The API key (header ``x-api-key``) goes only to the configured origin: a
  redirect elsewhere drops it (requests keeps custom headers across hosts).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

API_KEY_HEADER = "x-api-key"
# A feature's JSON is ~50 KB; anything far larger is not a feature.
MAX_BODY_BYTES = 2_000_000
RETRY_STATUS = (429, 500, 502, 503, 504)
_EXCHANGE = threading.local()  # .current: the thread's `_Exchange` while a request runs


class FetchError(Exception):
    """One feature could not be fetched; ``kind`` summarises why ("HTTP 500")."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# ---------------------------------------------------------------- the deadline


class _Deadline:
    """Shuts the socket of an exchange still running `timeout_s` after its request was sent.

    Each attempt (a retry, a redirect) is an exchange of its own; none outlasts
    the run's budget (`budget_end`, time.monotonic()).
    """

    def __init__(self, timeout_s: float, budget_end: float) -> None:
        self.timeout_s, self.budget_end = timeout_s, budget_end
        self.at = min(time.monotonic() + timeout_s, budget_end)
        self.connection: HTTPConnection | None = None
        self.expired = self.done = False
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def follow(self, connection: HTTPConnection) -> None:
        """Watch `connection`, which is about to send a request, until the next request or `close`."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            self.connection, self.expired = connection, False
            self.at = min(time.monotonic() + self.timeout_s, self.budget_end)
            self._start(max(0.0, self.at - time.monotonic()))

    def _start(self, delay: float) -> None:
        self.timer = threading.Timer(delay, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self) -> None:
        with self.lock:
            if self.done:
                return
            if (early := self.at - time.monotonic()) > 0:  # re-armed meanwhile, or woken early
                self._start(early)
                return
            self.expired = True
            sock = getattr(self.connection, "sock", None)
            if sock is None:  # still connecting: look again shortly
                self._start(0.05)
                return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.done = True
            if self.timer is not None:
                self.timer.cancel()


class _Watched:
    """A connection that the thread's current exchange watches (its deadline) and counts."""

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        exchange = getattr(_EXCHANGE, "current", None)
        if exchange is not None:
            exchange.deadline.follow(self)
            exchange.client.count_request()
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTP(_Watched, HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTP


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


# ---------------------------------------------------------------- retries


class _Retry(Retry):
    """urllib3's Retry, its waits capped by the run's `Client`, 5xx retried once per source."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if not super().is_retry(method, status_code, has_retry_after):
            return False
        exchange = getattr(_EXCHANGE, "current", None)
        return (
            exchange is None or status_code < 500 or exchange.client.may_retry_server_error(exchange.source)
        )

    def get_retry_after(self, response):  # type: ignore[no-untyped-def]
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, _wait_cap())

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), _wait_cap())


def _wait_cap() -> float:
    exchange = getattr(_EXCHANGE, "current", None)
    return float("inf") if exchange is None else exchange.client.wait_cap()


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _KeyOnlyToHost(requests.Session):
    """A session that drops the API key when a redirect leaves the configured origin."""

    def __init__(self, base_url: str, retry: Retry, pool_size: int) -> None:
        super().__init__()
        self.origin = _origin(base_url)
        adapter = _Adapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)
        if _origin(str(prepared_request.url)) != self.origin:
            prepared_request.headers.pop(API_KEY_HEADER, None)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


# ---------------------------------------------------------------- the client


@dataclass
class _Exchange:
    client: Client
    source: str
    deadline: _Deadline


@dataclass
class Client:
    """Settings and state of one run's requests (thread-safe): budget, network failures, 5xx retries."""

    base_url: str
    headers: dict[str, str]
    timeout_s: float
    retries: int
    backoff_s: float
    max_backoff_s: float
    max_network_failures: int
    deadline: float  # time.monotonic() when the run's budget is spent
    requests_sent: int = 0
    network_failures: int = 0
    retried_sources: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def session(self) -> requests.Session:
        """This thread's session (a requests Session is not shared between threads)."""
        if not hasattr(self.local, "session"):
            retry = _Retry(
                total=None, connect=0, read=False, other=0, status=self.retries,
                status_forcelist=RETRY_STATUS, backoff_factor=self.backoff_s,
                backoff_max=self.max_backoff_s, raise_on_status=False, respect_retry_after_header=True,
            )  # fmt: skip
            self.local.session = _KeyOnlyToHost(self.base_url, retry, pool_size=1)
        return self.local.session

    def count_request(self) -> None:
        with self.lock:
            self.requests_sent += 1

    def wait_cap(self) -> float:
        return max(0.0, min(self.max_backoff_s, self.deadline - time.monotonic()))

    def may_retry_server_error(self, source: str) -> bool:
        """True the first time a source answers 5xx in this run, then False."""
        with self.lock:
            first = source not in self.retried_sources
            self.retried_sources.add(source)
            return first

    def get(self, url: str, source: str) -> tuple[int, bytes]:
        """GET `url` (a feature of SAE set `source`) within the deadline, retried as the class says:
        the status and the whole body (within the size cap)."""
        if self.network_failures >= self.max_network_failures:
            raise FetchError("skipped", "Neuronpedia unreachable earlier in this run")
        left = self.deadline - time.monotonic()  # of the run's budget
        if left <= 0:
            raise FetchError("skipped: Neuronpedia time budget spent")
        timeout = min(self.timeout_s, left)
        exchange = _Exchange(self, source, _Deadline(self.timeout_s, self.deadline))
        _EXCHANGE.current = exchange
        try:
            with self.session().get(url, headers=self.headers, timeout=timeout, stream=True) as response:
                return response.status_code, _read_body(response, exchange.deadline)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            with self.lock:
                self.network_failures += 1
            timed_out = exchange.deadline.expired or isinstance(e, (requests.Timeout, TimeoutError))
            raise FetchError("timeout" if timed_out else "no connection", type(e).__name__) from e
        finally:
            exchange.deadline.close()
            _EXCHANGE.current = None


def _read_body(response: requests.Response, deadline: _Deadline) -> bytes:
    """The whole body, a chunk at a time, within MAX_BODY_BYTES and the deadline (a server may trickle)."""
    body = bytearray()
    while chunk := response.raw.read1(65536, decode_content=True):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FetchError("response too large", f"over {MAX_BODY_BYTES} bytes")
        if time.monotonic() > deadline.at:
            raise TimeoutError("body not received within the request deadline")
    if deadline.expired:
        raise TimeoutError("the request deadline passed")
    return bytes(body)
