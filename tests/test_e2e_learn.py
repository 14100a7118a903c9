"""End to end: trust on first use. The real `pinproxy run --learn-file`, real loopback TLS
servers (the genuine and the rogue leaf for one name), curl, restarts, SIGHUP and the
`pinproxy learned` commands on the file the proxy wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.certs import TrustedPki, leaf_pin
from tests.conftest import Serve
from tests.proxy import Proxy, curl, run_pinproxy, start_pinproxy
from tests.upstream import UpstreamServer, wait_for

pytestmark = pytest.mark.e2e

PINSET = """\
version: 1
hosts:
  - host: free.test
    mode: learn
  - host: "*.wild.pinned.test"
    mode: learn
"""


def learning_proxy(pinset: Path, learn_file: Path, confdir: Path, pki: TrustedPki) -> Proxy:
    return start_pinproxy(pinset, confdir, pki.ca_bundle, "--learn-file", str(learn_file))


def assert_refused_untouched(proxy: Proxy, server: UpstreamServer, name: str,
                             reason: str = "pin-mismatch") -> None:
    """Refused before any byte: `server` must be fresh (no earlier request on it)."""
    result = curl(proxy, name, server.port, "/secret")
    assert result.status == 502, result
    assert f"reason: {reason}" in result.body
    wait_for(lambda: server.connections_closed >= server.connections_accepted)
    assert server.received_bytes() == b""
    assert server.handshakes_completed == 0


def assert_allowed(proxy: Proxy, server: UpstreamServer, name: str) -> None:
    result = curl(proxy, name, server.port, "/hello")
    assert (result.status, result.body) == (200, "hello from upstream upstream\n"), result


def learned_text(learn_file: Path, name: str) -> str:
    """The learn file's line for `name`, once the proxy has written it."""
    def line() -> str | None:
        text = learn_file.read_text() if learn_file.exists() else ""
        return next((x for x in text.splitlines() if x.startswith(f"{name} ")), None)
    return wait_for(line)


def test_learn_enforce_restart_forget_promote(tmp_path: Path, pki: TrustedPki, serve: Serve,
                                              good_leaf: trustme.LeafCert,
                                              rogue_leaf: trustme.LeafCert,
                                              confdir: Path) -> None:
    pinset, learn_file = tmp_path / "pins.yaml", tmp_path / "learned"
    pinset.write_text(PINSET)
    good, rogue = serve(good_leaf), serve(rogue_leaf)
    with learning_proxy(pinset, learn_file, confdir, pki) as proxy:
        assert_allowed(proxy, good, "free.test")  # first use: learned
        line = learned_text(learn_file, "free.test")
        assert leaf_pin(good_leaf) in line and pki.intermediate_pin in line
        proxy.wait_for_output(r"pinproxy learned free\.test on first use: ")
        refused = curl(proxy, "free.test", serve(rogue_leaf).port)
        assert "detail: learned on first use on " in refused.body
        assert leaf_pin(good_leaf) in refused.body.split("verified chain (0 = leaf)")[0]
        # a wildcard learn rule learns each name for itself
        assert_allowed(proxy, rogue, "a.wild.pinned.test")
        assert_refused_untouched(proxy, serve(good_leaf), "a.wild.pinned.test")
        learned_text(learn_file, "a.wild.pinned.test")
    with learning_proxy(pinset, learn_file, confdir, pki) as proxy:  # after a restart
        assert_refused_untouched(proxy, serve(rogue_leaf), "free.test")
        assert_allowed(proxy, good, "free.test")
        listed = run_pinproxy("learned", "list", "--learn-file", str(learn_file))
        assert listed.returncode == 0 and "free.test  " in listed.stdout
        forgot = run_pinproxy("learned", "forget", "FREE.test", "--learn-file", str(learn_file))
        assert forgot.returncode == 0, forgot.stderr
        proxy.reload()  # SIGHUP reads the learn file again: free.test is forgotten
        assert_allowed_eventually(proxy, rogue, "free.test")  # learned again: the rogue key
        assert leaf_pin(rogue_leaf) in learned_text(learn_file, "free.test")
        assert_refused_untouched(proxy, serve(good_leaf), "free.test")
    promoted = tmp_path / "promoted.yaml"
    result = run_pinproxy("learned", "promote", "-o", str(promoted),
                          "--learn-file", str(learn_file))
    assert result.returncode == 0, result.stderr
    checked = run_pinproxy("check", str(promoted))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with start_pinproxy(promoted, confdir, pki.ca_bundle) as proxy:  # ordinary rules now
        assert_allowed(proxy, rogue, "free.test")
        assert_refused_untouched(proxy, serve(good_leaf), "free.test")


def assert_allowed_eventually(proxy: Proxy, server: UpstreamServer, name: str) -> None:
    """After SIGHUP the re-read runs in a thread: retry until it is in force (bounded)."""
    def passes() -> bool | None:
        return True if curl(proxy, name, server.port, "/hello").status == 200 else None
    wait_for(passes, timeout=10)


def test_unverified_chain_is_never_learned(tmp_path: Path, pki: TrustedPki, serve: Serve,
                                           good_leaf: trustme.LeafCert, confdir: Path) -> None:
    pinset, learn_file = tmp_path / "pins.yaml", tmp_path / "learned"
    pinset.write_text(PINSET)
    untrusted = serve(trustme.CA().issue_cert("free.test"))  # not in the upstream CA
    with learning_proxy(pinset, learn_file, confdir, pki) as proxy:
        assert_refused_untouched(proxy, untrusted, "free.test", reason="chain-not-verified")
        assert not learn_file.exists()
        good = serve(good_leaf)
        assert_allowed(proxy, good, "free.test")
        assert leaf_pin(good_leaf) in learned_text(learn_file, "free.test")


def test_learning_needs_a_good_learn_file(tmp_path: Path, pki: TrustedPki,
                                          confdir: Path) -> None:
    pinset, learn_file = tmp_path / "pins.yaml", tmp_path / "learned"
    pinset.write_text(PINSET)
    common = ("run", "--pinset", str(pinset), "--listen-port", "0", "--confdir", str(confdir),
              "--upstream-ca", str(pki.ca_bundle), "--admin-listen", "127.0.0.1:0")
    missing = run_pinproxy(*common)
    assert missing.returncode == 2
    assert f"{pinset}:3: " in missing.stderr and "--learn-file" in missing.stderr
    learn_file.write_text("# fine\nfree.test yesterday sha256/x\n")
    corrupt = run_pinproxy(*common, "--learn-file", str(learn_file))
    assert corrupt.returncode == 2
    assert f"{learn_file}:2: " in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
    assert learn_file.read_text() == "# fine\nfree.test yesterday sha256/x\n"


def test_workers_share_what_they_learn(tmp_path: Path, pki: TrustedPki, serve: Serve,
                                       good_leaf: trustme.LeafCert,
                                       rogue_leaf: trustme.LeafCert, confdir: Path) -> None:
    pinset, learn_file = tmp_path / "pins.yaml", tmp_path / "learned"
    pinset.write_text(PINSET)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2",
                        "--learn-file", str(learn_file)) as proxy:
        proxy.wait_for_output(r"listening on .*\(worker \d/2\)[\s\S]*"
                              r"listening on .*\(worker \d/2\)", timeout=20)
        assert_allowed(proxy, serve(good_leaf), "free.test")  # one worker learns it
        learned_text(learn_file, "free.test")
        rogue = serve(rogue_leaf)
        # whichever worker takes each connection, the learned key is enforced: the other one
        # reads the changed file before it would learn
        for _ in range(6):
            result = curl(proxy, "free.test", rogue.port, "/secret")
            assert result.status == 502 and "reason: pin-mismatch" in result.body, result
        wait_for(lambda: rogue.connections_closed >= rogue.connections_accepted)
        assert rogue.received_bytes() == b""
        assert leaf_pin(good_leaf) in learned_text(learn_file, "free.test")
