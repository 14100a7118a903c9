"""End to end: `pinproxy run --proxy-auth`, with curl, httpx and raw sockets on loopback.

A client without valid credentials gets 407 and the upstream it named sees no connection at
all; with credentials the pins are still enforced (the rogue twin gets 502); the proxy's own
headers never reach an origin, with or without authentication.
"""

from __future__ import annotations

import base64
import concurrent.futures
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki, leaf_pin
from tests.proxy import Proxy, curl, curl_plain, start_pinproxy
from tests.upstream import PlainServer, UpstreamServer, wait_for

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "pa:ss:wörd"  # colons and non-ASCII in the password
FILE_USER, FILE_PASSWORD = "bob", "htpa:ss"
NAME = "leaf.pinned.test"


def write_pinset(folder: Path, good_leaf: trustme.LeafCert) -> Path:
    pinset = folder / "pins.yaml"
    pinset.write_text(f"""\
version: 1
mode: enforce
unpinned: allow
hosts:
  - host: {NAME}
    pins: ["{leaf_pin(good_leaf)}"]
""")
    return pinset


@pytest.fixture(scope="module")
def pinset(tmp_path_factory: pytest.TempPathFactory, good_leaf: trustme.LeafCert) -> Path:
    return write_pinset(tmp_path_factory.mktemp("auth"), good_leaf)


@pytest.fixture(scope="module")
def proxy(pinset: Path, pki: TrustedPki, confdir: Path) -> Iterator[Proxy]:
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--proxy-auth",
                        f"{USER}:{PASSWORD}") as running:
        yield running


@pytest.fixture(scope="module")
def file_proxy(pinset: Path, pki: TrustedPki, confdir: Path) -> Iterator[Proxy]:
    htpasswd = pinset.parent / "htpasswd"
    hashed = bcrypt.hashpw(FILE_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{FILE_USER}:$2y${hashed[4:]}\n")  # as `htpasswd -B` writes it
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--proxy-auth",
                        f"@{htpasswd}") as running:
        yield running


@pytest.fixture(scope="module")
def open_proxy(pinset: Path, pki: TrustedPki, confdir: Path) -> Iterator[Proxy]:
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as running:
        yield running


def with_user(user: str, password: str) -> list[str]:
    return ["--proxy-user", f"{user}:{password}"]


def untouched(server: UpstreamServer | PlainServer) -> None:
    """No connection, not one byte: the proxy answered without connecting upstream."""
    assert server.connections_accepted == 0
    assert server.received_bytes() == b""


def raw_connect(proxy: Proxy, target: str, *headers: str) -> bytes:
    """The proxy's whole answer to one CONNECT (it closes a refused one)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        head = "".join(f"{h}\r\n" for h in headers)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{head}\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"required\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_407(reply: bytes) -> None:
    head = reply.decode("latin-1").lower()
    assert head.startswith("http/1.1 407 proxy authentication required\r\n"), reply
    assert 'proxy-authenticate: basic realm="pinproxy"\r\n' in head
    assert "x-pinproxy-reason: proxy-auth-required\r\n" in head
    assert reply.endswith(b"\r\n\r\npinproxy: proxy authentication required\n")


@pytest.mark.parametrize("credentials", [
    [],                                               # none
    ["Proxy-Authorization: " + basic(USER, "pa")],    # the password up to its first colon
    ["Proxy-Authorization: " + basic(USER, PASSWORD.upper())],
    ["Proxy-Authorization: " + basic("bob", PASSWORD)],
    ["Proxy-Authorization: Basic not-base64!"],
    ["Proxy-Authorization: Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()],
])
def test_connect_without_valid_credentials_gets_407_and_no_upstream_connection(
        proxy: Proxy, good_leaf: trustme.LeafCert, credentials: list[str]) -> None:
    server = UpstreamServer(good_leaf)
    with server:
        assert_407(raw_connect(proxy, f"127.0.0.1:{server.port}", *credentials))
        untouched(server)


def test_curl_without_or_with_wrong_credentials_gets_407(proxy: Proxy,
                                                         good_leaf: trustme.LeafCert) -> None:
    with UpstreamServer(good_leaf) as server:
        for extra in ([], with_user(USER, "wrong"), with_user("mallory", PASSWORD)):
            result = curl(proxy, NAME, server.port, "/", "--write-out", " %{http_connect}",
                          *extra)
            assert result.exit_code == 56, result  # curl: CONNECT refused
            assert result.stderr.rstrip().endswith("407"), result.stderr
        untouched(server)
    assert "pinproxy refused proxy credentials: client=127.0.0.1:" in proxy.output()
    assert "user='mallory'" in proxy.output()
    assert "wrong" not in proxy.output() and PASSWORD not in proxy.output()


def test_right_credentials_reach_a_pinned_host(proxy: Proxy, good_leaf: trustme.LeafCert,
                                               ) -> None:
    with UpstreamServer(good_leaf) as server:
        result = curl(proxy, NAME, server.port, "/hello", *with_user(USER, PASSWORD))
        assert (result.status, result.body) == (200, "hello from upstream upstream\n")
        request, = server.requests
        assert "proxy-authorization" not in request.headers


def test_right_credentials_still_meet_the_pins(proxy: Proxy, rogue_leaf: trustme.LeafCert,
                                               ) -> None:
    with UpstreamServer(rogue_leaf) as server:
        result = curl(proxy, NAME, server.port, "/", *with_user(USER, PASSWORD))
        assert result.status == 502
        assert "reason: pin-mismatch" in result.body
        wait_for(lambda: server.connections_closed >= server.connections_accepted)
        assert server.received_bytes() == b"" and server.handshakes_completed == 0


def test_credentials_in_the_proxy_url(proxy: Proxy, good_leaf: trustme.LeafCert) -> None:
    """`HTTPS_PROXY=http://user:pass@host:port`, the way apps are configured (percent-encoded)."""
    quoted = urllib.parse.quote(PASSWORD, safe="")
    with UpstreamServer(good_leaf) as server:
        result = curl(proxy, NAME, server.port, "/", "--proxy",
                      f"http://{USER}:{quoted}@127.0.0.1:{proxy.port}")
        assert result.status == 200, result


def test_a_client_that_retries_after_407(proxy: Proxy, good_leaf: trustme.LeafCert) -> None:
    """As Java and .NET do: first without credentials, then with them after the 407."""
    with UpstreamServer(good_leaf) as server:
        result = curl(proxy, NAME, server.port, "/", "--proxy-anyauth",
                      *with_user(USER, PASSWORD), "--verbose")
        assert result.status == 200, result
        assert "HTTP/1.1 407" in result.stderr  # the first attempt was refused
        assert len(server.requests) == 1


def test_httpx(proxy: Proxy, pki: TrustedPki, good_leaf: trustme.LeafCert) -> None:
    trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with UpstreamServer(good_leaf) as server:
        url = f"https://127.0.0.1:{server.port}/httpx"
        with httpx.Client(proxy=f"http://{USER}:x@127.0.0.1:{proxy.port}", verify=trust,
                          timeout=20) as client, pytest.raises(httpx.ProxyError, match="407"):
            client.get(url)
        untouched(server)
        proxy_auth = httpx.Proxy(f"http://127.0.0.1:{proxy.port}", auth=(USER, PASSWORD))
        with httpx.Client(proxy=proxy_auth, verify=trust, timeout=20) as client:
            assert client.get(url).status_code == 200


def test_htpasswd_file(file_proxy: Proxy, good_leaf: trustme.LeafCert) -> None:
    with UpstreamServer(good_leaf) as server:
        refused = curl(file_proxy, NAME, server.port, "/", "--write-out", " %{http_connect}",
                       *with_user(FILE_USER, "htpa"))
        assert refused.exit_code == 56 and refused.stderr.rstrip().endswith("407")
        untouched(server)
        result = curl(file_proxy, NAME, server.port, "/",
                      *with_user(FILE_USER, FILE_PASSWORD))
        assert result.status == 200, result


def test_absolute_form_without_credentials_gets_407(proxy: Proxy,
                                                    plain_server: PlainServer) -> None:
    result = curl_plain(proxy, f"{plain_server.url}/x", "--include")
    assert result.status == 407
    assert 'Proxy-Authenticate: Basic realm="pinproxy"' in result.body
    assert "X-Pinproxy-Reason: proxy-auth-required" in result.body
    wrong = curl_plain(proxy, f"{plain_server.url}/x", *with_user(USER, "nope"))
    assert wrong.status == 407
    untouched(plain_server)


def test_absolute_form_with_credentials_is_stripped_upstream(proxy: Proxy,
                                                             plain_server: PlainServer) -> None:
    result = curl_plain(proxy, f"{plain_server.url}/x", *with_user(USER, PASSWORD),
                        "--proxy-header", "Proxy-Connection: keep-alive")
    assert result.status == 200, result
    request, = plain_server.requests
    assert request.path == "/x"
    assert "proxy-authorization" not in request.headers
    assert "proxy-connection" not in request.headers


def test_proxy_headers_are_stripped_without_auth(open_proxy: Proxy,
                                                 plain_server: PlainServer) -> None:
    result = curl_plain(open_proxy, f"{plain_server.url}/y", *with_user("u", "p"),
                        "--header", "Proxy-Connection: keep-alive", "--header", "X-Kept: 1")
    assert result.status == 200, result
    request, = plain_server.requests
    assert "proxy-authorization" not in request.headers
    assert "proxy-connection" not in request.headers
    assert request.headers["x-kept"] == "1"  # the twin: an ordinary header does arrive


SLOW_ROUNDS = 13  # a bcrypt cost whose check takes long enough to see the event loop held


def timed(proxy: Proxy, url: str, user: str, password: str) -> tuple[int, float]:
    started = time.monotonic()
    result = curl_plain(proxy, url, *with_user(user, password))
    return result.status, time.monotonic() - started


def test_wrong_passwords_do_not_hold_other_clients(tmp_path: Path, pinset: Path, pki: TrustedPki,
                                                   confdir: Path,
                                                   plain_server: PlainServer) -> None:
    """bcrypt checks run in threads: while clients with wrong passwords wait for theirs, a
    client whose credentials were accepted before is answered at once; the 407s are counted."""
    hashed = bcrypt.hashpw(FILE_PASSWORD.encode(), bcrypt.gensalt(rounds=SLOW_ROUNDS))
    started = time.monotonic()
    assert bcrypt.checkpw(FILE_PASSWORD.encode(), hashed)
    one_check = time.monotonic() - started
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(FILE_USER.encode() + b":" + hashed + b"\n")
    url = f"{plain_server.url}/x"
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--proxy-auth", f"@{htpasswd}") as proxy:
        assert timed(proxy, url, FILE_USER, FILE_PASSWORD)[0] == 200  # checked once, remembered
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            wrong = [pool.submit(timed, proxy, url, FILE_USER, f"wrong{i}") for i in range(4)]
            time.sleep(one_check / 4)  # the wrong ones are being checked now
            right = [timed(proxy, url, FILE_USER, FILE_PASSWORD) for _ in range(3)]
            refused = [future.result(timeout=60) for future in wrong]
        assert [status for status, _ in right] == [200] * 3
        # held by the checks, the three would wait for all four of them (about 4 checks' time)
        assert sum(took for _, took in right) < one_check, (right, one_check)
        assert [status for status, _ in refused] == [407] * 4
        # the twin: the wrong ones did wait for their checks (two at a time)
        assert max(took for _, took in refused) > one_check * 0.8, (refused, one_check)
        response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5)
        counted = {(s.name, s.labels.get("why")): s.value
                   for family in text_string_to_metric_families(response.text)
                   for s in family.samples}
        assert counted[("pinproxy_proxy_auth_refusals_total", "wrong")] == 4
        assert counted[("pinproxy_proxy_auth_refusals_total", "missing")] == 0
    assert len(plain_server.requests) == 4  # one first request and three more: no wrong one
