"""End to end: `pinproxy pin TARGET...` as a user runs it, on real files and real TLS servers.

Expected pins come from `tests/certs.py` and `cryptography` directly, never from pinproxy.
The test names do not resolve: `--connect-to NAME:443:127.0.0.1:PORT` reaches the loopback
server while SNI and verification keep the name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from pinproxy.cli import main
from pinproxy.loader import parse_pinset
from tests import certs, upstream
from tests.conftest import Serve
from tests.proxy import pinproxy_command, run_pinproxy

NAME = "leaf.pinned.test"


def key_pin(key: PublicKeyTypes) -> str:
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def live(pki: certs.TrustedPki, *servers: tuple[str, upstream.UpstreamServer | int],
         ca: Path | None = None) -> list[str]:
    """--upstream-ca and one --connect-to per (name, server or port)."""
    args = ["--upstream-ca", str(ca or pki.ca_bundle)]
    for name, server in servers:
        port = server if isinstance(server, int) else server.port
        args += ["--connect-to", f"{name}:443:127.0.0.1:{port}"]
    return args


def lines_of(section: str) -> list[str]:
    return [line for line in section.splitlines() if line and not line.startswith("#")]


def assert_clean(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def closed_port() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, pki: certs.TrustedPki,
           good_leaf: trustme.LeafCert) -> Path:
    path = tmp_path_factory.mktemp("files") / "bundle.pem"
    path.write_bytes(b"".join(p.bytes() for p in good_leaf.cert_chain_pems)
                     + pki.root.cert_pem.bytes())
    return path


# -- files ---------------------------------------------------------------------------------------

def test_every_input_kind_in_one_run(tmp_path: Path, bundle: Path, pki: certs.TrustedPki,
                                     good_leaf: trustme.LeafCert) -> None:
    leaf_pem = good_leaf.cert_chain_pems[0].bytes()
    leaf_cert = x509.load_pem_x509_certificate(leaf_pem)
    ec_key = load_pem_private_key(good_leaf.private_key_pem.bytes(), password=None)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "next.pinned.test")])
    ).sign(csr_key, hashes.SHA256())
    files = {
        "leaf.der": leaf_cert.public_bytes(Encoding.DER),
        "leaf.pub": leaf_cert.public_key().public_bytes(Encoding.PEM,
                                                        PublicFormat.SubjectPublicKeyInfo),
        "ec.key": ec_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL,
                                       NoEncryption()),
        "rsa.key": rsa_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL,
                                         NoEncryption()),
        "next.csr": csr.public_bytes(Encoding.PEM),
        "next.csr.der": csr.public_bytes(Encoding.DER),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = run_pinproxy("pin", str(bundle), *(str(tmp_path / name) for name in files))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    sections = done.stdout.split("\n\n")
    assert [s.splitlines()[0] for s in sections] == [
        f"# {bundle}", *(f"# {tmp_path / name}" for name in files)]
    leaf = certs.leaf_pin(good_leaf)
    expected = {
        "bundle.pem": [leaf, pki.intermediate_pin, pki.root_pin],
        "leaf.der": [leaf],
        "leaf.pub": [leaf],
        "ec.key": [leaf],
        "rsa.key": [key_pin(rsa_key.public_key())],
        "next.csr": [key_pin(csr_key.public_key())],
        "next.csr.der": [key_pin(csr_key.public_key())],
    }
    for section, pins in zip(sections, expected.values(), strict=True):
        assert [line.split("  ")[1] for line in lines_of(section)] == pins
    assert lines_of(sections[5]) == [
        f"0  {key_pin(csr_key.public_key())}  public key of CSR CN=next.pinned.test"]
    assert lines_of(sections[3])[0].endswith("public key of private key")


def test_bad_inputs_are_one_line_each(tmp_path: Path, bundle: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a key")
    done = run_pinproxy("pin", str(tmp_path / "missing.pem"), str(junk), "bad host!",
                        "host:99999", str(bundle))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"pinproxy: {tmp_path / 'missing.pem'}: no such file",
        f"pinproxy: {junk}: not a PEM or DER certificate, CSR, public key or private key",
        "pinproxy: host 'bad host!' is not a valid host name or IP address",
        "pinproxy: 'host:99999' is not HOST[:PORT]",
    ]
    assert done.stdout.splitlines()[0] == f"# {bundle}"  # twin: the good file is still shown
    assert_clean(done)


# -- live hosts: text ----------------------------------------------------------------------------

def test_live_host_shows_the_served_and_the_verified_chain(
        pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    done = run_pinproxy("pin", NAME, *live(pki, (NAME, server)))
    assert done.returncode == 0, done.stderr
    leaf = certs.leaf_pin(good_leaf)
    out = done.stdout.splitlines()
    assert out[0] == f"# {NAME}:443 (via 127.0.0.1:{server.port})"
    assert out[1] == "# served chain: as the server sent it, 0 = leaf"
    assert [line.split("  ")[:2] for line in out[2:4]] == [
        ["0", leaf], ["1", pki.intermediate_pin]]
    assert out[4].startswith("# verified chain: as OpenSSL built it")
    assert [line.split("  ")[:2] for line in out[5:8]] == [
        ["0", leaf], ["1", pki.intermediate_pin], ["2", pki.root_pin]]
    assert out[7].endswith("[not sent: from the trust store]")  # the root
    assert "NOT in the verified path" not in done.stdout  # twin of the decoy test
    assert done.stderr == ""  # no progress line: stderr is not a terminal


def test_decoy_certificate_is_marked(pki: certs.TrustedPki, serve: Serve) -> None:
    """CVE-2016-2402: the genuine intermediate appended to a rogue chain is no part of it."""
    server = serve(pki.attack_chain(NAME))
    done = run_pinproxy("pin", NAME, *live(pki, (NAME, server)))
    assert done.returncode == 0, done.stderr  # both roots are trusted: it does verify
    out = done.stdout.splitlines()
    decoy = out[3]
    assert decoy.startswith(f"1  {pki.intermediate_pin}  ")
    assert decoy.endswith("[NOT in the verified path: pins never match it]")
    assert "NOT in the verified path" not in out[2]  # twin: the rogue leaf is on the path
    verified = out[out.index(next(x for x in out if x.startswith("# verified"))) + 1:]
    assert [line.split("  ")[1] for line in verified][1:] == [pki.rogue_root_pin]


def test_chain_that_does_not_verify_shows_what_was_sent_and_exits_1(
        pki: certs.TrustedPki, serve: Serve, rogue_leaf: trustme.LeafCert) -> None:
    server = serve(rogue_leaf)
    done = run_pinproxy("pin", NAME, *live(pki, (NAME, server), ca=pki.root_file))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"pinproxy: {NAME}:443: the chain does not verify (certificate at "
                           "depth 0: unable to get local issuer certificate")
    assert line.endswith("); showing the certificates the server sent")
    assert lines_of(done.stdout)[0].split("  ")[:2] == ["0", certs.leaf_pin(rogue_leaf)]
    assert "# verified chain: none, the chain does not verify" in done.stdout
    trusted = run_pinproxy("pin", NAME, *live(pki, (NAME, server), ca=pki.rogue_file))
    assert trusted.returncode == 0  # twin: trusting its root


def test_unreachable_host_exits_2_and_the_other_targets_are_still_shown(
        pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert, bundle: Path,
        closed_port: int) -> None:
    server = serve(good_leaf)
    done = run_pinproxy("pin", "dead.pinned.test", NAME, str(bundle),
                        *live(pki, ("dead.pinned.test", closed_port), (NAME, server)))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"pinproxy: cannot connect to dead.pinned.test:443 (via 127.0.0.1:{closed_port}): "
        "Connection refused"]
    assert [s.splitlines()[0] for s in done.stdout.split("\n\n")] == [
        f"# {NAME}:443 (via 127.0.0.1:{server.port})", f"# {bundle}"]
    assert_clean(done)


@pytest.mark.parametrize(("args", "complaint"), [
    (["--connect-to", f"{NAME}:443:127.0.0.1"], "is not HOST:PORT:ADDR:PORT"),
    (["--connect-to", f"{NAME}:https:127.0.0.1:1"], "is not HOST:PORT:ADDR:PORT"),
    (["--connect-to", f"{NAME}:443:127.0.0.1:70000"], "is not HOST:PORT:ADDR:PORT"),
    (["--timeout", "-1"], "is not a number of seconds"),
    (["--format", "xml"], "invalid choice: 'xml'"),
])
def test_bad_options_are_usage_errors(args: list[str], complaint: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same `cli.main`): an uncaught exception would fail the test."""
    with pytest.raises(SystemExit) as exited:
        main(["pin", NAME, *args])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: pinproxy pin")
    assert complaint in stderr


def test_progress_lines_only_on_a_terminal(pki: certs.TrustedPki, serve: Serve,
                                           good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    args = ["pin", NAME, *live(pki, (NAME, server))]
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(pinproxy_command(*args), stdout=subprocess.PIPE, stderr=terminal,
                              stdin=subprocess.DEVNULL, text=True, timeout=30, check=False)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert shown.decode().splitlines() == [
        f"pinproxy: connecting to {NAME}:443 (via 127.0.0.1:{server.port})..."]
    piped = run_pinproxy(*args)
    assert piped.stderr == ""  # twin: not a terminal, no progress
    assert piped.stdout == done.stdout


# -- --format yaml -------------------------------------------------------------------------------

def test_yaml_is_a_ready_rule_for_a_host_and_a_placeholder_rule_for_a_file(
        pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert, bundle: Path) -> None:
    server = serve(good_leaf)
    done = run_pinproxy("pin", "--format", "yaml", NAME, str(bundle), *live(pki, (NAME, server)))
    assert done.returncode == 0, done.stderr
    pinset = parse_pinset("version: 1\n" + done.stdout)
    rules = {rule.host: {str(pin) for pin in rule.pins} for rule in pinset.rules}
    leaf = certs.leaf_pin(good_leaf)
    assert rules == {
        NAME: {leaf, pki.intermediate_pin},  # not the root: it would accept all its CA issues
        "replace-me.example": {leaf, pki.intermediate_pin, pki.root_pin},
    }
    out = done.stdout
    assert out.startswith("hosts:\n")
    assert f'- "{leaf}"  # leaf: ' in out
    assert f'- "{pki.intermediate_pin}"  # intermediate: ' in out
    assert out.count("# backup pin still missing: run 'pinproxy backup-key'") == 2
    assert f"# replace-me.example: replace with the host these keys serve (pins of {bundle})" in out


def test_yaml_suggests_no_rule_for_a_chain_that_does_not_verify(
        pki: certs.TrustedPki, serve: Serve, rogue_leaf: trustme.LeafCert) -> None:
    server = serve(rogue_leaf)
    done = run_pinproxy("pin", "--format", "yaml", NAME,
                        *live(pki, (NAME, server), ca=pki.root_file))
    assert done.returncode == 1
    assert done.stdout.startswith("hosts: []\n")
    assert f"# {NAME}:443: no rule: the chain does not verify" in done.stdout
    assert parse_pinset("version: 1\n" + done.stdout).rules == ()
    as_json = run_pinproxy("pin", "--format", "json", NAME,
                           *live(pki, (NAME, server), ca=pki.root_file))
    assert as_json.returncode == 1
    records = json.loads(as_json.stdout)
    assert [(r["chain"], r["label"], r["in_verified_path"]) for r in records] == [
        ("served", "unverified", False)]  # the rogue leaf alone; no verified chain


def test_a_hostile_subject_cannot_add_a_rule_or_drive_the_terminal(
        pki: certs.TrustedPki, serve: Serve) -> None:
    evil = '\n  - host: "evil.example"\n    pins: ["sha256/x"]\x1b[2J'
    server = serve(pki.intermediate.issue_cert(NAME, common_name=f"x{evil}"))
    done = run_pinproxy("pin", "--format", "yaml", NAME, *live(pki, (NAME, server)))
    assert done.returncode == 0, done.stderr
    assert [rule.host for rule in parse_pinset("version: 1\n" + done.stdout).rules] == [NAME]
    assert "\x1b" not in done.stdout and "\\x0a  - host" in done.stdout
    text = run_pinproxy("pin", NAME, *live(pki, (NAME, server)))
    assert "\x1b" not in text.stdout and len(text.stdout.splitlines()) == 8


# -- --format json -------------------------------------------------------------------------------

def test_json_records_every_certificate_with_its_place(
        tmp_path: Path, pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert) -> None:
    attack = serve(pki.attack_chain(NAME))
    genuine = serve(good_leaf)
    key = tmp_path / "next.pub"
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    done = run_pinproxy("pin", "--format", "json", NAME, "inter.pinned.test", str(key),
                        *live(pki, (NAME, attack), ("inter.pinned.test", genuine)))
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    keys = {"target", "chain", "depth", "label", "subject", "spki", "certificate",
            "in_verified_path", "sent", "not_after"}
    assert all(set(record) == keys for record in records)
    summary = [(r["target"], r["chain"], r["depth"], r["label"], r["in_verified_path"],
                r["sent"]) for r in records]
    assert summary == [
        (f"{NAME}:443", "served", 0, "leaf", True, True),
        (f"{NAME}:443", "served", 1, "not in verified path", False, True),  # the decoy
        (f"{NAME}:443", "verified", 0, "leaf", True, True),
        (f"{NAME}:443", "verified", 1, "root", True, False),
        ("inter.pinned.test:443", "served", 0, "leaf", True, True),
        ("inter.pinned.test:443", "served", 1, "intermediate", True, True),
        ("inter.pinned.test:443", "verified", 0, "leaf", True, True),
        ("inter.pinned.test:443", "verified", 1, "intermediate", True, True),
        ("inter.pinned.test:443", "verified", 2, "root", True, False),
        (str(key), "file", 0, "public key", None, None),
    ]
    decoy = records[1]
    assert decoy["spki"] == pki.intermediate_pin
    assert decoy["certificate"].startswith("cert-sha256/")
    assert decoy["not_after"].endswith("Z")
    assert records[3]["spki"] == pki.rogue_root_pin
    assert records[-1]["spki"] == key_pin(public)
    assert records[-1]["certificate"] is records[-1]["subject"] is records[-1]["not_after"] is None
