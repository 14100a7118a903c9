"""End to end: `pinproxy init HOST...` writes a starter pinset that `pinproxy check` accepts.

Real loopback TLS servers, reached through `--connect-to` so the test names need no DNS; the
written file is read back with the real loader and checked with the real `pinproxy check`.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from pinproxy.cli import main
from pinproxy.loader import load_pinset, parse_pinset
from pinproxy.pinset import Mode
from tests import certs, upstream
from tests.conftest import Serve
from tests.proxy import run_pinproxy

HOSTS = ("leaf.pinned.test", "inter.pinned.test")


def routes(pki: certs.TrustedPki, *pairs: tuple[str, int], ca: Path | None = None) -> list[str]:
    args = ["--upstream-ca", str(ca or pki.ca_bundle)]
    for name, port in pairs:
        args += ["--connect-to", f"{name}:443:127.0.0.1:{port}"]
    return args


@pytest.fixture
def genuine(serve: Serve, good_leaf: trustme.LeafCert) -> upstream.UpstreamServer:
    return serve(good_leaf)


def test_init_round_trip_through_the_loader_and_check(
        tmp_path: Path, pki: certs.TrustedPki, genuine: upstream.UpstreamServer,
        good_leaf: trustme.LeafCert) -> None:
    out = tmp_path / "pins.yaml"
    done = run_pinproxy("init", *HOSTS, "-o", str(out),
                        *routes(pki, *((h, genuine.port) for h in HOSTS)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == (f"pinproxy: wrote {out}: 2 host rules, mode report; add a backup pin "
                           "to each rule, then run 'pinproxy check'\n")
    pinset = load_pinset(out)
    expected = frozenset({certs.leaf_pin(good_leaf), pki.intermediate_pin})
    assert [(r.host, frozenset(map(str, r.pins))) for r in pinset.rules] == [
        (host, expected) for host in HOSTS]
    assert pinset.mode is Mode.REPORT  # until backups are added
    text = out.read_text()
    assert text.count("# backup pin still missing: run 'pinproxy backup-key'") == 2
    assert f"# leaf: {good_leaf_subject(good_leaf)}" in text
    assert pki.root_pin not in text  # an anchor pin would accept anything its CA issues
    checked = run_pinproxy("check", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    live = run_pinproxy("check", "--live", str(out),
                        *routes(pki, *((h, genuine.port) for h in HOSTS)))
    assert live.returncode == 0, live.stdout + live.stderr  # warnings only: no backup yet
    assert live.stdout.count("[live-no-backup]") == 2
    assert "live-no-pin-matches" not in live.stdout


def good_leaf_subject(leaf: trustme.LeafCert) -> str:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject.rfc4514_string()


def test_init_without_output_prints_the_pinset(pki: certs.TrustedPki,
                                               genuine: upstream.UpstreamServer) -> None:
    done = run_pinproxy("init", "leaf.pinned.test", "--mode", "enforce",
                        *routes(pki, ("leaf.pinned.test", genuine.port)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Starter pinset written by 'pinproxy init'")
    pinset = parse_pinset(done.stdout)
    assert pinset.mode is Mode.ENFORCE and [r.host for r in pinset.rules] == ["leaf.pinned.test"]


def test_a_port_other_than_443_is_noted(pki: certs.TrustedPki,
                                        genuine: upstream.UpstreamServer) -> None:
    done = run_pinproxy("init", f"127.0.0.1:{genuine.port}", "--upstream-ca", str(pki.ca_bundle))
    assert done.returncode == 0, done.stderr
    assert f"# probed on port {genuine.port}; a rule applies to every port of 127.0.0.1" in (
        done.stdout)
    assert [r.host for r in parse_pinset(done.stdout).rules] == ["127.0.0.1"]


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path, pki: certs.TrustedPki,
                                                 genuine: upstream.UpstreamServer) -> None:
    out = tmp_path / "pins.yaml"
    out.write_text("keep me\n")
    args = ["init", "leaf.pinned.test", "-o", str(out),
            *routes(pki, ("leaf.pinned.test", genuine.port))]
    done = run_pinproxy(*args)
    assert done.returncode == 2
    assert done.stderr == f"pinproxy: {out}: already exists; use --force to overwrite it\n"
    assert out.read_text() == "keep me\n"
    assert genuine.connections_accepted == 0  # refused before connecting anywhere
    forced = run_pinproxy(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert [r.host for r in load_pinset(out).rules] == ["leaf.pinned.test"]


def test_nothing_is_written_when_a_chain_does_not_verify(
        tmp_path: Path, pki: certs.TrustedPki, serve: Serve, genuine: upstream.UpstreamServer,
        rogue_leaf: trustme.LeafCert) -> None:
    untrusted = serve(rogue_leaf)
    out = tmp_path / "pins.yaml"
    done = run_pinproxy("init", "leaf.pinned.test", "root.pinned.test", "-o", str(out),
                        *routes(pki, ("leaf.pinned.test", genuine.port),
                                ("root.pinned.test", untrusted.port), ca=pki.root_file))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"pinproxy: root.pinned.test:443 (via 127.0.0.1:{untrusted.port})"
                               ": the chain does not verify (certificate at depth 0: unable to "
                               "get local issuer certificate")
    assert lines[1] == "pinproxy: nothing written: 1 of 2 hosts failed"
    assert not out.exists()


def test_nothing_is_written_when_a_host_is_unreachable(
        tmp_path: Path, pki: certs.TrustedPki, genuine: upstream.UpstreamServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        closed = listener.getsockname()[1]
    out = tmp_path / "pins.yaml"
    done = run_pinproxy("init", "leaf.pinned.test", "dead.pinned.test", "-o", str(out),
                        *routes(pki, ("leaf.pinned.test", genuine.port),
                                ("dead.pinned.test", closed)))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"pinproxy: cannot connect to dead.pinned.test:443 (via 127.0.0.1:{closed}): "
        "Connection refused",
        "pinproxy: nothing written: 1 of 2 hosts failed",
    ]
    assert not out.exists()
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "complaint"), [
    (["a.test", "A.test.:8443"], "pinproxy: 'A.test.:8443': host a.test is given twice; a rule "
                                 "covers every port of its host"),
    (["bad host!"], "pinproxy: host 'bad host!' is not a valid host name or IP address"),
    (["a.test", "-o", "/nonexistent/dir/pins.yaml"],
     "pinproxy: /nonexistent/dir/pins.yaml: no such directory: /nonexistent/dir"),
    (["a.test", "--upstream-ca", "/nonexistent/ca.pem"],
     "pinproxy: /nonexistent/ca.pem: cannot read CA file: No such file or directory"),
    (["a.test", "--mode", "off"], "argument --mode: invalid choice: 'off'"),
])
def test_bad_arguments_are_one_line_before_any_connection(
        args: list[str], complaint: str, genuine: upstream.UpstreamServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same `cli.main`): an uncaught exception would fail the test."""
    argv = ["init", *args, "--connect-to", f"a.test:443:127.0.0.1:{genuine.port}"]
    if complaint.startswith("pinproxy: "):
        assert main(argv) == 2
        assert capsys.readouterr().err == complaint + "\n"
    else:  # argparse's usage error
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("usage: pinproxy init") and complaint in stderr
    assert genuine.connections_accepted == 0
