"""Shared fixtures: the test PKI (tests/certs.py), one proxy CA, upstream servers made per test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import trustme

from pinproxy.hostnames import normalize_host
from pinproxy.pins import certificate_pins
from tests import certs, upstream

# Names the test certificates are valid for. They do not resolve: clients reach them through
# the proxy with --connect-to / SNI (see tests/proxy.py), so no /etc/hosts is needed.
NAMES = (
    "leaf.pinned.test",
    "inter.pinned.test",
    "root.pinned.test",
    "cert.pinned.test",
    "report.pinned.test",
    "expired.pinned.test",
    "a.wild.pinned.test",
    "deep.down.sub.pinned.test",
    "free.test",
    "other.test",
    "127.0.0.1",
    "127.0.0.2",
)


@pytest.fixture(autouse=True)
def _empty_caches() -> None:
    """Each test starts with the pure core's caches empty, so it runs the cached function's body
    whatever earlier tests asked: under mutation testing (docs/testing.md) a warm cache would
    hide a mutated body, and mutmut would not map the test to the function it exercises."""
    normalize_host.cache_clear()
    certificate_pins.cache_clear()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.TrustedPki:
    return certs.trusted_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def good_leaf(pki: certs.TrustedPki) -> trustme.LeafCert:
    """The genuine server certificate: root -> intermediate -> leaf, for every test name."""
    return pki.issue(pki.intermediate, *NAMES)


@pytest.fixture(scope="session")
def rogue_leaf(pki: certs.TrustedPki) -> trustme.LeafCert:
    """A mis-issued certificate for the same names from the other, also trusted, root."""
    return pki.issue(pki.rogue_root, *NAMES)


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One proxy CA for the whole session: the first proxy creates it."""
    return tmp_path_factory.mktemp("mitmproxy-confdir")


class Serve(Protocol):
    """The `serve` fixture: start an upstream TLS server that stops when the test ends."""

    def __call__(self, cert: trustme.LeafCert | upstream.ServerChain,
                 protocol: upstream.UpstreamProtocol = "http1",
                 host: str = "127.0.0.1") -> upstream.UpstreamServer: ...


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an upstream TLS server for this test: serve(cert, protocol="http1", host=...)."""
    with contextlib.ExitStack() as stack:
        def start(cert: trustme.LeafCert | upstream.ServerChain,
                  protocol: upstream.UpstreamProtocol = "http1",
                  host: str = "127.0.0.1") -> upstream.UpstreamServer:
            server = upstream.UpstreamServer(cert, protocol, host=host)
            server.start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def plain_server() -> Iterator[upstream.PlainServer]:
    with upstream.PlainServer() as server:
        yield server
