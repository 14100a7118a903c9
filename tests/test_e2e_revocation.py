"""End to end: a reload that removes or changes pins reaches connections already open.

A connection's verdict is given at its upstream handshake; keep-alive, HTTP/2 and tunnels then
carry requests for as long as the client likes. After a reload (a real SIGHUP, the pinset file
swapped for real) every open checked connection is decided again: the next request of one that
no longer passes gets pinproxy's 502 on the same client connection and never reaches the
upstream (the upstream's own records say so); a raw tunnel is closed. Each refusal test has a
twin whose reload leaves the connection flowing, on the same upstream connection.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import Proxy, read_until_closed, report_records, start_pinproxy, tls_tunnel
from tests.upstream import UpstreamServer, wait_for

pytestmark = pytest.mark.e2e

RECHECKED = "re-checked after a pinset reload"


def pinset_text(host: str, pin: str | None, *, mode: str = "enforce", unpinned: str = "allow",
                other_pin: str | None = None) -> str:
    """A pinset with one rule for `host` (none when `pin` is None), and optionally a rule for
    another host (the reload that changes something else)."""
    rules = f'  - host: "{host}"\n    mode: {mode}\n    pins: ["{pin}"]\n' if pin else ""
    if other_pin:
        rules += f'  - host: other.test\n    pins: ["{other_pin}"]\n'
    return f"version: 1\nunpinned: {unpinned}\nhosts:\n{rules or '  []\n'}"


def swap_pinset(proxy: Proxy, path: Path, text: str) -> None:
    """Replace the pinset file as an operator's tooling does (write, rename over), send SIGHUP
    and wait for the reload's log line (and so for the re-check, which runs right after)."""
    reloads = proxy.output().count("reloaded pinset")
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)
    proxy.reload()
    wait_for(lambda: proxy.output().count("reloaded pinset") > reloads, timeout=10)


@dataclass
class KeepAlive:
    """HTTP/1.1 keep-alive requests on one TLS connection through the proxy's CONNECT tunnel."""

    sock: ssl.SSLSocket
    host: str

    def __post_init__(self) -> None:
        self.sock.settimeout(10)
        self.h11 = h11.Connection(h11.CLIENT)

    def get(self, path: str) -> tuple[int, dict[str, str], str] | None:
        """Status, headers and body of one request; None if the connection was closed."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        if self.h11.our_state is not h11.IDLE:  # the last response closed the connection
            return None
        try:
            self.sock.sendall(self.h11.send(h11.Request(method="GET", target=path,
                                                        headers=[("Host", self.host)])))
            self.sock.sendall(self.h11.send(h11.EndOfMessage()))
            response: h11.Response | None = None
            body = b""
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(self.sock.recv(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    headers = {k.decode().lower(): v.decode() for k, v in response.headers}
                    return response.status_code, headers, body.decode()
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        except (OSError, h11.ProtocolError):
            return None


@pytest.fixture
def keep_alive() -> Iterator[list[KeepAlive]]:
    opened: list[KeepAlive] = []
    yield opened
    for conn in opened:
        conn.sock.close()


def open_keep_alive(proxy: Proxy, name: str, port: int, opened: list[KeepAlive]) -> KeepAlive:
    conn = KeepAlive(tls_tunnel(proxy, name, port, alpn=["http/1.1"]), name)
    opened.append(conn)
    return conn


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proxy: Proxy) -> Samples:
    response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5)
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def assert_served_once(server: UpstreamServer, requests: int) -> None:
    """The upstream saw one TCP connection (the one reused) and `requests` requests on it."""
    assert server.connections_accepted == 1
    assert len(server.requests) == requests


# -- HTTP/1.1 keep-alive -----------------------------------------------------------------------

@pytest.mark.parametrize("change", ["pin-changed", "rule-removed-unpinned-block"])
def test_a_revoked_pin_refuses_the_next_request_on_an_open_connection(
        change: str, tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, keep_alive: list[KeepAlive]) -> None:
    """The emergency: the pin that lets a server through is removed (replaced by another, or
    the rule dropped under `unpinned: block`) while a client holds a keep-alive connection."""
    unpinned = "block" if change == "rule-removed-unpinned-block" else "allow"
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("root.pinned.test", pki.root_pin, unpinned=unpinned))
    server = serve(good_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=tmp_path / "violations.jsonl") as proxy:
        conn = open_keep_alive(proxy, "root.pinned.test", server.port, keep_alive)
        first = conn.get("/before")
        assert first is not None and first[0] == 200
        before = scrape(proxy)
        mark = len(proxy.output())

        revoked = (pinset_text("root.pinned.test", pki.rogue_root_pin) if unpinned == "allow"
                   else pinset_text("", None, unpinned="block"))
        swap_pinset(proxy, pinset, revoked)

        refused = conn.get("/after")  # the same client connection
        reason = "pin-mismatch" if unpinned == "allow" else "host-not-pinned"
        assert refused is not None, "expected pinproxy's refusal page, got a closed connection"
        status, headers, body = refused
        assert status == 502 and headers["x-pinproxy-reason"] == reason
        assert RECHECKED in body and "refused the connection to root.pinned.test" in body
        assert conn.get("/again") is not None  # still answered, still refused
        wait_for(lambda: server.connections_closed == 1)  # the upstream connection was closed
        assert_served_once(server, 1)
        assert [r.path for r in server.requests] == ["/before"]

        logged = proxy.log_lines_since(mark)
        assert logged.count(RECHECKED) == 1
        assert re.search(rf"action=blocked host=root.pinned.test port=\d+ reason={reason} .*"
                         rf"detail=\"{RECHECKED}\"", logged)
        records = report_records(proxy)
        assert [(r["reason"], r["action"]) for r in records] == [(reason, "blocked")]
        after = scrape(proxy)
        rule = "root.pinned.test" if unpinned == "allow" else "-"
        assert value(after, "pinproxy_checks_total", action="blocked", reason=reason) - value(
            before, "pinproxy_checks_total", action="blocked", reason=reason) == 1
        assert value(after, "pinproxy_violations_total", rule=rule, action="blocked") - value(
            before, "pinproxy_violations_total", rule=rule, action="blocked") == 1


def test_a_reload_that_keeps_the_pin_leaves_the_connection_flowing(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, keep_alive: list[KeepAlive]) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("root.pinned.test", pki.root_pin, unpinned="block"))
    server = serve(good_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=tmp_path / "violations.jsonl") as proxy:
        conn = open_keep_alive(proxy, "root.pinned.test", server.port, keep_alive)
        assert (conn.get("/before") or (0,))[0] == 200
        mark = len(proxy.output())
        # another rule added, and the pin kept alongside a new one
        swap_pinset(proxy, pinset, pinset_text("root.pinned.test", pki.root_pin,
                                               unpinned="block", other_pin=pki.rogue_root_pin))
        assert (conn.get("/after") or (0,))[0] == 200
        assert_served_once(server, 2)
        assert RECHECKED not in proxy.log_lines_since(mark)
        assert report_records(proxy) == []


# -- HTTP/2 (httpx) ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_http2_streams_after_a_revocation(
        mode: str, tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert) -> None:
    """httpx over HTTP/2 to the pinned address 127.0.0.2. Enforce: the next stream gets the
    502. Report mode: the connection keeps flowing, and the violation is reported once."""
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("127.0.0.2", pki.root_pin, mode=mode))
    server = serve(good_leaf, "h2", host="127.0.0.2")
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=tmp_path / "violations.jsonl") as proxy, \
            httpx.Client(proxy=proxy.url, http2=True, timeout=10, verify=ssl.create_default_context(
                cafile=str(proxy.ca_cert))) as client:
        url = f"https://127.0.0.2:{server.port}"
        first = client.get(f"{url}/before")
        assert (first.status_code, first.http_version) == (200, "HTTP/2")
        mark = len(proxy.output())
        swap_pinset(proxy, pinset, pinset_text("127.0.0.2", pki.rogue_root_pin, mode=mode))

        after = [client.get(f"{url}/after/{i}") for i in range(3)]
        records = report_records(proxy)
        logged = proxy.log_lines_since(mark)
        if mode == "enforce":
            assert [r.status_code for r in after] == [502] * 3
            assert all(r.http_version == "HTTP/2" for r in after)  # the same h2 connection
            assert after[0].headers["x-pinproxy-reason"] == "pin-mismatch"
            assert RECHECKED in after[0].text
            wait_for(lambda: server.connections_closed == 1)
            assert_served_once(server, 1)
            assert [(r["action"], r["hostname"]) for r in records] == [("blocked", "127.0.0.2")]
            assert len(re.findall(r"action=blocked .*reason=pin-mismatch", logged)) == 1
        else:
            assert [r.status_code for r in after] == [200] * 3
            assert_served_once(server, 4)
            assert [(r["action"], r["hostname"]) for r in records] == [("reported", "127.0.0.2")]
            assert len(re.findall(r"action=reported .*reason=pin-mismatch", logged)) == 1
            assert RECHECKED in logged
            # another reload with the same verdict does not report it again
            swap_pinset(proxy, pinset, pinset_text("127.0.0.2", pki.rogue_root_pin, mode=mode,
                                                   other_pin=pki.root_pin))
            assert client.get(f"{url}/later").status_code == 200
            assert len(report_records(proxy)) == 1
            assert_served_once(server, 5)


# -- raw TLS tunnel ----------------------------------------------------------------------------

def test_a_revoked_raw_tls_tunnel_is_closed(tmp_path: Path, confdir: Path, pki: TrustedPki,
                                            serve: Serve, good_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("root.pinned.test", pki.root_pin))
    server = serve(good_leaf, "raw")
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy, \
            tls_tunnel(proxy, "root.pinned.test", server.port) as sock:
        sock.settimeout(10)
        sock.sendall(b"hello")
        assert sock.recv(100) == b"echo:hello"
        swap_pinset(proxy, pinset, pinset_text("root.pinned.test", pki.rogue_root_pin))
        # closed by the proxy, both ways (not only half-closed towards the client)
        wait_for(lambda: value(scrape(proxy), "pinproxy_client_connections") == 0)
        data, took = read_until_closed(sock, timeout=5)
        assert data == b"" and took < 5  # closed by the proxy, not by the timeout
        with pytest.raises(OSError):
            for _ in range(50):  # a write after the close fails sooner or later
                sock.sendall(b"more")
        wait_for(lambda: server.connections_closed == 1)
        assert server.received_bytes() == b"hello"


def test_a_raw_tls_tunnel_whose_pin_stays_keeps_flowing(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("root.pinned.test", pki.root_pin))
    server = serve(good_leaf, "raw")
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy, \
            tls_tunnel(proxy, "root.pinned.test", server.port) as sock:
        sock.settimeout(10)
        sock.sendall(b"hello")
        assert sock.recv(100) == b"echo:hello"
        swap_pinset(proxy, pinset, pinset_text("root.pinned.test", pki.root_pin,
                                               other_pin=pki.rogue_root_pin))
        sock.sendall(b"again")
        assert sock.recv(100) == b"echo:again"
        assert server.connections_accepted == 1 and server.received_bytes() == b"helloagain"


# -- many clients during a reload -----------------------------------------------------------------

def test_no_request_after_the_revocation_reaches_the_upstream(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, keep_alive: list[KeepAlive]) -> None:
    """Eight keep-alive clients loop while the pin is revoked: each gets 200s, then only 502s,
    and the upstream sees no request sent after the reload finished."""
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(pinset_text("root.pinned.test", pki.root_pin))
    server = serve(good_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        conns = [open_keep_alive(proxy, "root.pinned.test", server.port, keep_alive)
                 for _ in range(8)]
        reloaded = threading.Event()
        after_reload: list[str] = []
        statuses: list[list[int]] = [[] for _ in conns]

        def loop(i: int, conn: KeepAlive) -> None:
            for n in range(400):  # until three refusals (bounded)
                path = f"/c{i}/{n}/{'after' if reloaded.is_set() else 'before'}"
                if path.endswith("after"):
                    after_reload.append(path)
                result = conn.get(path)
                statuses[i].append(result[0] if result else 0)
                if result is None or statuses[i].count(502) >= 3:
                    return

        threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        wait_for(lambda: all(len(s) >= 3 for s in statuses), timeout=10)
        swap_pinset(proxy, pinset, pinset_text("root.pinned.test", pki.rogue_root_pin))
        reloaded.set()
        for t in threads:
            t.join(timeout=20)
        assert not any(t.is_alive() for t in threads)
        for s in statuses:  # 200s, then a 502 page (or the closed connection), never a 200
            first_refused = next(i for i, status in enumerate(s) if status != 200)
            assert 502 in s and set(s[first_refused:]) <= {502, 0}, s
        seen = {r.path for r in server.requests}
        assert not seen & set(after_reload)
        # (a request that raced the reload may make mitmproxy reconnect: that handshake is
        # refused by the new pinset before any request byte, so only requests are counted)

