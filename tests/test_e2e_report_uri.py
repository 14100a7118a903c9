"""End to end: `report_uri` with a real `pinproxy run`, real violations and real collectors.

A collector is an HTTP(S) server on loopback that records every POST (path, headers, JSON
body); it can be told to answer 500 a number of times, or to hang. The sender works in FIFO
order on one thread, so "no POST for X" is asserted after a later marker report has arrived:
a report for X would have been sent before it. Every proxy runs with HTTP(S)_PROXY pointing
at a dead port: reports that went through a proxy would never arrive.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki, leaf_pin
from tests.conftest import NAMES, Serve
from tests.proxy import Proxy, curl, report_records, start_pinproxy
from tests.upstream import wait_for

pytestmark = pytest.mark.e2e

PLACEHOLDER = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # sha256(""): no real key
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes


class Collector(ThreadingHTTPServer):
    """Records every POST; `fail(n)` answers the next n with 500, `hang()` holds them (until
    `release()`, at most 20 s)."""

    daemon_threads = True

    def __init__(self, host: str, leaf: trustme.LeafCert | None = None) -> None:
        super().__init__((host, 0), _Handler)
        self.posts: list[Post] = []
        self.arrived = 0  # POSTs received, held or not
        self.attempts = 0  # POSTs answered, including the ones answered 500
        self.failures_left = 0
        self.held = threading.Event()
        self.held.set()
        self.lock = threading.Lock()
        if leaf is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            leaf.configure_cert(context)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.url = f"{'https' if leaf else 'http'}://{host}:{self.server_address[1]}"

    def fail(self, times: int) -> None:
        self.failures_left = times

    def hang(self) -> None:
        self.held.clear()

    def release(self) -> None:
        self.held.set()

    def for_host(self, host: str) -> list[Post]:
        with self.lock:
            return [post for post in self.posts if post.body.get("hostname") == host]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        collector = self.server
        with collector.lock:
            collector.arrived += 1
        collector.held.wait(20)
        with collector.lock:
            collector.attempts += 1
            failing = collector.failures_left > 0
            collector.failures_left -= failing
            if not failing:
                collector.posts.append(Post(self.path, {k.lower(): v for k, v in
                                                        self.headers.items()},
                                            json.loads(raw), raw))
        self.send_response(500 if failing else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def running(collector: Collector) -> Iterator[Collector]:
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.release()
        collector.shutdown()
        collector.server_close()


@pytest.fixture(scope="module")
def no_proxy_environment() -> Iterator[None]:
    """The proxy's own environment names a proxy: the sender must ignore it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            patch.setenv(name, DEAD_PROXY)
        patch.delenv("NO_PROXY", raising=False)
        patch.delenv("no_proxy", raising=False)
        yield


@pytest.fixture(scope="module")
def main(good_leaf: trustme.LeafCert) -> Iterator[Collector]:
    """The top-level collector: https on 127.0.0.2, which the pinset pins (and it passes)."""
    with running(Collector("127.0.0.2", good_leaf)) as collector:
        yield collector


@pytest.fixture(scope="module")
def other() -> Iterator[Collector]:
    """A rule's own collector: plain http on loopback."""
    with running(Collector("127.0.0.1")) as collector:
        yield collector


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki, good_leaf: trustme.LeafCert,
          confdir: Path, main: Collector, other: Collector,
          no_proxy_environment: None) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("report-uri")
    pinset = folder / "pins.yaml"
    pinset.write_text(f"""\
version: 1
report_uri: {main.url}/report
report_dedupe: 1h
hosts:
  - host: leaf.pinned.test
    pins: ["{leaf_pin(good_leaf)}", "{PLACEHOLDER}"]
  - host: inter.pinned.test
    pins: ["{pki.intermediate_pin}", "{PLACEHOLDER}"]
  - host: root.pinned.test
    pins: ["{pki.root_pin}"]
  - host: cert.pinned.test
    pins: ["{pki.root_pin}"]
  - host: report.pinned.test
    mode: report
    pins: ["{pki.root_pin}"]
  - host: other.test
    report_uri: {other.url}/other
    pins: ["{pki.root_pin}"]
  - host: 127.0.0.2
    pins: ["{pki.root_pin}"]
""")
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=folder / "violations.jsonl") as started:
        yield started


def rogue(pki: TrustedPki) -> trustme.LeafCert:
    """A fresh mis-issued certificate: a new observed chain, so a new violation to report."""
    return pki.issue(pki.rogue_root, *NAMES)


def reports(proxy: Proxy) -> dict[str, float]:
    response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5, trust_env=False)
    return {sample.labels["result"]: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples if sample.name == "pinproxy_reports_total"}


def marker(proxy: Proxy, serve: Serve, pki: TrustedPki, collector: Collector,
           host: str = "cert.pinned.test") -> None:
    """A new violation on `host`, and its report's arrival: everything queued before it has
    been sent (or given up) by then."""
    before = len(collector.for_host(host))
    assert curl(proxy, host, serve(rogue(pki)).port).status == 502
    wait_for(lambda: len(collector.for_host(host)) > before)


def test_a_violation_is_posted_as_rfc7469_json_and_logged_as_the_same_record(
        proxy: Proxy, serve: Serve, pki: TrustedPki, good_leaf: trustme.LeafCert,
        main: Collector) -> None:
    leaf = rogue(pki)
    server = serve(leaf)
    result = curl(proxy, "leaf.pinned.test", server.port, "/secret-path?token=tok3n",
                  "-H", "X-Secret: hdr-s3cret", "-H", "Cookie: c00kie", "--data", "b0dy")
    assert result.status == 502
    [post] = wait_for(lambda: main.for_host("leaf.pinned.test"))
    assert post.path == "/report"
    assert post.headers["content-type"] == "application/json"
    body = post.body
    assert body["hostname"] == "leaf.pinned.test" and body["port"] == server.port
    assert body["noted-hostname"] == "leaf.pinned.test"
    assert body["include-subdomains"] is False and body["effective-expiration-date"] is None
    assert body["served-certificate-chain"][0].strip() == \
        leaf.cert_chain_pems[0].bytes().decode().strip()
    assert len(body["validated-certificate-chain"]) == 2  # rogue leaf + rogue root
    assert f'pin-sha256="{leaf_pin(good_leaf).removeprefix("sha256/")}"' in body["known-pins"]
    assert {"date-time", "mode", "action", "reason", "rule"} <= body.keys()
    assert (body["action"], body["reason"]) == ("blocked", "pin-mismatch")
    # never request data: no path, query, header or body of the client's request
    everything = post.raw + json.dumps(post.headers).encode()
    for secret in (b"secret-path", b"tok3n", b"hdr-s3cret", b"c00kie", b"b0dy"):
        assert secret not in everything
    # the report log carries the same record
    assert body in report_records(proxy)


def test_a_passing_connection_posts_nothing(proxy: Proxy, serve: Serve, pki: TrustedPki,
                                            good_leaf: trustme.LeafCert,
                                            main: Collector) -> None:
    before = len(main.for_host("inter.pinned.test"))
    assert curl(proxy, "inter.pinned.test", serve(good_leaf).port).status == 200
    marker(proxy, serve, pki, main)
    assert len(main.for_host("inter.pinned.test")) == before


def test_the_same_violation_is_posted_once_within_report_dedupe(
        proxy: Proxy, serve: Serve, pki: TrustedPki, main: Collector) -> None:
    server = serve(rogue(pki))
    before = reports(proxy).get("deduplicated", 0)
    for _ in range(3):
        assert curl(proxy, "inter.pinned.test", server.port).status == 502
    # the twin: the same chain to another host is another violation, so another POST
    assert curl(proxy, "root.pinned.test", server.port).status == 502
    wait_for(lambda: main.for_host("root.pinned.test"))
    marker(proxy, serve, pki, main)
    assert len(main.for_host("inter.pinned.test")) == 1
    assert reports(proxy)["deduplicated"] - before == 2
    logged = [r for r in report_records(proxy) if r["hostname"] == "inter.pinned.test"]
    assert len(logged) == 3  # the report log keeps every one


def test_a_rule_report_uri_overrides_the_top_level_one(
        proxy: Proxy, serve: Serve, pki: TrustedPki, main: Collector,
        other: Collector) -> None:
    assert curl(proxy, "other.test", serve(rogue(pki)).port).status == 502
    [post] = wait_for(lambda: other.for_host("other.test"))
    assert post.path == "/other" and post.headers["content-type"] == "application/json"
    marker(proxy, serve, pki, main)
    assert main.for_host("other.test") == []


def test_a_failing_collector_gets_the_report_after_retries(
        proxy: Proxy, serve: Serve, pki: TrustedPki, main: Collector) -> None:
    before = reports(proxy)
    attempts = main.attempts
    main.fail(2)
    # report mode: the traffic passes while its report is retried
    assert curl(proxy, "report.pinned.test", serve(rogue(pki)).port).status == 200
    [post] = wait_for(lambda: main.for_host("report.pinned.test"), timeout=10)
    assert post.body["action"] == "reported"
    assert main.attempts - attempts == 3
    after = reports(proxy)
    assert after["sent"] - before["sent"] == 1
    assert after.get("failed", 0) == before.get("failed", 0)


def test_a_hanging_collector_does_not_delay_traffic(
        proxy: Proxy, serve: Serve, pki: TrustedPki, good_leaf: trustme.LeafCert,
        main: Collector) -> None:
    good = serve(good_leaf)
    started = time.monotonic()
    assert curl(proxy, "root.pinned.test", good.port).status == 200
    baseline = time.monotonic() - started
    arrived = main.arrived
    main.hang()
    try:
        for host in ("leaf.pinned.test", "inter.pinned.test"):
            assert curl(proxy, host, serve(rogue(pki)).port).status == 502
        wait_for(lambda: main.arrived > arrived)  # the collector holds a report
        started = time.monotonic()
        assert curl(proxy, "root.pinned.test", good.port).status == 200
        assert curl(proxy, "cert.pinned.test", serve(rogue(pki)).port).status == 502
        assert time.monotonic() - started < baseline * 2 + 1.0  # the collector holds 20 s
    finally:
        main.release()


def test_a_full_queue_drops_and_counts_traffic_goes_on_and_exit_is_not_held(
        tmp_path: Path, pki: TrustedPki, good_leaf: trustme.LeafCert, confdir: Path,
        serve: Serve, no_proxy_environment: None) -> None:
    with running(Collector("127.0.0.1")) as collector:
        collector.hang()
        pinset = tmp_path / "pins.yaml"
        pinset.write_text(f"""\
version: 1
report_uri: {collector.url}/r
hosts:
  - host: leaf.pinned.test
    pins: ["{pki.root_pin}"]
  - host: inter.pinned.test
    pins: ["{pki.root_pin}"]
  - host: root.pinned.test
    pins: ["{pki.root_pin}"]
  - host: cert.pinned.test
    pins: ["{pki.root_pin}"]
""")
        with start_pinproxy(pinset, confdir, pki.ca_bundle, "--report-queue", "1") as proxy:
            server = serve(rogue(pki))
            good = serve(good_leaf)
            assert curl(proxy, "leaf.pinned.test", server.port).status == 502
            wait_for(lambda: collector.arrived == 1)  # held: the sender waits for it
            started = time.monotonic()
            for host in ("inter.pinned.test", "root.pinned.test", "cert.pinned.test"):
                assert curl(proxy, host, server.port).status == 502  # 1 queued, 2 dropped
            assert curl(proxy, "leaf.pinned.test", good.port).status == 200
            assert time.monotonic() - started < 5
            wait_for(lambda: reports(proxy).get("dropped") == 2)
            assert reports(proxy).get("sent") == 0
            # the collector still holds a report: it must not hold the exit
            started = time.monotonic()
            assert proxy.stop() == 0
            assert time.monotonic() - started < 5
            assert "stopped with 1 violation reports not sent" in proxy.output()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_collector_at_the_proxy_itself_or_failing_its_pins_gets_nothing(
        tmp_path: Path, pki: TrustedPki, good_leaf: trustme.LeafCert, confdir: Path,
        serve: Serve, no_proxy_environment: None) -> None:
    port = _free_port()
    with running(Collector("127.0.0.2", good_leaf)) as pinned_out:
        pinset = tmp_path / "pins.yaml"
        pinset.write_text(f"""\
version: 1
hosts:
  - host: leaf.pinned.test
    report_uri: http://127.0.0.1:{port}/loop
    pins: ["{pki.root_pin}"]
  - host: inter.pinned.test
    report_uri: {pinned_out.url}/r
    pins: ["{pki.root_pin}"]
  - host: 127.0.0.2
    pins: ["{PLACEHOLDER}"]
""")
        with start_pinproxy(pinset, confdir, pki.ca_bundle, "--listen-port", str(port)) as proxy:
            assert proxy.port == port
            server = serve(rogue(pki))
            assert curl(proxy, "leaf.pinned.test", server.port).status == 502
            proxy.wait_for_output(r"could not send a violation report for leaf\.pinned\.test "
                                  r"to \S+/loop: \S+ is this proxy's own listen address")
            assert curl(proxy, "inter.pinned.test", server.port).status == 502
            proxy.wait_for_output(r"could not send a violation report for inter\.pinned\.test"
                                  r" to \S+: \S+ fails its pins")
            assert reports(proxy) == {"failed": 2.0, "sent": 0.0, "dropped": 0.0,
                                      "deduplicated": 0.0}
            assert pinned_out.posts == [] and pinned_out.arrived == 0
