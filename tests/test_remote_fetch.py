"""`pinproxy.proxy.remote.fetch`: one bounded HTTPS GET whose chain passes the pin check.

A real loopback TLS server (tests/test_e2e_signed.py's `PinsetServer`); each refusal (HTTP
error, too big, too slow, a chain the pinset in force refuses, an untrusted chain) next to the
fetch that succeeds.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

from pinproxy.loader import parse_pinset
from pinproxy.proxy.remote import FetchError, fetch
from tests.certs import TrustedPki
from tests.test_e2e_signed import PinsetServer


@pytest.fixture
def server(good_leaf: trustme.LeafCert) -> Iterator[PinsetServer]:
    running = PinsetServer(good_leaf)
    running.start()
    running.files = {"/p.yaml": b"x" * 1000}
    try:
        yield running
    finally:
        running.stop()


def get(server: PinsetServer, pki: TrustedPki, path: str = "/p.yaml", pin: str | None = None,
        max_bytes: int = 4096, ca: str | None = None, timeout: float = 5.0) -> bytes:
    pinset = None if pin is None else parse_pinset(
        f'version: 1\nhosts:\n  - host: 127.0.0.2\n    pins: ["{pin}"]\n')
    return fetch(f"{server.url}{path}", pinset, ca or str(pki.ca_bundle),
                 time.monotonic() + timeout, max_bytes)


def test_a_fetch_gets_the_body(server: PinsetServer, pki: TrustedPki) -> None:
    assert get(server, pki) == b"x" * 1000
    assert get(server, pki, pin=pki.root_pin) == b"x" * 1000  # the pinset in force agrees


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "/missing"}, "HTTP 404 (expected 200; redirects are not followed)"),
    ({"max_bytes": 999}, "larger than 999 bytes"),
    ({"pin": "rogue"}, "127.0.0.2: the distribution host fails the pinset in force: "
                       "pin-mismatch"),
    ({"ca": "rogue"}, "certificate at depth 1 not verified"),
])
def test_refused_fetches(server: PinsetServer, pki: TrustedPki, kwargs: dict[str, str | int],
                         message: str) -> None:
    if kwargs.get("pin") == "rogue":
        kwargs["pin"] = pki.rogue_root_pin
    if kwargs.get("ca") == "rogue":
        kwargs["ca"] = str(pki.rogue_file)
    with pytest.raises(FetchError, match=re.escape(message)) as e:
        get(server, pki, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_a_server_that_never_answers_times_out(pki: TrustedPki) -> None:
    with socket.create_server(("127.0.0.2", 0)) as listener:
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]),
                         daemon=True).start()
        url = f"https://127.0.0.2:{listener.getsockname()[1]}/p.yaml"
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"no complete answer from 127\.0\.0\.2:\d+ in time"):
            fetch(url, None, str(pki.ca_bundle), time.monotonic() + 0.5, 4096)
        assert time.monotonic() - started < 3
        for sock in accepted:
            sock.close()


def test_nothing_listening(pki: TrustedPki) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        url = f"https://127.0.0.2:{sock.getsockname()[1]}/p.yaml"
        with pytest.raises(FetchError, match=r"cannot connect to 127\.0\.0\.2"):
            fetch(url, None, str(pki.ca_bundle), time.monotonic() + 5, 4096)
