"""The network side of `pinproxy.reporting`: one POST to a collector, directly and bounded.

Direct: the socket goes to the collector's address, never through a proxy (no HTTP(S)_PROXY is
read), and an address this proxy listens on is refused, so a report can never loop through
pinproxy. Bounded: one deadline covers the name look-up's aftermath, the connect, the TLS
handshake, the request and the status line. The collector's chain is verified with the
proxy's upstream trust (`--upstream-ca`, else certifi's bundle) and, when a rule of the pinset
in force covers the collector's name, pin-checked as any upstream (`decide_handshake` on the
verified chain, as `tools/probe.py` reads it); a failing collector gets no report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import ipaddress
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import certifi
from OpenSSL import SSL

from pinproxy.pinset import Pinset
from pinproxy.policy import decide_handshake
from pinproxy.proxy._openssl import expect_name, verify_error_text, x509_pins
from pinproxy.reporting import Collector, CollectorRefused

__all__ = ["CollectorTransport", "is_own_address"]

_MAX_HEAD = 16384  # bytes read for the status line at most
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - listen addresses compared, never bound


class CollectorTransport:
    """A `pinproxy.reporting.Transport`. `ca_file` and `listening` are set by the addon as its
    options and listeners become known."""

    def __init__(self, pinset: Callable[[], Pinset | None]) -> None:
        self._pinset = pinset
        self.ca_file: str | None = None  # None: certifi's bundle, as the proxy's upstreams
        self.listening: list[tuple[str, int]] = []  # the proxy's own listen addresses

    def __call__(self, collector: Collector, body: bytes, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        addresses = socket.getaddrinfo(collector.host, collector.port, type=socket.SOCK_STREAM)
        for *_, address in addresses:  # all of them first: no report to this proxy, ever
            if is_own_address(str(address[0]), collector.port, self.listening):
                raise CollectorRefused(f"{collector.url} is this proxy's own listen address")
        failure: OSError = OSError(f"{collector.host} has no address")
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setblocking(False)
                try:
                    _connect(sock, address, deadline)
                except TimeoutError:
                    raise
                except OSError as e:
                    failure = e
                    continue
                if collector.scheme == "https":
                    return self._https(sock, collector, body, deadline)
                return _plain(sock, collector.request(body), deadline)
        raise failure

    def _https(self, sock: socket.socket, collector: Collector, body: bytes,
               deadline: float) -> int:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.load_verify_locations(self.ca_file or certifi.where())
        errors: list[str] = []

        def verify(_c: SSL.Connection, _x: object, code: int, depth: int, ok: int) -> bool:
            if not ok:
                errors.append(f"certificate at depth {depth}: {verify_error_text(code)}")
            return bool(ok)  # OpenSSL's verdict stands

        conn = SSL.Connection(context, sock)
        conn.set_verify(SSL.VERIFY_PEER, verify)
        expect_name(conn, collector.host)
        conn.set_connect_state()
        try:
            _wait(conn.do_handshake, sock, deadline)
        except SSL.Error as e:
            raise CollectorRefused(f"TLS with {collector.url} failed: "
                                   f"{'; '.join(errors) or e}") from None
        self._check_pins(conn, collector)
        request = collector.request(body)
        while request:
            piece = request[:16384]
            sent = _wait(lambda: conn.send(piece), sock, deadline)  # noqa: B023 - called now
            request = request[sent:]
        head = b""
        while b"\r\n" not in head and len(head) < _MAX_HEAD:
            try:
                chunk = _wait(lambda: conn.recv(4096), sock, deadline)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            head += chunk
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
        return _status(head)

    def _check_pins(self, conn: SSL.Connection, collector: Collector) -> None:
        """A collector covered by a rule must pass it, like any upstream (report mode lets it
        through); a collector no rule covers is judged by CA checks alone."""
        chain = [x509_pins(cert) for cert in conn.get_verified_chain() or []]
        decision = decide_handshake(self._pinset(), [collector.host], chain,
                                    dt.datetime.now(dt.UTC).date())
        if decision.rule is not None and not decision.proceeds:
            raise CollectorRefused(f"{collector.url} fails its pins "
                                   f"(rule at {decision.rule.location})")


def is_own_address(ip: str, port: int, listening: Sequence[tuple[str, int]]) -> bool:
    """Whether ip:port reaches one of the proxy's listeners: the same address, or any local
    address when a listener is bound to all of them."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    for host, listen_port in listening:
        if listen_port != port:
            continue
        if host in _WILDCARDS:
            if address.is_loopback or address.is_unspecified or _is_local(str(address)):
                return True
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host) == address:
                return True
    return False


def _is_local(ip: str) -> bool:
    """An address of this host: binding to it succeeds (no packet is sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the collector did not answer in time")
    return left


def _ready(sock: socket.socket, event: int, deadline: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, event)
        if not selector.select(_left(deadline)):
            raise TimeoutError("the collector did not answer in time")


def _connect(sock: socket.socket, address: Any, deadline: float) -> None:
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        _ready(sock, selectors.EVENT_WRITE, deadline)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"cannot connect: {os.strerror(error)}")


def _wait[T](step: Callable[[], T], sock: socket.socket, deadline: float) -> T:
    """A non-blocking OpenSSL step, repeated until done or `deadline`."""
    while True:
        try:
            return step()
        except SSL.WantReadError:
            _ready(sock, selectors.EVENT_READ, deadline)
        except SSL.WantWriteError:
            _ready(sock, selectors.EVENT_WRITE, deadline)


def _plain(sock: socket.socket, request: bytes, deadline: float) -> int:
    """http:// (loopback collectors only): the same exchange without TLS."""
    sock.settimeout(_left(deadline))
    sock.sendall(request)
    head = b""
    while b"\r\n" not in head and len(head) < _MAX_HEAD:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return _status(head)


def _status(head: bytes) -> int:
    """The status code of `HTTP/1.x NNN ...`; anything else is a connection-level error."""
    line = head.partition(b"\r\n")[0].split(b" ")
    if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
        raise ConnectionError("the collector's answer is not an HTTP/1.x status line")
    return int(line[1])

