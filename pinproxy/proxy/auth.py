"""Proxy authentication (`--proxy-auth`), and proxy headers that never go upstream.

With a spec, a CONNECT (`http_connect`) or absolute-form request (`requestheaders`) without
valid `Proxy-Authorization: Basic` credentials is answered 407 with `Proxy-Authenticate`, so
Java and .NET clients retry with credentials; mitmproxy then opens no upstream connection (in
eager mode too: a CONNECT that already has a response is not connected). An authenticated
CONNECT authenticates its client connection, so requests inside the tunnel carry no header;
absolute-form requests must each carry it (one connection may carry several users' requests).

With or without a spec, `Proxy-Authorization` and `Proxy-Connection` are removed from every
request: they are addressed to this proxy, and an origin server must never see them.
The checks themselves (spec, Basic parsing, constant-time comparison) live in
`pinproxy.credentials`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable

from mitmproxy import connection, http

from pinproxy import metrics
from pinproxy.credentials import Verifier, basic_credentials, parse_proxy_auth

__all__ = ["PROXY_HEADERS", "ProxyAuth"]

logger = logging.getLogger(__name__)

REALM = "pinproxy"
REASON = "proxy-auth-required"
_SLOW_CHECKS = 2  # bcrypt checks running at once, each in a thread
_SLOW_WAITING = 64  # bcrypt checks queued behind them; beyond, refused unchecked
# Hop-by-hop headers addressed to the proxy: removed from every request before it goes upstream.
PROXY_HEADERS = ("Proxy-Authorization", "Proxy-Connection")


class ProxyAuth:
    """Requires proxy credentials when given a spec; always strips the proxy's own headers.

    A check that needs bcrypt (an htpasswd user's first request) runs in a thread, at most
    `_SLOW_CHECKS` at once, with at most `_SLOW_WAITING` more waiting: the hook returns an
    awaitable, so that flow waits and every other connection keeps flowing. Beyond that a
    client is refused at once ("busy"): a flood of wrong passwords costs the flood, not the
    proxy's traffic.
    """

    def __init__(self, spec: str | None = None) -> None:
        """`spec` is `--proxy-auth` (None: no authentication). A bad spec or htpasswd file
        raises `PinproxyError` here, at start."""
        self.verifier: Verifier | None = parse_proxy_auth(spec) if spec else None
        # client connections whose CONNECT authenticated, and as whom; weak: nothing to clean
        self._authenticated: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary())
        self._slow_checks = asyncio.Semaphore(_SLOW_CHECKS)
        self._waiting = 0  # slow checks asked for and not finished (running or queued)

    def __repr__(self) -> str:
        return f"ProxyAuth({self.verifier!r})"

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.verifier is None or flow.client_conn in self._authenticated:
            return None
        return self._check(flow, tunnel=True)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        check = None
        if self.verifier is not None and flow.client_conn not in self._authenticated:
            check = self._check(flow, tunnel=False)  # reads the header before it goes
        for name in PROXY_HEADERS:
            flow.request.headers.pop(name, None)
        return check

    def _check(self, flow: http.HTTPFlow, tunnel: bool) -> Awaitable[None] | None:
        """Accept the flow, or answer it 407; an awaitable when that takes a bcrypt check."""
        assert self.verifier is not None
        header = flow.request.headers.get("Proxy-Authorization")
        credentials = basic_credentials(header) if header is not None else None
        if credentials is None:
            logger.debug("pinproxy asked for proxy credentials: client=%s",
                         _peer(flow.client_conn))
            _refuse(flow, "missing")
            return None
        user, password = credentials
        try:
            verdict = self.verifier.verify_at_once(user, password)
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: an error is no login
            logger.error("pinproxy could not check proxy credentials: %s; refusing", e)
            verdict = False
        if verdict is None:
            return self._check_slowly(flow, tunnel, user, password)
        self._conclude(flow, tunnel, user, verdict)
        return None

    async def _check_slowly(self, flow: http.HTTPFlow, tunnel: bool, user: str,
                            password: str) -> None:
        if self._waiting >= _SLOW_CHECKS + _SLOW_WAITING:
            logger.warning("pinproxy refused proxy credentials unchecked: client=%s user=%r "
                           "(%d checks already waiting)", _peer(flow.client_conn),
                           user[:64], self._waiting)
            _refuse(flow, "busy")
            return
        assert self.verifier is not None
        self._waiting += 1
        try:
            async with self._slow_checks:
                verdict = await asyncio.to_thread(self.verifier.verify, user, password)
        except Exception as e:  # noqa: BLE001 - deny-on-error guard: an error is no login
            logger.error("pinproxy could not check proxy credentials: %s; refusing", e)
            verdict = False
        finally:
            self._waiting -= 1
        self._conclude(flow, tunnel, user, verdict)

    def _conclude(self, flow: http.HTTPFlow, tunnel: bool, user: str, verdict: bool) -> None:
        if verdict:
            if tunnel:
                self._authenticated[flow.client_conn] = user
            return
        logger.warning("pinproxy refused proxy credentials: client=%s user=%r",
                       _peer(flow.client_conn), user[:64])
        _refuse(flow, "wrong")


def _refuse(flow: http.HTTPFlow, why: str) -> None:
    """Answer 407 in place of the server (mitmproxy then opens no upstream connection)."""
    metrics.record_proxy_auth_refused(why)
    flow.request.stream = False  # mitmproxy cannot answer a streamed request
    flow.response = http.Response.make(407, b"pinproxy: proxy authentication required\n", {
        "Proxy-Authenticate": f'Basic realm="{REALM}"',
        "Content-Type": "text/plain; charset=utf-8",
        "X-Pinproxy-Reason": REASON,
    })


def _peer(client: connection.Client) -> str:
    host, port, *_ = client.peername
    return f"{host}:{port}"
