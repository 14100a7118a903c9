"""Deadlines and the connection bound: nothing a client or an upstream does holds a connection
for ever.

mitmproxy has one inactivity watchdog per client connection (`tcp_timeout`, set from
`--idle-timeout`: any byte either way counts as activity), and nothing else: an upstream that
accepts TCP and never answers TLS, a client that dribbles a request head, or a refused tunnel
whose client never sends a request, each hold the connection until the watchdog fires, or for
ever while bytes trickle. This addon adds the missing deadlines as `loop.call_later` timers,
one per connection, cancelled by the hook that ends the wait; each hook does O(1) work. When
one fires, the connection is closed the way mitmproxy's own watchdog closes it (its reader
task is cancelled), counted, and for an upstream refused like a failed pin check (fail
closed: the client gets the 502 page, the server never a request byte).

What each bounds (docs/operations.md, "Timeouts and limits"):
- upstream: the TCP connect (`server_connect` to `server_connected`), and the TLS handshake
  (`tls_start_server` to its end), each;
- request head: from accept to the first CONNECT or request head, and from a CONNECT to the
  first request head inside its tunnel (TLS handshake included); a tunnel that turns out not
  to be HTTP (`tcp_start`) is not bounded by it. Later requests on a keep-alive connection
  are bounded by the idle timeout only;
- refused tunnel: a client whose upstream handshake failed gets a few seconds to present the
  request head that can carry the 502 page;
- `max_connections`: open client connections of this process; more are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import weakref
from typing import Any, cast

from mitmproxy import connection, ctx, http, tcp, tls
from mitmproxy.proxy import server_hooks

from pinproxy import metrics
from pinproxy.policy import refuse_timed_out
from pinproxy.proxy._mitmproxy_private import close_connection, on_idle_timeout
from pinproxy.proxy.addon import Pinning

__all__ = ["REFUSED_TUNNEL_TIMEOUT", "Deadlines", "raise_file_limit"]

logger = logging.getLogger(__name__)

REFUSED_TUNNEL_TIMEOUT = 5.0  # seconds a refused tunnel's client has to send a request head
_FDS_PER_CONNECTION = 2  # the client's socket and the upstream's
_FDS_SPARE = 64  # listeners, the admin endpoint, logs, the pinset, DNS


class Deadlines:
    """An addon: per-connection deadlines and the bound on open client connections."""

    def __init__(self, pinning: Pinning, *, upstream_timeout: float,
                 request_head_timeout: float, max_connections: int,
                 refused_tunnel_timeout: float = REFUSED_TUNNEL_TIMEOUT) -> None:
        self._pinning = pinning
        self.upstream_timeout = upstream_timeout
        self.request_head_timeout = request_head_timeout
        self.max_connections = max_connections
        self.refused_tunnel_timeout = min(refused_tunnel_timeout, request_head_timeout)
        self._open: set[str] = set()  # ids of the client connections counted as open
        self._upstream: weakref.WeakKeyDictionary[connection.Server, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary())
        self._head: weakref.WeakKeyDictionary[connection.Client, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary())
        self._refused: weakref.WeakKeyDictionary[connection.Client, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary())
        self._warned_at = -1.0  # monotonic time of the last "connection limit" warning
        self._unwarned = 0  # rejections since that warning
        self._proxy: Any = None  # mitmproxy's proxyserver addon, from `running` on

    def running(self) -> None:
        self._proxy = ctx.master.addons.get("proxyserver")
        raise_file_limit(self.max_connections)

    # -- the connection bound --------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if len(self._open) >= self.max_connections:
            # mitmproxy closes a client whose `error` is set when this hook returns
            client.error = f"pinproxy: more than {self.max_connections} open connections"
            metrics.record_connection_rejected()
            self._warn_rejected()
            return
        self._open.add(client.id)
        if self._proxy is not None:
            on_idle_timeout(self._proxy, client, _count_idle)
        self._head[client] = _later(self.request_head_timeout, self._head_timed_out, client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._open.discard(client.id)
        _cancel(self._head, client)
        _cancel(self._refused, client)

    def _warn_rejected(self) -> None:
        now = time.monotonic()
        if self._warned_at >= 0 and now - self._warned_at < 1.0:
            self._unwarned += 1
            return
        more = f" (and {self._unwarned} more since the last warning)" if self._unwarned else ""
        logger.warning("pinproxy refused a client connection: %d are open, the limit "
                       "(--max-connections)%s", self.max_connections, more)
        self._warned_at, self._unwarned = now, 0

    # -- the request head ------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # the tunnel's first request head is due within the timeout from now
        client = flow.client_conn
        if client.id in self._open:
            _cancel(self._head, client)
            self._head[client] = _later(self.request_head_timeout, self._head_timed_out, client)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        _cancel(self._head, flow.client_conn)
        _cancel(self._refused, flow.client_conn)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        # not HTTP (e.g. a server-speaks-first protocol): no request head will come
        _cancel(self._head, flow.client_conn)

    def _head_timed_out(self, client: connection.Client) -> None:
        self._head.pop(client, None)
        self._close_client(client, "request-head", "no complete request head within "
                           f"{self.request_head_timeout:g} s")

    # -- a refused tunnel ------------------------------------------------------------------

    def tls_failed_server(self, data: tls.TlsData) -> None:
        """The upstream handshake failed (refused by the pin check, timed out, or broken): the
        client has a few seconds to send the request head that gets the 502 page."""
        _cancel(self._upstream, cast(connection.Server, data.conn))
        client = data.context.client
        if client.id in self._open and client not in self._refused:
            self._refused[client] = _later(self.refused_tunnel_timeout,
                                           self._refused_timed_out, client)

    def _refused_timed_out(self, client: connection.Client) -> None:
        self._refused.pop(client, None)
        self._close_client(client, "refused-tunnel", "upstream handshake failed and no request "
                           f"head within {self.refused_tunnel_timeout:g} s")

    def _close_client(self, client: connection.Client, kind: str, why: str) -> None:
        _cancel(self._head, client)
        _cancel(self._refused, client)
        if close_connection(self._proxy, client, client, f"pinproxy: {why}"):
            metrics.record_timeout(kind)
            logger.info("pinproxy closed client %s: %s", _address(client.peername), why)

    # -- the upstream ----------------------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._arm_upstream(data.client, data.server)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        _cancel(self._upstream, data.server)  # TCP is up; a TLS handshake gets its own deadline

    def tls_start_server(self, data: tls.TlsData) -> None:
        self._arm_upstream(data.context.client, cast(connection.Server, data.conn))

    def tls_established_server(self, data: tls.TlsData) -> None:
        _cancel(self._upstream, cast(connection.Server, data.conn))

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        _cancel(self._upstream, data.server)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        _cancel(self._upstream, data.server)

    def _arm_upstream(self, client: connection.Client, server: connection.Server) -> None:
        _cancel(self._upstream, server)
        self._upstream[server] = _later(self.upstream_timeout, self._upstream_timed_out,
                                        client, server)

    def _upstream_timed_out(self, client: connection.Client, server: connection.Server) -> None:
        """Refused like a failed pin check (the handshake never got a verdict), and closed.

        Closed first: a connection already gone is not refused. The cancellation reaches its
        task at the loop's next turn, after the refusal below is recorded, so the failed
        handshake finds it and the client gets the 502 page."""
        self._upstream.pop(server, None)
        if not close_connection(self._proxy, client, server, "pinproxy: upstream timeout"):
            return
        host = server.address[0] if server.address else ""
        self._pinning.refuse_server(client, server,
                                    refuse_timed_out(host, self.upstream_timeout))
        metrics.record_timeout("upstream")


def _count_idle() -> None:
    metrics.record_timeout("client-idle")


def raise_file_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward the hard one so `max_connections` fit; warn once if
    even the hard limit is too low (the connections beyond it fail with EMFILE at accept)."""
    need = _FDS_PER_CONNECTION * max_connections + _FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:
            logger.debug("could not raise the open file limit: %s", e)
    if soft < need:
        logger.warning("pinproxy: the open file limit (%d) cannot hold --max-connections %d "
                       "(about %d descriptors); connections beyond about %d will fail; raise "
                       "the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections",
                       soft, max_connections, need,
                       max(0, (soft - _FDS_SPARE) // _FDS_PER_CONNECTION))


def _later(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback, *args)


def _cancel[K](timers: weakref.WeakKeyDictionary[K, asyncio.TimerHandle], key: K) -> None:
    timer = timers.pop(key, None)
    if timer is not None:
        timer.cancel()


def _address(address: tuple[Any, ...] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "(unknown)"
