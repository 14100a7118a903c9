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

import logging
import weakref

from mitmproxy import connection, http

from pinproxy.credentials import Verifier, basic_credentials, parse_proxy_auth

__all__ = ["PROXY_HEADERS", "ProxyAuth"]

logger = logging.getLogger(__name__)

REALM = "pinproxy"
REASON = "proxy-auth-required"
# Hop-by-hop headers addressed to the proxy: removed from every request before it goes upstream.
PROXY_HEADERS = ("Proxy-Authorization", "Proxy-Connection")


class ProxyAuth:
    """Requires proxy credentials when given a spec; always strips the proxy's own headers."""

    def __init__(self, spec: str | None = None) -> None:
        """`spec` is `--proxy-auth` (None: no authentication). A bad spec or htpasswd file
        raises `PinproxyError` here, at start."""
        self.verifier: Verifier | None = parse_proxy_auth(spec) if spec else None
        # client connections whose CONNECT authenticated, and as whom; weak: nothing to clean
        self._authenticated: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return f"ProxyAuth({self.verifier!r})"

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.verifier is None or flow.client_conn in self._authenticated:
            return
        user = self._check(flow)
        if user is not None:
            self._authenticated[flow.client_conn] = user

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.verifier is not None and flow.client_conn not in self._authenticated:
            self._check(flow)
        for name in PROXY_HEADERS:
            flow.request.headers.pop(name, None)

    def _check(self, flow: http.HTTPFlow) -> str | None:
        """The authenticated user, or None after answering the flow with 407."""
        assert self.verifier is not None
        header = flow.request.headers.get("Proxy-Authorization")
        credentials = basic_credentials(header) if header is not None else None
        if credentials is not None:
            user, password = credentials
            try:
                if self.verifier.verify(user, password):
                    return user
            except Exception as e:  # noqa: BLE001 - deny-on-error guard: an error is no login
                logger.error("pinproxy could not check proxy credentials: %s; refusing", e)
            logger.warning("pinproxy refused proxy credentials: client=%s user=%r",
                           _peer(flow.client_conn), user[:64])
        else:
            logger.debug("pinproxy asked for proxy credentials: client=%s",
                         _peer(flow.client_conn))
        flow.request.stream = False  # mitmproxy cannot answer a streamed request
        flow.response = http.Response.make(407, b"pinproxy: proxy authentication required\n", {
            "Proxy-Authenticate": f'Basic realm="{REALM}"',
            "Content-Type": "text/plain; charset=utf-8",
            "X-Pinproxy-Reason": REASON,
        })
        return None


def _peer(client: connection.Client) -> str:
    host, port, *_ = client.peername
    return f"{host}:{port}"
