"""Tests of `pinproxy.tools.probe` against real loopback TLS servers (tests/upstream.py).

The test names do not resolve: `--connect-to` routes them to the loopback server while SNI and
verification keep the name, as curl does. Pins are cross-checked with `tests/certs.py`, which
computes them without pinproxy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mitmproxy.addons import tlsconfig
from OpenSSL import SSL

from pinproxy.commands._args import ConnectTo, connect_to
from pinproxy.errors import PinproxyError
from pinproxy.pins import CertificatePins
from pinproxy.proxy import _openssl
from pinproxy.tools.probe import ProbeResult, check_ca_file, probe, probe_many, route, target_text
from tests import certs, upstream
from tests.conftest import Serve

NAME = "leaf.pinned.test"


def via(server: upstream.UpstreamServer | int, name: str = NAME) -> list[ConnectTo]:
    port = server if isinstance(server, int) else server.port
    return [connect_to(f"{name}:443:127.0.0.1:{port}")]


def spki_pins(chain: tuple[CertificatePins, ...]) -> list[str]:
    return [str(cert.spki) for cert in chain]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but nobody ever answers TLS."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


# -- chains --------------------------------------------------------------------------------------

def test_good_chain_served_and_verified(pki: certs.TrustedPki, serve: Serve,
                                        good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    result = probe(NAME, 443, ca_file=str(pki.ca_bundle), connect_to=via(server))
    leaf, intermediate, root = (certs.leaf_pin(good_leaf), pki.intermediate_pin, pki.root_pin)
    assert result.error is None
    assert result.name == NAME and result.address == ("127.0.0.1", server.port)
    assert spki_pins(result.served) == [leaf, intermediate]  # what the server sent, in order
    assert spki_pins(result.verified) == [leaf, intermediate, root]  # the anchor, though not sent
    assert all(result.in_verified_path(cert) for cert in result.served)
    assert [result.was_sent(cert) for cert in result.verified] == [True, True, False]
    # --connect-to kept the name for SNI (the server thread records it just after the client)
    assert upstream.wait_for(lambda: server.tls_sessions)[0].sni == NAME


def test_attack_chain_decoy_is_sent_but_not_in_the_verified_path(
        pki: certs.TrustedPki, serve: Serve) -> None:
    """CVE-2016-2402: a rogue leaf with the genuine intermediate appended."""
    server = serve(pki.attack_chain(NAME))
    result = probe(NAME, 443, ca_file=str(pki.ca_bundle), connect_to=via(server))
    assert result.error is None  # the rogue root is trusted: only pins stop this chain
    decoy = result.served[1]
    assert str(decoy.spki) == pki.intermediate_pin
    assert not result.in_verified_path(decoy)
    assert result.in_verified_path(result.served[0])  # twin: the rogue leaf is on the path
    assert spki_pins(result.verified)[1:] == [pki.rogue_root_pin]
    assert pki.intermediate_pin not in spki_pins(result.verified)


def test_chain_from_an_untrusted_root_does_not_verify(pki: certs.TrustedPki, serve: Serve,
                                                      rogue_leaf: trustme.LeafCert) -> None:
    server = serve(rogue_leaf)
    result = probe(NAME, 443, ca_file=str(pki.root_file), connect_to=via(server))
    assert result.error and "unable to get local issuer certificate" in result.error
    assert result.verified == ()
    assert spki_pins(result.served)[0] == certs.leaf_pin(rogue_leaf)  # still shown
    trusted = probe(NAME, 443, ca_file=str(pki.rogue_file), connect_to=via(server))
    assert trusted.error is None and trusted.verified  # twin: its own root trusts it


def test_wrong_name_does_not_verify(pki: certs.TrustedPki, serve: Serve,
                                    good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    result = probe("127.0.0.1", server.port, servername="not-in-the-cert.test",
                   ca_file=str(pki.ca_bundle))
    assert result.error and "hostname mismatch" in result.error
    assert result.verified == ()
    assert upstream.wait_for(lambda: server.tls_sessions)[0].sni == "not-in-the-cert.test"
    named = probe("127.0.0.1", server.port, servername=NAME, ca_file=str(pki.ca_bundle))
    assert named.error is None  # twin


def test_an_ip_address_is_verified_as_an_ip(pki: certs.TrustedPki, serve: Serve,
                                            good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)  # its certificate names 127.0.0.1 but not 127.0.0.3
    assert probe("127.0.0.1", server.port, ca_file=str(pki.ca_bundle)).error is None
    other = probe("127.0.0.1", server.port, servername="127.0.0.3", ca_file=str(pki.ca_bundle))
    assert other.error and "IP address mismatch" in other.error


# -- failures ------------------------------------------------------------------------------------

def test_unreachable_host_is_one_clear_error(closed_port: int) -> None:
    with pytest.raises(PinproxyError, match=rf"^cannot connect to {NAME}:443 \(via "
                                            rf"127\.0\.0\.1:{closed_port}\): Connection refused$"):
        probe(NAME, 443, connect_to=via(closed_port))


def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(PinproxyError, match=r"no answer within 0\.3 s"):
            probe("127.0.0.1", port, timeout=0.3)
        assert time.monotonic() - started < 2


def test_a_server_that_is_not_tls(plain_server: upstream.PlainServer) -> None:
    with pytest.raises(PinproxyError, match=r"^TLS handshake with 127\.0\.0\.1:\d+ failed: "):
        probe("127.0.0.1", plain_server.port, timeout=5)


def test_ca_file_is_checked_once_with_a_clear_error(tmp_path: Path, pki: certs.TrustedPki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(PinproxyError, match=r"garbage\.pem: no CA certificate could be read"):
        check_ca_file(str(garbage))
    with pytest.raises(PinproxyError, match=r"missing\.pem: cannot read CA file: No such file"):
        probe_many([(NAME, 443)], ca_file=str(tmp_path / "missing.pem"))
    assert check_ca_file(str(pki.ca_bundle)) == str(pki.ca_bundle)  # twin
    assert check_ca_file(None).endswith(".pem")  # certifi's bundle


# -- --connect-to --------------------------------------------------------------------------------

def test_route_takes_the_first_connect_to_that_applies() -> None:
    rules = [connect_to("other.test:443:10.0.0.1:1"), connect_to(f"{NAME}:8443:10.0.0.2:2"),
             connect_to(f"{NAME}::10.0.0.3:"), connect_to("::10.0.0.4:4")]
    assert route(NAME, 443, rules) == ("10.0.0.3", 443)  # empty port: any port, same port
    assert route(NAME, 8443, rules) == ("10.0.0.2", 2)
    assert route("other.test", 443, rules) == ("10.0.0.1", 1)
    assert route("third.test", 443, rules) == ("10.0.0.4", 4)  # empty host: any host
    assert route("third.test", 443, []) == ("third.test", 443)


def test_target_text_says_where_a_host_was_reached() -> None:
    assert target_text(NAME, 443) == f"{NAME}:443"
    assert target_text(NAME, 443, via(1234)) == f"{NAME}:443 (via 127.0.0.1:1234)"
    assert target_text("::1", 443, [connect_to("[::1]:443:[::2]:8443")]) == (
        "[::1]:443 (via [::2]:8443)")


# -- several hosts -------------------------------------------------------------------------------

def test_probe_many_keeps_order_and_turns_failures_into_values(
        pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert, closed_port: int) -> None:
    server = serve(good_leaf)
    routes = [*via(server), *via(closed_port, "dead.test")]
    started: list[tuple[str, int]] = []
    results = probe_many([("dead.test", 443), (NAME, 443)], ca_file=str(pki.ca_bundle),
                         connect_to=routes, on_start=lambda h, p: started.append((h, p)))
    assert isinstance(results[0], PinproxyError) and "dead.test" in str(results[0])
    assert isinstance(results[1], ProbeResult) and results[1].error is None
    assert sorted(started) == [("dead.test", 443), (NAME, 443)]
    assert probe_many([]) == []


def test_probe_many_probes_concurrently() -> None:
    """Six hosts that never answer take about one timeout, not six."""
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(silent_server()) for _ in range(6)]
        started = time.monotonic()
        results = probe_many([("127.0.0.1", port) for port in ports], timeout=0.5)
        elapsed = time.monotonic() - started
    assert all(isinstance(r, PinproxyError) and "no answer" in str(r) for r in results)
    assert elapsed < 1.5, elapsed


# -- the host-name check is the proxy's --------------------------------------------------------

def cn_only_chain(ca: trustme.CA, name: str) -> upstream.ServerChain:
    """A leaf naming `name` only in its subject CN (no subjectAltName), which browsers and the
    proxy refuse; OpenSSL's default host-name check would still accept it."""
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    issuer_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(issuer_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return upstream.ServerChain(key_pem, (leaf.public_bytes(serialization.Encoding.PEM),))


def verify_errors(port: int, ca_file: Path, hostflags: int) -> list[int]:
    """Handshake with `expect_name(..., hostflags)` and return OpenSSL's verify errors."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(ca_file))
    errors: list[int] = []

    def remember(_c: SSL.Connection, _x: object, errno: int, _d: int, ok: int) -> bool:
        if not ok:
            errors.append(errno)
        return True

    context.set_verify(SSL.VERIFY_PEER, remember)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(None)  # blocking for OpenSSL; the kernel bounds each wait instead
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        conn = SSL.Connection(context, sock)
        _openssl.expect_name(conn, NAME, hostflags)
        conn.set_connect_state()
        conn.do_handshake()
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
    return errors


def test_the_probe_checks_names_with_the_proxys_flags() -> None:
    assert _openssl.HOSTFLAGS == tlsconfig.DEFAULT_HOSTFLAGS  # what the proxy sets upstream
    assert _openssl.expect_name.__defaults__ == (tlsconfig.DEFAULT_HOSTFLAGS,)


def test_a_subject_cn_is_not_a_name_for_the_probe(pki: certs.TrustedPki, serve: Serve) -> None:
    server = serve(cn_only_chain(pki.root, NAME))
    result = probe(NAME, 443, ca_file=str(pki.ca_bundle), connect_to=via(server))
    assert result.error and "hostname mismatch" in result.error
    assert result.verified == ()
    assert verify_errors(server.port, pki.ca_bundle, _openssl.HOSTFLAGS) == [62]
    # twin: OpenSSL's default flags would have accepted the CN, as the probe once did
    assert verify_errors(server.port, pki.ca_bundle, 0) == []
