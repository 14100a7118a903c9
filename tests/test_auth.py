"""The ProxyAuth addon's hooks, driven directly (mitmproxy's tflow): who must authenticate when."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable

import bcrypt
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from pinproxy.errors import PinproxyError
from pinproxy.proxy.auth import _SLOW_CHECKS, _SLOW_WAITING, ProxyAuth

GOOD = "Basic " + base64.b64encode(b"alice:pa:ss").decode()
BAD = "Basic " + base64.b64encode(b"alice:pa").decode()


def flow(header: str | None = None, method: str = "GET") -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.method = method
    if header is not None:
        f.request.headers["Proxy-Authorization"] = header
    f.request.headers["Proxy-Connection"] = "keep-alive"
    return f


def is_407(f: http.HTTPFlow) -> bool:
    return f.response is not None and f.response.status_code == 407


@pytest.mark.parametrize(("header", "refused"), [(None, True), (BAD, True), (GOOD, False)])
def test_connect(header: str | None, refused: bool) -> None:
    auth = ProxyAuth("alice:pa:ss")
    f = flow(header, "CONNECT")
    auth.http_connect(f)
    assert is_407(f) is refused
    inside = tflow.tflow(client_conn=f.client_conn)  # a request inside the tunnel, no header
    auth.requestheaders(inside)
    assert is_407(inside) is refused


@pytest.mark.parametrize(("header", "refused"), [(None, True), (BAD, True), (GOOD, False)])
def test_absolute_form_needs_credentials_on_every_request(header: str | None,
                                                          refused: bool) -> None:
    auth = ProxyAuth("alice:pa:ss")
    f = flow(header)
    auth.requestheaders(f)
    assert is_407(f) is refused
    assert "Proxy-Authorization" not in f.request.headers
    assert "Proxy-Connection" not in f.request.headers
    after = tflow.tflow(client_conn=f.client_conn)  # same connection, no header this time
    auth.requestheaders(after)
    assert is_407(after)


def test_407_response() -> None:
    f = flow()
    ProxyAuth("alice:pa:ss").requestheaders(f)
    assert f.response is not None
    assert f.response.headers["Proxy-Authenticate"] == 'Basic realm="pinproxy"'
    assert f.response.headers["X-Pinproxy-Reason"] == "proxy-auth-required"


def test_without_a_spec_nothing_is_refused_and_headers_are_stripped() -> None:
    auth = ProxyAuth()
    f = flow(GOOD)
    f.request.headers["X-Kept"] = "1"
    auth.http_connect(f)
    auth.requestheaders(f)
    assert f.response is None
    assert f.request.headers["X-Kept"] == "1"
    assert not [name for name in f.request.headers if name.lower().startswith("proxy-")]


def test_bad_spec_fails_at_construction_without_echoing_it() -> None:
    with pytest.raises(PinproxyError) as e:
        ProxyAuth("hunter2")
    assert "hunter2" not in str(e.value)
    assert "pa:ss" not in repr(ProxyAuth("alice:pa:ss"))


HTPASSWD_USER, HTPASSWD_PASSWORD = "bob", "s3cret"


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    hashed = bcrypt.hashpw(HTPASSWD_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{HTPASSWD_USER}:{hashed}\n")
    return f"@{path}"


def settle(result: Awaitable[None] | None) -> bool:
    """Run what the hook handed back, as mitmproxy does; True if it had to wait (bcrypt)."""
    if result is None:
        return False
    async def wait() -> None:
        await result
    asyncio.run(wait())
    return True


@pytest.mark.parametrize(("password", "refused"), [(HTPASSWD_PASSWORD, False), ("nope", True)])
def test_a_bcrypt_check_is_awaited_off_the_hook_and_only_once(htpasswd: str, password: str,
                                                               refused: bool) -> None:
    auth = ProxyAuth(htpasswd)
    header = "Basic " + base64.b64encode(f"{HTPASSWD_USER}:{password}".encode()).decode()
    first = flow(header)
    assert settle(auth.requestheaders(first))  # the hook itself returns at once
    assert is_407(first) is refused
    assert "Proxy-Authorization" not in first.request.headers  # stripped before the wait
    again = flow(header)
    assert settle(auth.requestheaders(again)) is refused  # accepted ones are remembered
    assert is_407(again) is refused


def test_too_many_waiting_bcrypt_checks_are_refused_unchecked(htpasswd: str) -> None:
    auth = ProxyAuth(htpasswd)
    auth._waiting = _SLOW_CHECKS + _SLOW_WAITING  # as many as the limit allows are waiting
    header = "Basic " + base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()).decode()
    f = flow(header)
    assert settle(auth.requestheaders(f))
    assert is_407(f)
    auth._waiting = 0  # the twin: once they finished, the same credentials pass
    f = flow(header)
    assert settle(auth.requestheaders(f))
    assert not is_407(f)
