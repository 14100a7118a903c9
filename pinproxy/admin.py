"""The admin endpoint: /healthz, /readyz, /metrics and /pinset on a listener of its own.

Read-only and GET only, like Envoy's admin interface: probes and scrapes must never share the
proxy port (where they would need proxy credentials and could be mistaken for traffic). It runs
in a thread of its own, so a slow scraper never holds the proxy's event loop; what it serves
comes from an `AdminSource` that the running proxy (or the `--workers` supervisor) provides.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from pinproxy.errors import PinproxyError

__all__ = ["AdminServer", "AdminSource", "Readiness"]

_SOCKET_TIMEOUT = 5.0  # seconds a client may take to send its request


class AdminSource(Protocol):
    """What the admin endpoint shows; called from the admin thread, so it must be thread-safe."""

    def not_ready(self) -> str | None:
        """None when ready for traffic, else the one-line reason /readyz answers 503 with."""

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""

    def pinset(self) -> Mapping[str, Any] | None:
        """The pinset in force as JSON-ready data, or None before one loaded."""


class Readiness:
    """Whether this process should get traffic: set by the event loop, read by the admin thread
    (each attribute is one reference, so a reader never sees a half-made state)."""

    def __init__(self) -> None:
        self.pinset_loaded = False
        self.listening = False
        self.draining = False
        self.pinset_problem = ""  # why no pinset loaded yet (a signed pinset's failed fetch)

    def not_ready(self) -> str | None:
        if self.draining:
            return "draining: shutting down"
        if not self.pinset_loaded:
            problem = self.pinset_problem
            return f"no valid pinset loaded: {problem}" if problem else "no valid pinset loaded"
        if not self.listening:
            return "the proxy port is not accepting connections yet"
        return None


class AdminServer:
    """An HTTP server in a daemon thread; `close()` stops it."""

    def __init__(self, host: str, port: int, source: AdminSource) -> None:
        handler = type("_BoundHandler", (_Handler,), {"source": source})
        try:
            self._server = _Server((host, port), handler)
        except OSError as e:
            raise PinproxyError(
                f"cannot listen on admin address {host}:{port}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="pinproxy-admin", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=_SOCKET_TIMEOUT)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    source: AdminSource
    timeout = _SOCKET_TIMEOUT
    server_version = "pinproxy-admin"
    sys_version = ""

    def do_GET(self) -> None:  # the name http.server dispatches to
        path = self.path.partition("?")[0]
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n")
        elif path == "/readyz":
            reason = self.source.not_ready()
            if reason is None:
                self._send(HTTPStatus.OK, b"ready\n")
            else:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n".encode())
        elif path == "/metrics":
            body, content_type = self.source.metrics()
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/pinset":
            pinset = self.source.pinset()
            if pinset is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no pinset loaded\n")
            else:
                self._send(HTTPStatus.OK, json.dumps(pinset, indent=1).encode() + b"\n",
                           "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND,
                       b"not found: try /healthz, /readyz, /metrics or /pinset\n")

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"the admin endpoint is read-only: GET only\n",
                   extra={"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method

    def _send(self, status: HTTPStatus, body: bytes,
              content_type: str = "text/plain; charset=utf-8",
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the proxy's log: stay quiet."""
