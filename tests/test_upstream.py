"""Tests of the upstream test servers in ``tests/upstream.py`` and the PKI in ``tests/certs.py``.

The end-to-end tests trust these servers' counters to prove that nothing
reached the upstream, so here each server is driven by real clients (httpx,
curl, openssl, stdlib ssl, pyOpenSSL) with no proxy in between.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import pathlib
import shutil
import socket
import ssl
import struct
import subprocess
import time

import httpx
import pytest
import trustme
import wsproto
import wsproto.events
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from tests import certs, upstream

NAMES = ("api.pinned.test", "127.0.0.1")
HOST = "api.pinned.test"
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.TrustedPki:
    return certs.trusted_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaf(pki: certs.TrustedPki) -> trustme.LeafCert:
    return pki.issue(pki.intermediate, *NAMES)


def client_ctx(*cafiles: pathlib.Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata="".join(p.read_text() for p in cafiles))
    return ctx


def bundle_ctx(pki: certs.TrustedPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_bundle))


def recv_until(sock: socket.socket, expected: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while expected not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, check=True
    )


# --- PKI -------------------------------------------------------------------


def test_pki_layout(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    bundle = pki.ca_bundle.read_bytes()
    assert pki.root.cert_pem.bytes() in bundle
    assert pki.rogue_root.cert_pem.bytes() in bundle
    assert pki.root_file.read_bytes() == pki.root.cert_pem.bytes()
    # A leaf from the intermediate carries the intermediate, not the root.
    chain = [b.bytes() for b in leaf.cert_chain_pems]
    assert chain[1:] == [pki.intermediate.cert_pem.bytes()]
    pins = {pki.root_pin, pki.intermediate_pin, pki.rogue_root_pin, certs.leaf_pin(leaf)}
    assert len(pins) == 4 and all(p.startswith("sha256/") for p in pins)
    assert certs.leaf_pin(upstream.ServerChain.from_leaf(leaf)) == certs.leaf_pin(leaf)


@needs_openssl
def test_pins_agree_with_openssl_cli(pki: certs.TrustedPki) -> None:
    """Cross-check the pin helpers against an independent implementation."""
    pem = pki.intermediate.cert_pem.bytes()

    def openssl(*args: str, data: bytes) -> bytes:
        run = subprocess.run(["openssl", *args], input=data, capture_output=True, check=True)
        return run.stdout

    def b64(der: bytes) -> str:
        return base64.b64encode(hashlib.sha256(der).digest()).decode()

    public_key_pem = openssl("x509", "-pubkey", "-noout", data=pem)
    spki_der = openssl("pkey", "-pubin", "-outform", "DER", data=public_key_pem)
    cert_der = openssl("x509", "-outform", "DER", data=pem)
    assert certs.spki_pin(pem) == "sha256/" + b64(spki_der) == pki.intermediate_pin
    assert certs.cert_pin(pem) == "cert-sha256/" + b64(cert_der)


# --- HTTP/1.1 --------------------------------------------------------------


def test_http1_keepalive_two_requests_one_connection(
    pki: certs.TrustedPki, leaf: trustme.LeafCert
) -> None:
    with upstream.UpstreamServer(leaf, "http1", name="one") as srv:
        with httpx.Client(verify=bundle_ctx(pki)) as client:
            r1 = client.get(f"{srv.url}/first", headers={"X-Probe": "a"})
            r2 = client.post(f"{srv.url}/second", content=b"payload")
        assert [r1.status_code, r2.status_code] == [200, 200]
        assert r1.content == r2.content == b"hello from upstream one\n"
        assert r1.headers["x-upstream"] == "one"
        assert srv.connections_accepted == 1
        assert srv.handshakes_completed == 1
        assert [(r.method, r.path, r.body) for r in srv.requests] == [
            ("GET", "/first", b""),
            ("POST", "/second", b"payload"),
        ]
        assert srv.requests[0].headers["x-probe"] == "a"
        assert srv.requests[0].http_version == "1.1"
        received = srv.received_bytes()
        assert received.startswith(b"GET /first HTTP/1.1\r\n") and received.endswith(b"payload")


@needs_curl
def test_http1_with_curl_records_sni_and_host(
    pki: certs.TrustedPki, leaf: trustme.LeafCert
) -> None:
    with upstream.UpstreamServer(leaf, "http1", name="curl1") as srv:
        out = curl(
            "--cacert", str(pki.ca_bundle),
            "--resolve", f"{HOST}:{srv.port}:127.0.0.1",
            "-D", "-", f"https://{HOST}:{srv.port}/x",
        )  # fmt: skip
        assert out.stdout.startswith("HTTP/1.1 200")
        assert "x-upstream: curl1" in out.stdout.lower()
        assert out.stdout.endswith("hello from upstream curl1\n")
        assert srv.requests[0].authority == f"{HOST}:{srv.port}"
        assert srv.tls_sessions[0].sni == HOST
        assert srv.tls_sessions[0].alpn == "http/1.1"


# --- HTTP/2 ----------------------------------------------------------------


def test_h2_negotiates_http2(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    with upstream.UpstreamServer(leaf, "h2", name="two") as srv:
        with httpx.Client(verify=bundle_ctx(pki), http2=True) as client:
            r1 = client.get(f"{srv.url}/a")
            r2 = client.post(f"{srv.url}/b", content=b"body2")
        assert r1.http_version == r2.http_version == "HTTP/2"
        assert r1.status_code == 200 and r1.content == b"hello from upstream two\n"
        assert r1.headers["x-upstream"] == "two"
        assert srv.connections_accepted == 1
        assert srv.tls_sessions[0].alpn == "h2"
        assert [(r.method, r.path, r.body, r.http_version) for r in srv.requests] == [
            ("GET", "/a", b"", "2"),
            ("POST", "/b", b"body2", "2"),
        ]
        assert srv.requests[0].authority == f"127.0.0.1:{srv.port}"
        assert srv.received_bytes().startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def test_h2_server_falls_back_to_http1(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    with upstream.UpstreamServer(leaf, "h2") as srv:
        with httpx.Client(verify=bundle_ctx(pki), http2=False) as client:
            r = client.get(srv.url)
        assert r.http_version == "HTTP/1.1" and r.status_code == 200
        assert srv.tls_sessions[0].alpn == "http/1.1"
        assert srv.requests[0].http_version == "1.1"


@needs_curl
def test_h2_with_curl(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    with upstream.UpstreamServer(leaf, "h2", name="curl2") as srv:
        out = curl(
            "--http2", "--cacert", str(pki.ca_bundle),
            "--resolve", f"{HOST}:{srv.port}:127.0.0.1",
            "-w", "\n%{http_version}", f"https://{HOST}:{srv.port}/",
        )  # fmt: skip
        assert out.stdout == "hello from upstream curl2\n\n2"
        assert srv.requests[0].authority == f"{HOST}:{srv.port}"


# --- WebSocket and raw -----------------------------------------------------


def ws_events(
    sock: ssl.SSLSocket, ws: wsproto.WSConnection, want: type[wsproto.events.Event]
) -> list[wsproto.events.Event]:
    """Read until an event of type ``want`` arrives; return all events seen."""
    seen: list[wsproto.events.Event] = []
    while not any(isinstance(e, want) for e in seen):
        data = sock.recv(65536)
        ws.receive_data(data or None)
        seen.extend(ws.events())
        if not data:
            break
    return seen


def test_websocket_echo(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    with upstream.UpstreamServer(leaf, "websocket", name="ws") as srv:
        with socket.create_connection(srv.address, timeout=5) as raw:
            ctx = bundle_ctx(pki)
            ctx.set_alpn_protocols(["http/1.1"])
            with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                tls.sendall(ws.send(wsproto.events.Request(host=HOST, target="/chat")))
                assert any(
                    isinstance(e, wsproto.events.AcceptConnection)
                    for e in ws_events(tls, ws, wsproto.events.AcceptConnection)
                )
                tls.sendall(ws.send(wsproto.events.TextMessage(data="hi there")))
                replies = ws_events(tls, ws, wsproto.events.TextMessage)
                assert [e.data for e in replies if isinstance(e, wsproto.events.TextMessage)] == [
                    "echo: hi there"
                ]
                tls.sendall(ws.send(wsproto.events.CloseConnection(code=1000)))
                ws_events(tls, ws, wsproto.events.CloseConnection)
        assert srv.messages == ["hi there"]
        assert srv.requests[0].path == "/chat" and srv.requests[0].method == "GET"
        assert srv.requests[0].headers["upgrade"] == "websocket"
        assert srv.tls_sessions[0].alpn == "http/1.1"


def test_raw_echo_without_alpn(pki: certs.TrustedPki, leaf: trustme.LeafCert) -> None:
    with upstream.UpstreamServer(leaf, "raw") as srv:
        with socket.create_connection(srv.address, timeout=5) as raw:
            ctx = bundle_ctx(pki)
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                assert tls.selected_alpn_protocol() is None
                tls.sendall(b"ping\n")
                assert recv_until(tls, b"ping\n") == b"echo:ping\n"
                tls.sendall(b"\x00binary")
                assert recv_until(tls, b"binary") == b"echo:\x00binary"
        assert srv.received_bytes() == b"ping\n\x00binary"


# --- the attack chain --------------------------------------------------------


def test_attack_chain_is_sent_verbatim(pki: certs.TrustedPki) -> None:
    """Rogue leaf first, then the genuine pinned intermediate -- nothing rebuilt or dropped."""
    chain = pki.attack_chain(HOST)
    with upstream.UpstreamServer(chain, "raw") as srv:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)  # verify nothing: we only want to look
        with socket.create_connection(srv.address) as raw:  # blocking, for pyOpenSSL
            conn = SSL.Connection(ctx, raw)
            conn.set_tlsext_host_name(HOST.encode())
            conn.set_connect_state()
            conn.do_handshake()
            presented = conn.get_peer_cert_chain(as_cryptography=True) or []
            conn.shutdown()
        pems = [c.public_bytes(Encoding.PEM) for c in presented]
        assert len(pems) == 2
        assert certs.cert_pin(pems[0]) == certs.cert_pin(chain.leaf_pem)
        assert certs.spki_pin(pems[1]) == pki.intermediate_pin
        # ... and the leaf really comes from the rogue root, not the intermediate.
        rogue_root = x509.load_pem_x509_certificate(pki.rogue_root.cert_pem.bytes())
        assert presented[0].issuer == rogue_root.subject


def test_attack_chain_validates_only_via_rogue_root(pki: certs.TrustedPki) -> None:
    with upstream.UpstreamServer(pki.attack_chain(HOST), "raw") as srv:
        for ctx, ok in [
            (client_ctx(pki.root_file), False),
            (client_ctx(pki.rogue_file), True),
            (bundle_ctx(pki), True),
        ]:
            with socket.create_connection(srv.address, timeout=5) as raw:
                if ok:
                    with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                        tls.sendall(b"x")
                        assert recv_until(tls, b"x") == b"echo:x"
                else:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        ctx.wrap_socket(raw, server_hostname=HOST)
        upstream.wait_for(lambda: srv.connections_closed == 3)
        assert (srv.handshakes_failed, srv.handshakes_completed) == (1, 2)
        assert srv.received_bytes() == b"xx"


# --- counters on client abort --------------------------------------------------


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
def test_certificate_rejection_counts_as_failed_handshake(
    pki: certs.TrustedPki, leaf: trustme.LeafCert, version: ssl.TLSVersion
) -> None:
    """Also in TLS 1.3: a client that rejects the certificate never sends Finished."""
    with upstream.UpstreamServer(leaf, "http1", tls_version=version) as srv:
        with (
            socket.create_connection(srv.address, timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            client_ctx(pki.rogue_file).wrap_socket(raw, server_hostname=HOST)
        upstream.wait_for(lambda: srv.connections_closed == 1)
        assert srv.connections_accepted == 1
        assert srv.handshakes_completed == 0
        assert srv.handshake_errors == ["TLSV1_ALERT_UNKNOWN_CA"]
        assert srv.received_bytes() == b""
        assert srv.requests == []


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
def test_hangup_after_handshake_counts_as_completed(
    pki: certs.TrustedPki, leaf: trustme.LeafCert, version: ssl.TLSVersion
) -> None:
    """What a client that checks pins only *after* the handshake looks like upstream."""
    with upstream.UpstreamServer(leaf, "http1", tls_version=version) as srv:
        with (
            socket.create_connection(srv.address, timeout=5) as raw,
            bundle_ctx(pki).wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            negotiated = tls.version()
        upstream.wait_for(lambda: srv.connections_closed == 1)
        assert negotiated == version.name.replace("_", ".")
        assert (srv.handshakes_completed, srv.handshakes_failed) == (1, 0)
        assert srv.tls_sessions[0].version == negotiated
        assert srv.received_bytes() == b""


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
def test_reset_right_after_client_handshake(
    pki: certs.TrustedPki, leaf: trustme.LeafCert, version: ssl.TLSVersion
) -> None:
    """TLS 1.3 asymmetry: the client is done after *sending* Finished.

    A client that resets at that moment usually destroys its Finished in the
    server's receive queue, so the server records ConnectionResetError instead
    of a completed handshake.  In TLS 1.2 the server's Finished comes last, so
    a client-side completion implies a server-side one.
    """
    with upstream.UpstreamServer(leaf, "http1", tls_version=version) as srv:
        raw = socket.create_connection(srv.address, timeout=5)
        tls = bundle_ctx(pki).wrap_socket(raw, server_hostname=HOST)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
        upstream.wait_for(lambda: srv.connections_closed == 1)
        outcome = (srv.handshakes_completed, srv.handshake_errors)
        if version is ssl.TLSVersion.TLSv1_2:
            assert outcome == (1, [])
        else:
            assert outcome in [(1, []), (0, ["ConnectionResetError"])]
        assert srv.received_bytes() == b""


def test_misbehaving_clients_are_quiet(
    pki: certs.TrustedPki, leaf: trustme.LeafCert, capfd: pytest.CaptureFixture[str]
) -> None:
    linger_rst = struct.pack("ii", 1, 0)
    with upstream.UpstreamServer(leaf, "h2") as srv:
        # 1. plaintext HTTP to a TLS port
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""  # (or a reset, when the request was unread)
        # 2. TCP reset in the middle of the handshake
        s = socket.create_connection(srv.address, timeout=5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # truncated ClientHello
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
        s.close()
        # 3. garbage after a completed handshake, then a reset
        raw = socket.create_connection(srv.address, timeout=5)
        ctx = bundle_ctx(pki)
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(raw, server_hostname=HOST)
        upstream.wait_for(lambda: srv.handshakes_completed == 1)  # see the TLS 1.3 RST test
        tls.sendall(b"this is not an http/2 preface\r\n\r\n")
        upstream.wait_for(srv.received_bytes)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
        tls.close()
        upstream.wait_for(lambda: srv.connections_closed == 3)
        # the server still works
        with httpx.Client(verify=bundle_ctx(pki), http2=True) as client:
            assert client.get(srv.url).status_code == 200
    assert srv.handshakes_failed == 2
    assert srv.handshakes_completed == 2
    assert srv.received_bytes().startswith(b"this is not an http/2 preface")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err


# --- plaintext server ------------------------------------------------------------


def test_plain_server_answers_http_and_records_everything() -> None:
    with upstream.PlainServer("plain") as srv:
        with httpx.Client() as client:
            r = client.get(f"{srv.url}/p")
        assert r.status_code == 200 and r.headers["x-upstream"] == "plain"
        # A TLS ClientHello is not HTTP: recorded, then dropped without an answer.
        with (
            socket.create_connection(srv.address, timeout=5) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=HOST)
        upstream.wait_for(lambda: srv.connections_closed == 2)
        assert srv.connections_accepted == 2
        assert [(q.method, q.path) for q in srv.requests] == [("GET", "/p")]
        received = srv.received_bytes()
        assert received.startswith(b"GET /p HTTP/1.1\r\n")
        assert b"\r\n\r\n\x16\x03" in received  # the TLS record header followed


# --- lifecycle ---------------------------------------------------------------------


def test_stop_is_prompt_with_idle_connections(
    pki: certs.TrustedPki, leaf: trustme.LeafCert
) -> None:
    srv = upstream.UpstreamServer(leaf, "http1")
    with srv, contextlib.ExitStack() as clients:
        # one client stuck before the handshake, one idle after it
        clients.enter_context(socket.create_connection(srv.address, timeout=5))
        raw = clients.enter_context(socket.create_connection(srv.address, timeout=5))
        clients.enter_context(bundle_ctx(pki).wrap_socket(raw, server_hostname=HOST))
        upstream.wait_for(lambda: srv.handshakes_completed == 1)
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 1.0
        assert srv.connections_closed == 2
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(srv.address, timeout=1).close()


def test_wait_for_returns_value_or_times_out() -> None:
    assert upstream.wait_for(lambda: 42) == 42
    with pytest.raises(TimeoutError):
        upstream.wait_for(lambda: 0, timeout=0.05)
