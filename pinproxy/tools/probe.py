"""Connect to a live TLS server and read the chain it serves and the chain that verifies.

Pins are computed from the verified chain, like the proxy matches them; the served chain is kept
to show what the server sent: extra certificates that are not part of the verified path (the
CVE-2016-2402 decoy: a genuine pinned intermediate appended to a rogue chain), and the trust
anchor that a server usually does not send.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import certifi
from OpenSSL import SSL, crypto

from pinproxy.errors import PinproxyError
from pinproxy.files import open_regular
from pinproxy.pins import CertificatePins
from pinproxy.proxy._openssl import expect_name, verify_error_text, x509_pins

__all__ = ["ConnectOverride", "ProbeResult", "check_ca_file", "probe", "probe_many", "route",
           "target_text"]

MAX_WORKERS = 8


class ConnectOverride(Protocol):
    """curl's `--connect-to` (`pinproxy.commands._args.ConnectTo`): where to reach host:port."""

    def applies(self, host: str, port: int) -> bool: ...

    def target(self, host: str, port: int) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One handshake: the name it was for, where it went, and both chains, leaf first."""

    name: str  # the SNI sent and the name the certificate was verified for
    address: tuple[str, int]  # where the TCP connection went
    served: tuple[CertificatePins, ...]  # as the server sent them
    verified: tuple[CertificatePins, ...]  # as OpenSSL built them; empty when not verified
    error: str | None  # why the chain did not verify

    def in_verified_path(self, cert: CertificatePins) -> bool:
        return any(cert.der == other.der for other in self.verified)

    def was_sent(self, cert: CertificatePins) -> bool:
        return any(cert.der == other.der for other in self.served)


def route(host: str, port: int, connect_to: Sequence[ConnectOverride]) -> tuple[str, int]:
    """Where to connect for host:port: the first `--connect-to` that applies, as curl does."""
    for override in connect_to:
        if override.applies(host, port):
            return override.target(host, port)
    return host, port


def target_text(host: str, port: int, connect_to: Sequence[ConnectOverride] = ()) -> str:
    """`host:port`, and where it is really reached when a `--connect-to` applies."""
    address = route(host, port, connect_to)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if address == (host, port):
        return where
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{where} (via {shown}:{address[1]})"


def check_ca_file(ca_file: str | None) -> str:
    """The CA bundle to verify with (certifi's by default); `PinproxyError` if unusable.

    Checked once up front, so a bad `--upstream-ca` is one error, not one per host.
    """
    if ca_file is None:
        return certifi.where()
    try:  # OpenSSL would block on a FIFO: only a regular file goes further
        open_regular(ca_file).close()
    except OSError as e:
        raise PinproxyError(f"{ca_file}: cannot read CA file: {e.strerror or e}") from None
    try:
        SSL.Context(SSL.TLS_CLIENT_METHOD).load_verify_locations(ca_file)
    except SSL.Error:
        raise PinproxyError(f"{ca_file}: no CA certificate could be read "
                            "(a PEM file of CA certificates is expected)") from None
    return ca_file


def probe(host: str, port: int, servername: str | None = None, ca_file: str | None = None,
          timeout: float = 10.0, connect_to: Sequence[ConnectOverride] = ()) -> ProbeResult:
    """Handshake with `host:port`, verifying chain and name; raise `PinproxyError` if unreachable.

    `timeout` bounds the whole probe (connect and handshake), so a server that accepts and
    never answers cannot hang the caller.
    """
    _check_timeout(timeout)
    name = servername or host
    address = route(host, port, connect_to)
    where = target_text(host, port, connect_to)
    deadline = time.monotonic() + timeout
    cafile = check_ca_file(ca_file)
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            served, verified, error = _handshake(sock, name, cafile, deadline)
    except TimeoutError:
        raise PinproxyError(f"cannot connect to {where}: no answer within {timeout:g} s") from None
    except OSError as e:
        raise PinproxyError(f"cannot connect to {where}: {e.strerror or e}") from None
    except SSL.Error as e:
        raise PinproxyError(f"TLS handshake with {where} failed: {_ssl_error_text(e)}") from None
    return ProbeResult(name, address, served, verified, error)


def probe_many(
    targets: Sequence[tuple[str, int]], *, servername: str | None = None,
    ca_file: str | None = None, timeout: float = 10.0,
    connect_to: Sequence[ConnectOverride] = (),
    on_start: Callable[[str, int], None] | None = None,
) -> list[ProbeResult | PinproxyError]:
    """Probe several hosts at once, so twenty hosts take about one timeout, not twenty.

    Results come back in the order of `targets`; an unreachable host gives its
    `PinproxyError` in its place. A bad `ca_file` raises at once.
    """
    check_ca_file(ca_file)
    _check_timeout(timeout)

    def one(target: tuple[str, int]) -> ProbeResult | PinproxyError:
        if on_start is not None:
            on_start(*target)
        try:
            return probe(*target, servername, ca_file, timeout, connect_to)
        except PinproxyError as e:
            return e

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(targets))) as pool:
        return list(pool.map(one, targets))


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:  # socket would raise ValueError for 0 > timeout; NaN is not > 0 either
        raise PinproxyError(f"the timeout must be a positive number of seconds, not {timeout}")


_Chains = tuple[tuple[CertificatePins, ...], tuple[CertificatePins, ...], str | None]


def _handshake(sock: socket.socket, name: str, ca_file: str, deadline: float) -> _Chains:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(ca_file)
    errors: list[str] = []

    def remember(_c: SSL.Connection, _x: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            errors.append(f"certificate at depth {depth}: {verify_error_text(errno)}")
        return True  # finish the handshake so the served chain can be shown; verdict kept above

    conn = SSL.Connection(context, sock)
    conn.set_verify(SSL.VERIFY_PEER, remember)
    expect_name(conn, name)
    conn.set_connect_state()
    sock.setblocking(False)
    _drive(conn.do_handshake, sock, deadline)
    served = tuple(_pins(conn.get_peer_cert_chain() or []))
    verified = () if errors else tuple(_pins(conn.get_verified_chain() or []))
    with contextlib.suppress(SSL.Error):
        conn.shutdown()  # one close_notify; the server's reply is not worth waiting for
    return served, verified, "; ".join(errors) or None


def _drive(step: Callable[[], object], sock: socket.socket, deadline: float) -> None:
    """Run a non-blocking OpenSSL step to completion, waiting on the socket until `deadline`."""
    while True:
        try:
            step()
            return
        except SSL.WantReadError:
            event = selectors.EVENT_READ
        except SSL.WantWriteError:
            event = selectors.EVENT_WRITE
        with selectors.DefaultSelector() as selector:  # not select(): no limit on fd numbers
            selector.register(sock, event)
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError


def _ssl_error_text(error: SSL.Error) -> str:
    """OpenSSL's reasons (`tlsv1 alert unknown ca`), not pyOpenSSL's list of tuples."""
    if isinstance(error, SSL.SysCallError):
        code, text = (*error.args, None, None)[:2]
        return "the server closed the connection" if code in (-1, 0) else str(text or code)
    reasons = [str(item[-1]) for item in (error.args[0] if error.args else [])
               if isinstance(item, tuple)]
    return "; ".join(reasons) or str(error) or type(error).__name__


def _pins(chain: list[crypto.X509]) -> list[CertificatePins]:
    return [x509_pins(c) for c in chain]
