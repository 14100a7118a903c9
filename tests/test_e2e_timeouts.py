"""End to end: nothing waits for ever (issue #11). A silent upstream gets the client a 502
naming the timeout; a client that sends no request head, or dribbles one, is closed; a refused
tunnel whose client sends nothing is closed; the connection bound refuses at once. Each with
its twin that is served. Real proxy, real loopback servers, real clients; short timeouts."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import (
    REPO,
    Proxy,
    curl,
    pinproxy_command,
    read_until_closed,
    start_pinproxy,
    tunnel,
)
from tests.upstream import PlainServer, SilentServer, wait_for

pytestmark = pytest.mark.e2e

UPSTREAM_TIMEOUT = 1.0
MARGIN = 2.5  # seconds a deadline may be late on a loaded 2-core machine


def pinset_text(pin: str) -> str:
    return f"""\
version: 1
unpinned: allow
hosts:
  - host: root.pinned.test
    pins: ["{pin}"]
"""


@pytest.fixture(scope="module")
def pinset(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki) -> Path:
    path = tmp_path_factory.mktemp("timeouts") / "pins.yaml"
    path.write_text(pinset_text(pki.root_pin))
    return path


@pytest.fixture(scope="module")
def upstream_proxy(pinset: Path, pki: TrustedPki, confdir: Path) -> Iterator[Proxy]:
    """Short upstream timeout; the request-head timeout long enough that the refused-tunnel
    deadline (5 s) is the one that closes a refused client."""
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--upstream-timeout",
                        str(UPSTREAM_TIMEOUT), "--request-head-timeout", "8",
                        "--max-connections", "3") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def client_proxy(pinset: Path, pki: TrustedPki, confdir: Path) -> Iterator[Proxy]:
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--request-head-timeout", "1",
                        "--idle-timeout", "2") as proxy:
        yield proxy


def metric(proxy: Proxy, line_start: str) -> float:
    with urllib.request.urlopen(f"{proxy.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [float(line.rpartition(" ")[2]) for line in text.splitlines()
              if line.startswith(line_start)]
    return sum(values)


def connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


# -- the upstream ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["root.pinned.test", "free.test"])
def test_a_silent_upstream_gets_the_client_a_502_naming_the_timeout(
        upstream_proxy: Proxy, name: str) -> None:
    with SilentServer() as silent:
        started = time.monotonic()
        result = curl(upstream_proxy, name, silent.port, "/", "--include", timeout=15)
        elapsed = time.monotonic() - started
        assert result.status == 502, result
        assert "x-pinproxy-reason: upstream-timeout" in result.body.lower()
        assert "reason: upstream-timeout" in result.body
        assert UPSTREAM_TIMEOUT * 0.8 <= elapsed <= UPSTREAM_TIMEOUT + MARGIN
        wait_for(lambda: silent.connections_closed >= silent.connections_accepted)
        received = silent.received_bytes()
        assert received.startswith(b"\x16\x03")  # a ClientHello, and nothing after it
        assert b"GET " not in received and b"HTTP/1.1" not in received
    assert metric(upstream_proxy, 'pinproxy_timeouts_total{kind="upstream"}') >= 1


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1 response with a Content-Length (the connection may stay open after it)."""
    sock.settimeout(15)
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                return data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: the kernel drops
    further SYNs, so a connect hangs (an upstream behind a black-holing firewall)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


def test_an_upstream_that_never_accepts_gets_the_connect_the_502_page(
        upstream_proxy: Proxy, unaccepting_port: int) -> None:
    with connect(upstream_proxy) as sock:
        started = time.monotonic()
        sock.sendall(f"CONNECT 127.0.0.1:{unaccepting_port} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{unaccepting_port}\r\n\r\n".encode())
        data = read_response(sock)
        elapsed = time.monotonic() - started
    head = data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 502"), data[:300]
    assert b"x-pinproxy-reason: upstream-timeout" in head
    assert b"reason: upstream-timeout" in data
    assert UPSTREAM_TIMEOUT * 0.8 <= elapsed <= UPSTREAM_TIMEOUT + MARGIN


def test_an_upstream_that_answers_is_served(upstream_proxy: Proxy, serve: Serve,
                                            good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    result = curl(upstream_proxy, "root.pinned.test", server.port)
    assert result.status == 200, result
    assert len(server.requests) == 1


# -- a refused tunnel ------------------------------------------------------------------------

def refused_tls_client(proxy: Proxy, port: int) -> ssl.SSLSocket:
    """A TLS client through a tunnel whose upstream fails its pins (the rogue certificate)."""
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    return context.wrap_socket(tunnel(proxy, "127.0.0.1", port),
                               server_hostname="root.pinned.test")


def test_a_refused_tunnel_whose_client_sends_nothing_is_closed(
        upstream_proxy: Proxy, serve: Serve, rogue_leaf: trustme.LeafCert) -> None:
    server = serve(rogue_leaf)
    before = metric(upstream_proxy, 'pinproxy_timeouts_total{kind="refused-tunnel"}')
    with refused_tls_client(upstream_proxy, server.port) as sock:  # then silence (IMAPS-style)
        data, elapsed = read_until_closed(sock, timeout=15)
    assert data == b""
    assert elapsed <= 5 + MARGIN
    assert server.received_bytes() == b""
    after = metric(upstream_proxy, 'pinproxy_timeouts_total{kind="refused-tunnel"}')
    assert after == before + 1


def test_a_refused_tunnel_whose_client_asks_gets_the_page(
        upstream_proxy: Proxy, serve: Serve, rogue_leaf: trustme.LeafCert) -> None:
    server = serve(rogue_leaf)
    with refused_tls_client(upstream_proxy, server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: root.pinned.test\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(sock, timeout=10)
    assert data.startswith(b"HTTP/1.1 502"), data[:200]
    assert server.received_bytes() == b""


# -- the connection bound --------------------------------------------------------------------

def served(proxy: Proxy, plain: PlainServer) -> bool:
    with connect(proxy) as sock:
        sock.sendall(f"GET http://127.0.0.1:{plain.port}/ HTTP/1.1\r\nHost: 127.0.0.1:"
                     f"{plain.port}\r\nConnection: close\r\n\r\n".encode())
        data, _ = read_until_closed(sock, timeout=10)
    return data.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_bound_are_closed_at_once(upstream_proxy: Proxy,
                                                         plain_server: PlainServer) -> None:
    before = metric(upstream_proxy, "pinproxy_connections_rejected_total")
    held = [connect(upstream_proxy) for _ in range(3)]
    try:
        for sock in held:  # each accepted and counted: it gets an answer
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        with connect(upstream_proxy) as extra:
            data, elapsed = read_until_closed(extra, timeout=5)
        assert data == b"" and elapsed < 1.5
        assert metric(upstream_proxy, "pinproxy_connections_rejected_total") == before + 1
    finally:
        held.pop().close()
    try:
        assert wait_for(lambda: served(upstream_proxy, plain_server) or None, timeout=5)
    finally:
        for sock in held:
            sock.close()


# -- the client ------------------------------------------------------------------------------

def test_a_client_that_sends_nothing_is_closed_after_the_head_timeout(
        client_proxy: Proxy) -> None:
    before = metric(client_proxy, 'pinproxy_timeouts_total{kind="request-head"}')
    with connect(client_proxy) as sock:
        data, elapsed = read_until_closed(sock, timeout=10)
    assert data == b"" and 0.8 <= elapsed <= 1 + MARGIN
    assert metric(client_proxy, 'pinproxy_timeouts_total{kind="request-head"}') == before + 1


def test_a_slowloris_head_is_closed_although_bytes_keep_coming(client_proxy: Proxy) -> None:
    head = b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Slow: "
    with connect(client_proxy) as sock:
        started = time.monotonic()
        try:
            for byte in head + b"a" * 40:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # closed under us: what the test wants
            pass
        data, _ = read_until_closed(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert b"200" not in data and elapsed <= 1 + MARGIN


def test_a_prompt_client_is_served_and_an_idle_one_closed_later(
        client_proxy: Proxy, plain_server: PlainServer) -> None:
    with connect(client_proxy) as sock:
        time.sleep(0.4)  # within the head timeout
        sock.sendall(f"GET http://127.0.0.1:{plain_server.port}/ HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{plain_server.port}\r\n\r\n".encode())
        sock.settimeout(5)
        response = b""
        while not response.endswith(b"hello from upstream plain\n"):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        # keep-alive: the idle timeout (2 s), not the head timeout, ends the wait for more
        before = metric(client_proxy, 'pinproxy_timeouts_total{kind="client-idle"}')
        data, elapsed = read_until_closed(sock, timeout=10)
    assert data == b"" and 1.5 <= elapsed <= 2 + MARGIN
    assert metric(client_proxy, 'pinproxy_timeouts_total{kind="client-idle"}') == before + 1


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [  # the rest: tests/test_deadlines.py
    ("--max-connections", "0"),
])
def test_a_bad_value_is_one_line_and_exit_2(flag: str, value: str, tmp_path: Path) -> None:
    by_flag = subprocess.run(pinproxy_command("run", flag, value), cwd=REPO,
                             capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, check=False)
    variable = "PINPROXY_" + flag.removeprefix("--").replace("-", "_").upper()
    by_variable = subprocess.run(pinproxy_command("run"), cwd=REPO, capture_output=True,
                                 text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
                                 env={**os.environ, variable: value})
    for done, named in ((by_flag, flag), (by_variable, variable)):
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        if done is by_flag:  # argparse: the usage, then the one line that says what is wrong
            lines = lines[-1:]
        assert len(lines) == 1 and named in lines[0] and repr(value) in lines[0], lines
