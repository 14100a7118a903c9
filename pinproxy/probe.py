"""Connect to a live TLS server and read the chain it serves and the chain that verifies.

Pins are computed from the verified chain, like the proxy matches them; the served chain is kept
to show what the server sent (extra or missing certificates).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import certifi
from OpenSSL import SSL, crypto

from pinproxy._openssl import expect_name, verify_error_text
from pinproxy.errors import PinproxyError
from pinproxy.pins import CertificatePins, certificate_pins

__all__ = ["ProbeResult", "probe"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    served: tuple[CertificatePins, ...]
    verified: tuple[CertificatePins, ...]  # empty when verification failed
    error: str | None  # why the chain did not verify


def probe(host: str, port: int, servername: str | None = None, ca_file: str | None = None,
          timeout: float = 10.0) -> ProbeResult:
    """Handshake with `host:port` verifying chain and name; raise `PinproxyError` if unreachable."""
    name = servername or host
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return _handshake(sock, name, ca_file or certifi.where())
    except OSError as e:
        raise PinproxyError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None


def _handshake(sock: socket.socket, name: str, ca_file: str) -> ProbeResult:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(ca_file)
    errors: list[str] = []

    def remember(_c: SSL.Connection, _x: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            errors.append(f"certificate at depth {depth}: {verify_error_text(errno)}")
        return True  # finish the handshake so the served chain can be shown; verdict kept above

    context.set_verify(SSL.VERIFY_PEER, remember)
    conn = SSL.Connection(context, sock)
    expect_name(conn, name)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.Error as e:
        raise PinproxyError(f"TLS handshake with {name} failed: {e}") from None
    served = tuple(_pins(conn.get_peer_cert_chain() or []))
    verified = () if errors else tuple(_pins(conn.get_verified_chain() or []))
    conn.shutdown()
    return ProbeResult(served, verified, "; ".join(errors) or None)


def _pins(chain: list[crypto.X509]) -> list[CertificatePins]:
    return [certificate_pins(crypto.dump_certificate(crypto.FILETYPE_ASN1, c)) for c in chain]
