"""Graceful drain: stop taking connections, let the work in flight finish, then stop.

mitmproxy has none (`Master.shutdown` leaves its listeners open, mitmproxy issue #6245), so it
is built here from public pieces: the proxy server's instances are stopped (which closes their
listening sockets and nothing else), and the work in flight is counted with hooks.

What is "in flight": every HTTP request from its request head until its response has been sent
in full (or it failed), which covers a WebSocket until it closes, and every non-HTTP tunnel
(raw TCP/TLS through CONNECT) until it closes. A flow counts while mitmproxy calls it `live`.
An idle keep-alive connection is not in flight: it must not hold the drain for the whole
timeout. While draining, every HTTP/1 response gets `Connection: close`, so a client on a
keep-alive connection finishes its request and then reconnects (to another replica, since
this one no longer listens); connections still idle when the drain ends are closed as the
process exits. HTTP/2 connections are not told (no GOAWAY from mitmproxy's API): their
requests in flight finish, their idle connections are closed at exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from mitmproxy import http, tcp

from pinproxy.admin import Readiness

__all__ = ["Drain"]

logger = logging.getLogger(__name__)

_POLL = 0.05  # seconds between two looks at the work in flight


class Drain:
    """An addon that tracks work in flight and, on `drain()`, waits for it to finish."""

    def __init__(self, readiness: Readiness, on_ready: Callable[[], None] = lambda: None) -> None:
        self.readiness = readiness
        self._on_ready = on_ready
        self._flows: weakref.WeakSet[http.HTTPFlow | tcp.TCPFlow] = weakref.WeakSet()
        self._master: Any = None

    def running(self) -> None:
        # After the pinning addon's `running` (this addon comes later in the chain), which
        # records the pinset and the listeners in the shared `Readiness`.
        from mitmproxy import ctx

        self._master = ctx.master
        if self.readiness.not_ready() is None:
            self._on_ready()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._flows.add(flow)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._flows.add(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if (self.readiness.draining and flow.response is not None
                and flow.request.http_version in ("HTTP/1.1", "HTTP/1.0")
                and flow.response.status_code != 101):
            flow.response.headers["connection"] = "close"

    def in_flight(self) -> int:
        return sum(1 for flow in list(self._flows) if flow.live)

    async def drain(self, timeout: float) -> None:
        """Turn not-ready, close the listeners, and wait up to `timeout` seconds for the work
        in flight; logs one line when it starts and one when it ends."""
        self.readiness.draining = True
        started = time.monotonic()
        logger.warning("pinproxy draining: %d in flight, waiting up to %gs; no new connections",
                       self.in_flight(), timeout)
        await self._close_listeners()
        deadline = started + timeout
        while (left := self.in_flight()) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
        if left:
            logger.warning("pinproxy drained after %.1fs: the timeout cut %d still in flight",
                           time.monotonic() - started, left)
        else:
            logger.warning("pinproxy drained after %.1fs: nothing left in flight",
                           time.monotonic() - started)

    async def _close_listeners(self) -> None:
        proxyserver = self._master.addons.get("proxyserver") if self._master else None
        if proxyserver is None:
            return
        for instance in list(proxyserver.servers):
            if instance.is_running:
                try:
                    await asyncio.wait_for(instance.stop(), timeout=5)
                except (OSError, TimeoutError) as e:
                    logger.error("pinproxy could not close %s: %s", instance.mode.description, e)
