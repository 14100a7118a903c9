"""Violation reports POSTed to a `report_uri` collector (RFC 7469 section 3), off the hot path.

The verify callback and the request hooks only call `ReportSender.submit`: a dictionary look-up
(de-duplication) and a non-blocking put on a bounded queue. One thread owned by the proxy
serialises each record and POSTs it; a full queue drops the report (counted), so a slow or dead
collector costs traffic nothing. Failures (connection errors, timeouts, 5xx, 429) are retried
with exponential backoff and jitter; any other answer is final.

The network part is a `Transport` (`pinproxy.proxy.collector` connects directly, never through
a proxy, with every wait bounded): this module holds what is pure, the URL rules, the
de-duplication table, the backoff and the queue, so they are tested without sockets.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import ipaddress
import json
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from pinproxy.errors import HostnameError, PinproxyError
from pinproxy.hostnames import normalize_host

__all__ = [
    "Collector",
    "CollectorRefused",
    "ReportSender",
    "Transport",
    "backoff",
    "dedupe_key",
    "is_loopback",
    "parse_report_uri",
    "retryable",
]

logger = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # reports waiting to be sent; beyond that they are dropped (and counted)
DEDUPE_ENTRIES = 10_000  # violations remembered for de-duplication; the oldest goes first
ATTEMPTS = 4  # tries per report: the first and three retries
RETRY_BASE = 0.5  # seconds before the first retry; doubled for each further retry
RETRY_CAP = 30.0  # no retry waits longer than this
REQUEST_TIMEOUT = 5.0  # seconds for one whole POST: connect, TLS handshake, request, status line
CLOSE_TIMEOUT = 1.0  # how long shutdown waits for the sender thread


class CollectorRefused(PinproxyError):
    """A POST that must not be made or repeated: the collector is this proxy, fails its pins,
    or its certificate does not verify. Not retried."""


@dataclass(frozen=True, slots=True)
class Collector:
    """A parsed `report_uri`: where to connect and what to POST to."""

    url: str  # as written in the pinset
    scheme: str  # "https" or "http" (loopback only)
    host: str  # normalised: lowercase, IDNA, an IPv6 address without brackets
    port: int
    target: str  # path and query, "/" at least

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def request(self, body: bytes) -> bytes:
        """The whole HTTP/1.1 POST of one report."""
        head = (f"POST {self.target} HTTP/1.1\r\nHost: {self.authority}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nUser-Agent: pinproxy\r\nConnection: close\r\n\r\n")
        return head.encode("ascii") + body


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the host."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_report_uri(text: str) -> Collector:
    """A collector URL: https://, or http:// to a loopback collector only (a report names the
    pins and chains an attacker would want to hide). ValueError says what is wrong."""
    if not text.isascii() or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError("must be an ASCII URL without spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"is not a URL: {e}") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError("must be an https:// URL (http:// only to a loopback collector)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (user:password@)")
    if parts.fragment or text.endswith("#"):
        raise ValueError("must not have a #fragment")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        host = normalize_host(parts.hostname)
    except HostnameError as e:
        raise ValueError(str(e)) from None
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError("is http:// to a host that is not loopback: reports must be sent over "
                         "https:// (http:// only to 127.0.0.1, ::1 or localhost)")
    if port == 0:
        raise ValueError("has port 0")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Collector(text, parts.scheme, host, port or (443 if parts.scheme == "https" else 80),
                     target)


def retryable(status: int) -> bool:
    """Whether an HTTP answer is worth another try: a server error or 429 Too Many Requests;
    any other 4xx means this report will never be accepted."""
    return status >= 500 or status == 429


def backoff(retry: int, base: float = RETRY_BASE, cap: float = RETRY_CAP,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `retry` (1 for the first): `base` doubled each time, capped,
    and half of it random ("equal jitter"), so workers that failed together do not retry
    together."""
    delay = min(cap, base * 2.0 ** (retry - 1))
    return delay / 2 + rand() * delay / 2


def dedupe_key(record: Mapping[str, Any]) -> tuple[str, str, bytes]:
    """(host, rule, observed chain) of a violation record: a digest of both chains, so the
    table holds 32 bytes per violation whatever the chains' size."""
    digest = hashlib.sha256()
    for name in ("served-certificate-chain", "validated-certificate-chain"):
        for pem in record.get(name) or ():
            digest.update(str(pem).encode())
        digest.update(b"\0")
    return str(record.get("hostname")), str(record.get("rule")), digest.digest()


class _Dedupe:
    """Keys seen within their window, oldest first; at most `size` of them (the oldest is
    forgotten first: a report sent twice is better than memory without bound)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._until: OrderedDict[Hashable, float] = OrderedDict()

    def first(self, key: Hashable, window: float, now: float) -> bool:
        """True (and remembered) unless `key` was seen less than its window ago."""
        until = self._until.get(key)
        if until is not None and until > now:
            return False
        self._until[key] = now + window
        self._until.move_to_end(key)
        while len(self._until) > self._size:
            self._until.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        self._until.pop(key, None)

    def __len__(self) -> int:
        return len(self._until)


class Transport(Protocol):
    """POST one report and return the HTTP status; `timeout` bounds the whole exchange. Raises
    OSError (retried: connection error, timeout) or `CollectorRefused` (not retried)."""

    def __call__(self, collector: Collector, body: bytes, timeout: float) -> int: ...


@dataclass(slots=True)
class _Pending:
    collector: Collector
    record: Mapping[str, Any]
    key: Hashable
    tries: int = 0


class ReportSender:
    """The bounded queue of reports and the thread that sends them.

    `submit` is what the proxy's hooks call: O(1), never blocks. `start` and `close` belong to
    the proxy's lifecycle; `close` waits at most `CLOSE_TIMEOUT` (a POST in flight is bounded
    by `REQUEST_TIMEOUT`, and the thread is a daemon, so it never holds the exit).
    """

    def __init__(self, transport: Transport, queue_size: int = QUEUE_SIZE,
                 attempts: int = ATTEMPTS, retry_base: float = RETRY_BASE,
                 request_timeout: float = REQUEST_TIMEOUT, dedupe_entries: int = DEDUPE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic,
                 count: Callable[[str], None] | None = None) -> None:
        if count is None:  # imported here: the loader uses this module without prometheus
            from pinproxy.metrics import record_report

            count = record_report
        self._count: Callable[[str], None] = count
        self._transport = transport
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=queue_size)
        self._attempts = attempts
        self._retry_base = retry_base
        self._timeout = request_timeout
        self._clock = clock
        self._lock = threading.Lock()  # the dedupe table: hooks add, the thread forgets
        self._dedupe = _Dedupe(dedupe_entries)
        self._collectors: dict[str, Collector] = {}  # parsed URLs (bounded by the pinsets)
        self._retries: list[tuple[float, int, _Pending]] = []  # (due, sequence, report)
        self._sequence = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, url: str, record: Mapping[str, Any], dedupe: float) -> str:
        """Queue a violation record for `url`: "queued", "deduplicated" or "dropped"."""
        key = (url, *dedupe_key(record))
        with self._lock:
            fresh = self._dedupe.first(key, dedupe, self._clock())
        if not fresh:
            self._count("deduplicated")
            return "deduplicated"
        collector = self._collectors.get(url)
        try:
            if collector is None:
                collector = self._collectors[url] = parse_report_uri(url)
            self._queue.put_nowait(_Pending(collector, record, key))
        except (queue.Full, ValueError):  # a URL the loader would have refused cannot happen
            self._forget(key)
            self._count("dropped")
            return "dropped"
        return "queued"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pinproxy-reports",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the thread; reports not sent by then are lost (and logged as a count)."""
        self._stopping.set()
        # wake the thread if it waits for work; when full, it is busy and looks at
        # `_stopping` before the next report
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)
        left = self._queue.qsize() + len(self._retries)
        if left:
            logger.warning("pinproxy stopped with %d violation reports not sent", left)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            pending = self._next()
            if pending is not None and not self._stopping.is_set():
                self._send(pending)

    def _next(self) -> _Pending | None:
        """The next report: a retry that is due, else a new one (waiting at most until the
        next retry is due)."""
        now = self._clock()
        if self._retries and self._retries[0][0] <= now:
            return heapq.heappop(self._retries)[2]
        wait = self._retries[0][0] - now if self._retries else None
        try:
            return self._queue.get(timeout=wait)
        except queue.Empty:
            return None

    def _send(self, pending: _Pending) -> None:
        pending.tries += 1
        collector = pending.collector
        why: str
        try:
            body = json.dumps(pending.record, separators=(",", ":")).encode()
            status = self._transport(collector, body, self._timeout)
        except CollectorRefused as e:
            self._failed(pending, str(e))
            return
        except OSError as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except Exception as e:  # noqa: BLE001 - a report must never kill the sender thread
            self._failed(pending, f"{type(e).__name__}: {e}")
            return
        else:
            if 200 <= status < 300:
                self._count("sent")
                logger.debug("pinproxy sent a violation report to %s (%d)", collector.url, status)
                return
            why = f"HTTP {status}"
            if not retryable(status):
                self._failed(pending, why)
                return
        if pending.tries >= self._attempts or len(self._retries) >= self._queue.maxsize:
            self._failed(pending, f"{why} (after {pending.tries} tries)")
            return
        self._sequence += 1
        due = self._clock() + backoff(pending.tries, self._retry_base)
        heapq.heappush(self._retries, (due, self._sequence, pending))

    def _failed(self, pending: _Pending, why: str) -> None:
        """Given up: counted, logged, and forgotten by the dedupe table, so the violation's
        next occurrence is reported again."""
        self._forget(pending.key)
        self._count("failed")
        logger.warning("pinproxy could not send a violation report for %s to %s: %s",
                       pending.record.get("hostname"), pending.collector.url, why)

    def _forget(self, key: Hashable) -> None:
        with self._lock:
            self._dedupe.forget(key)
