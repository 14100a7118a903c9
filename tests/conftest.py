"""Shared fixtures: one test PKI, one proxy CA directory, and upstream servers made per test."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests import upstream

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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> upstream.Pki:
    return upstream.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def good_leaf(pki: upstream.Pki) -> trustme.LeafCert:
    """The genuine server certificate: root -> intermediate -> leaf, for every test name."""
    return pki.issue(pki.good_intermediate, *NAMES)


@pytest.fixture(scope="session")
def rogue_leaf(pki: upstream.Pki) -> trustme.LeafCert:
    """A mis-issued certificate for the same names from the other, also trusted, root."""
    return pki.issue(pki.rogue_ca, *NAMES)


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One proxy CA for the whole session: the first proxy creates it."""
    return tmp_path_factory.mktemp("mitmproxy-confdir")


Serve = Callable[..., upstream.UpstreamServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an upstream TLS server for this test: serve(cert, protocol="http1", host=...)."""
    with contextlib.ExitStack() as stack:
        def start(cert: trustme.LeafCert | upstream.ServerChain, protocol: str = "http1",
                  host: str = "127.0.0.1") -> upstream.UpstreamServer:
            server = upstream.UpstreamServer(cert, protocol, host=host)  # type: ignore[arg-type]
            server.start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def plain_server() -> Iterator[upstream.PlainServer]:
    with upstream.PlainServer() as server:
        yield server
