"""End to end: SIGTERM drains the real `pinproxy run` (the request in flight finishes, new
connections are refused, exit 0); the drain is bounded by --drain-timeout; a second SIGTERM
or a SIGINT stops at once."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme

from tests.certs import TrustedPki
from tests.proxy import CurlResult, Proxy, curl, start_pinproxy
from tests.upstream import SlowUpstreamServer

pytestmark = pytest.mark.e2e

PINSET = """\
version: 1
unpinned: allow
hosts:
  - host: root.pinned.test
    pins: ["{pin}"]
"""


@pytest.fixture
def pinset(tmp_path: Path, pki: TrustedPki) -> Path:
    path = tmp_path / "pins.yaml"
    path.write_text(PINSET.format(pin=pki.root_pin))
    return path


def slow_request(proxy: Proxy, server: SlowUpstreamServer) -> tuple[threading.Thread,
                                                                   list[CurlResult]]:
    """curl through the proxy to the slow server in a thread; returns once the request is in
    flight (the upstream has it)."""
    results: list[CurlResult] = []
    thread = threading.Thread(target=lambda: results.append(
        curl(proxy, "root.pinned.test", server.address[1], "/slow")))
    thread.start()
    assert server.request_arrived.wait(10), "the request never reached the upstream"
    return thread, results


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_exit(proxy: Proxy, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = proxy.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout}s:\n{proxy.output()}") from None
    return code, time.monotonic() - started


def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections(
        pinset: Path, confdir: Path, pki: TrustedPki, good_leaf: trustme.LeafCert) -> None:
    with (SlowUpstreamServer(good_leaf, delay=1.5) as server,
          start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy):
        assert not connect_refused(proxy.port)  # the twin: before SIGTERM it accepts
        thread, results = slow_request(proxy, server)
        proxy.process.send_signal(signal.SIGTERM)
        proxy.wait_for_output(r"pinproxy draining: 1 in flight")
        assert connect_refused(proxy.port)
        thread.join(20)
        [result] = results
        assert (result.status, result.exit_code) == (200, 0), result
        assert result.body == "slow " * 1000 + "done\n"  # the whole body
        code, _ = wait_exit(proxy, 10)
        assert code == 0
        assert "nothing left in flight" in proxy.output()


def test_a_drain_that_hits_the_timeout_exits_within_it(
        pinset: Path, confdir: Path, pki: TrustedPki, good_leaf: trustme.LeafCert) -> None:
    with (SlowUpstreamServer(good_leaf, delay=15) as server,
          start_pinproxy(pinset, confdir, pki.ca_bundle, "--drain-timeout", "0.5") as proxy):
        thread, results = slow_request(proxy, server)
        proxy.process.send_signal(signal.SIGTERM)
        code, took = wait_exit(proxy, 5)
        assert code == 0
        assert took < 3
        assert "the timeout cut 1 still in flight" in proxy.output()
        thread.join(20)
        assert results[0].status != 200  # cut: the client never got the slow response


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_at_once(
        second: signal.Signals, pinset: Path, confdir: Path, pki: TrustedPki,
        good_leaf: trustme.LeafCert) -> None:
    with (SlowUpstreamServer(good_leaf, delay=15) as server,
          start_pinproxy(pinset, confdir, pki.ca_bundle, "--drain-timeout", "60") as proxy):
        thread, _ = slow_request(proxy, server)
        proxy.process.send_signal(signal.SIGTERM)
        proxy.wait_for_output(r"pinproxy draining")
        time.sleep(0.3)
        assert proxy.process.poll() is None  # the twin: the drain waits for the request
        proxy.process.send_signal(second)
        code, took = wait_exit(proxy, 5)
        assert code == 0
        assert took < 3
        thread.join(20)


def test_an_idle_keep_alive_connection_does_not_hold_the_drain(
        pinset: Path, confdir: Path, pki: TrustedPki, good_leaf: trustme.LeafCert) -> None:
    with (SlowUpstreamServer(good_leaf, delay=0) as server,
          start_pinproxy(pinset, confdir, pki.ca_bundle, "--drain-timeout", "30") as proxy):
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        idle.sendall(f"CONNECT 127.0.0.1:{server.address[1]} HTTP/1.1\r\n\r\n".encode())
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        proxy.process.send_signal(signal.SIGTERM)
        code, took = wait_exit(proxy, 10)
        idle.close()
        assert code == 0
        assert took < 5
