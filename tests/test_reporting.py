"""The pure part of report_uri: collector URLs, backoff, de-duplication and the sending queue.

The queue is driven with a real thread and a transport that is a plain function (no sockets):
what the network does is tested end to end in tests/test_e2e_report_uri.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pinproxy.proxy.collector import is_own_address
from pinproxy.reporting import (
    Collector,
    CollectorRefused,
    ReportSender,
    _Dedupe,
    backoff,
    dedupe_key,
    is_loopback,
    parse_report_uri,
    retryable,
)
from tests.upstream import wait_for


@pytest.mark.parametrize(("url", "scheme", "host", "port", "target"), [
    ("https://c.example/report", "https", "c.example", 443, "/report"),
    ("https://C.Example.:8443", "https", "c.example", 8443, "/"),
    ("HTTPS://c.example/r?a=1&b=2", "https", "c.example", 443, "/r?a=1&b=2"),
    ("http://127.0.0.1:9000/r", "http", "127.0.0.1", 9000, "/r"),
    ("http://[::1]/r", "http", "::1", 80, "/r"),
    ("http://localhost:81/", "http", "localhost", 81, "/"),
    ("https://[2001:db8::1]:444/x", "https", "2001:db8::1", 444, "/x"),
])
def test_collector_urls_that_load(url: str, scheme: str, host: str, port: int,
                                  target: str) -> None:
    assert parse_report_uri(url) == Collector(url, scheme, host, port, target)


@pytest.mark.parametrize(("url", "message"), [
    ("http://c.example/r", "not loopback"),
    ("http://10.0.0.1/r", "not loopback"),
    ("ftp://c.example/r", "must be an https:// URL"),
    ("c.example/r", "must be an https:// URL"),
    ("https://user:pw@c.example/r", "credentials"),
    ("https://c.example/r#frag", "fragment"),
    ("https:///r", "has no host"),
    ("https://c.example:99999/r", "is not a URL"),
    ("https://c.example:0/r", "port 0"),
    ("https://c.example/r x", "without spaces"),
    ("https://ça.example/r", "ASCII"),
    ("https://bad_name!.example/", "not a valid host name"),
])
def test_collector_urls_that_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_report_uri(url)


def test_the_request_is_a_json_post_with_nothing_else() -> None:
    request = parse_report_uri("https://[::1]:8443/r?k=v").request(b'{"a":1}')
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /r?k=v HTTP/1.1", b"Host: [::1]:8443", b"Content-Type: application/json",
        b"Content-Length: 7", b"User-Agent: pinproxy", b"Connection: close"]
    assert body == b'{"a":1}'
    assert b"Host: c.example\r\n" in parse_report_uri("https://c.example:443/").request(b"")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True),
    ("a.localhost", True), ("10.0.0.1", False), ("::2", False), ("localhost.example", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("status", "again"), [
    (500, True), (502, True), (503, True), (429, True),
    (400, False), (403, False), (404, False), (413, False), (301, False),
])
def test_retryable(status: int, again: bool) -> None:
    assert retryable(status) is again


@pytest.mark.parametrize(("retry", "least", "most"), [
    (1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (7, 15.0, 30.0), (20, 15.0, 30.0),
])
def test_backoff_doubles_with_half_jitter_and_a_cap(retry: int, least: float,
                                                     most: float) -> None:
    assert backoff(retry, 0.5, 30.0, rand=lambda: 0.0) == least
    assert backoff(retry, 0.5, 30.0, rand=lambda: 1.0) == most


def record(host: str = "a.example", rule: str = "p.yaml:3", chain: tuple[str, ...] = ("X",),
           **extra: Any) -> dict[str, Any]:
    return {"hostname": host, "rule": rule, "served-certificate-chain": list(chain),
            "validated-certificate-chain": list(chain), **extra}


def test_dedupe_key_is_host_rule_and_chain() -> None:
    key = dedupe_key(record())
    assert key == dedupe_key({**record(), "port": 8443, "date-time": "later"})
    assert key != dedupe_key(record(host="b.example"))
    assert key != dedupe_key(record(rule="p.yaml:9"))
    assert key != dedupe_key(record(chain=("Y",)))
    # the served and the validated chain are kept apart
    moved = {**record(), "served-certificate-chain": [], "validated-certificate-chain": ["X", "X"]}
    assert key != dedupe_key(moved)


def test_dedupe_window_and_bound() -> None:
    table = _Dedupe(size=2)
    assert table.first("a", 10.0, now=0.0)
    assert not table.first("a", 10.0, now=9.9)
    assert table.first("a", 10.0, now=10.0)  # the window has passed
    assert table.first("b", 10.0, now=11.0)
    assert table.first("c", 10.0, now=12.0)  # "a" is forgotten: the table holds two
    assert len(table) == 2
    assert table.first("a", 10.0, now=13.0)
    assert not table.first("c", 10.0, now=13.0)


# -- the queue and its thread ----------------------------------------------------------------

Script = list[int | BaseException]  # what successive calls answer: a status, or an error


class FakeCollector:
    """A transport that records each body and answers from a script (then 200)."""

    def __init__(self, *script: int | BaseException, hang: threading.Event | None = None) -> None:
        self.script: Script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.hang = hang

    def __call__(self, collector: Collector, body: bytes, timeout: float) -> int:
        self.bodies.append(json.loads(body))
        if self.hang is not None:
            self.hang.wait(timeout)
        answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def counted() -> list[str]:
    return []


@pytest.fixture
def make(counted: list[str]) -> Iterator[Callable[..., ReportSender]]:
    senders: list[ReportSender] = []

    def build(transport: FakeCollector, **options: Any) -> ReportSender:
        sender = ReportSender(transport, retry_base=0.01, count=counted.append, **options)
        senders.append(sender)
        return sender

    yield build
    for sender in senders:
        sender.close(timeout=2)


URL = "https://c.example/r"


def test_a_report_is_sent_once_and_a_repeat_is_deduplicated(
        make: Callable[..., ReportSender], counted: list[str]) -> None:
    collector = FakeCollector()
    sender = make(collector)
    sender.start()
    assert sender.submit(URL, record(), dedupe=60) == "queued"
    wait_for(lambda: counted == ["sent"])
    assert collector.bodies == [record()]
    assert sender.submit(URL, record(), dedupe=60) == "deduplicated"
    # the twin: another chain, another host, another collector are new violations
    assert sender.submit(URL, record(chain=("Y",)), dedupe=60) == "queued"
    assert sender.submit(URL, record(host="b.example"), dedupe=60) == "queued"
    assert sender.submit("https://d.example/", record(), dedupe=60) == "queued"
    wait_for(lambda: counted.count("sent") == 4)
    assert counted.count("deduplicated") == 1


def test_a_zero_window_sends_every_report(make: Callable[..., ReportSender]) -> None:
    sender = make(FakeCollector())
    assert sender.submit(URL, record(), dedupe=0) == "queued"
    assert sender.submit(URL, record(), dedupe=0) == "queued"


def test_a_full_queue_drops_and_forgets(make: Callable[..., ReportSender],
                                        counted: list[str]) -> None:
    sender = make(FakeCollector(), queue_size=1)  # not started: nothing leaves the queue
    assert sender.submit(URL, record(), dedupe=60) == "queued"
    started = time.perf_counter()
    assert sender.submit(URL, record(host="b.example"), dedupe=60) == "dropped"
    assert time.perf_counter() - started < 0.05  # never blocks
    assert counted == ["dropped"]
    # the dropped one is not remembered: when it happens again it is not "deduplicated"
    assert sender.submit(URL, record(host="b.example"), dedupe=60) == "dropped"


def test_failures_are_retried_until_the_collector_recovers(
        make: Callable[..., ReportSender], counted: list[str]) -> None:
    collector = FakeCollector(ConnectionRefusedError(), TimeoutError(), 503, 429)
    sender = make(collector, attempts=5)
    sender.start()
    sender.submit(URL, record(), dedupe=60)
    wait_for(lambda: counted == ["sent"])
    assert len(collector.bodies) == 5


@pytest.mark.parametrize("answer", [400, 404, CollectorRefused("it is this proxy")])
def test_final_answers_are_not_retried(answer: int | BaseException,
                                       make: Callable[..., ReportSender],
                                       counted: list[str]) -> None:
    collector = FakeCollector(answer)
    sender = make(collector)
    sender.start()
    sender.submit(URL, record(), dedupe=60)
    wait_for(lambda: counted == ["failed"])
    assert len(collector.bodies) == 1
    # a failed report is forgotten: the violation's next occurrence is sent
    assert sender.submit(URL, record(), dedupe=60) == "queued"
    wait_for(lambda: counted == ["failed", "sent"])


def test_retries_stop_after_the_attempts(make: Callable[..., ReportSender],
                                         counted: list[str]) -> None:
    collector = FakeCollector(500, 500, 500, 500, 500)
    sender = make(collector, attempts=3)
    sender.start()
    sender.submit(URL, record(), dedupe=60)
    wait_for(lambda: counted == ["failed"])
    assert len(collector.bodies) == 3


def test_a_retry_waiting_does_not_hold_new_reports(make: Callable[..., ReportSender],
                                                   counted: list[str]) -> None:
    collector = FakeCollector(500)
    sender = ReportSender(collector, retry_base=10.0, count=counted.append)
    sender.start()
    try:
        sender.submit(URL, record(), dedupe=60)
        wait_for(lambda: len(collector.bodies) == 1)
        sender.submit(URL, record(host="b.example"), dedupe=60)
        wait_for(lambda: counted == ["sent"], timeout=2)
        assert collector.bodies[1]["hostname"] == "b.example"
    finally:
        sender.close(timeout=2)


def test_close_is_bounded_while_the_collector_hangs(counted: list[str]) -> None:
    hang = threading.Event()
    collector = FakeCollector(hang=hang)
    sender = ReportSender(collector, count=counted.append)
    sender.start()
    sender.submit(URL, record(), dedupe=60)
    wait_for(lambda: collector.bodies)
    started = time.monotonic()
    sender.close(timeout=0.2)
    assert time.monotonic() - started < 1.0
    hang.set()


def test_an_error_in_the_transport_does_not_stop_the_thread(
        make: Callable[..., ReportSender], counted: list[str]) -> None:
    collector = FakeCollector(RuntimeError("bug"))
    sender = make(collector)
    sender.start()
    sender.submit(URL, record(), dedupe=60)
    sender.submit(URL, record(host="b.example"), dedupe=60)
    wait_for(lambda: counted == ["failed", "sent"])


# -- the proxy's own address ----------------------------------------------------------------

@pytest.mark.parametrize(("ip", "port", "listening", "own"), [
    ("127.0.0.1", 8080, [("127.0.0.1", 8080)], True),
    ("127.0.0.1", 8081, [("127.0.0.1", 8080)], False),
    ("127.0.0.2", 8080, [("127.0.0.1", 8080)], False),
    ("127.0.0.2", 8080, [("0.0.0.0", 8080)], True),
    ("::1", 8080, [("::", 8080)], True),
    ("::1", 8080, [("::1", 8080)], True),
    ("192.0.2.1", 8080, [("0.0.0.0", 8080)], False),
    ("fe80::1%eth0", 8080, [("127.0.0.1", 8080)], False),
])
def test_is_own_address(ip: str, port: int, listening: list[tuple[str, int]], own: bool) -> None:
    assert is_own_address(ip, port, listening) is own
