"""`pinproxy backup-key`: the key, its mode, its CSR, its pin, and the refusals.

The pin is checked against OpenSSL run on the written key, and the CSR with `openssl req
-verify`, so a shared mistake in pinproxy's own hashing cannot hide.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from pinproxy.cli import main
from pinproxy.loader import parse_pinset
from pinproxy.pins import parse_pin
from tests.proxy import run_pinproxy

_PIN_LINE = re.compile(r"^Backup pin: (sha256/\S+)$", re.MULTILINE)
_YAML_LINE = re.compile(r"^      - \"sha256/[^\"]+\"  # backup key .*$", re.MULTILINE)


def openssl_pin(key_file: Path) -> str:
    """The recipe from the docs, as separate OpenSSL processes."""
    pubout = subprocess.run(["openssl", "pkey", "-in", str(key_file), "-pubout"],
                            capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pubout,
                         capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der,
                            capture_output=True, check=True).stdout
    b64 = subprocess.run(["base64"], input=digest, capture_output=True, check=True).stdout
    return "sha256/" + b64.decode().strip()


def openssl_verifies_csr(csr_file: Path) -> bool:
    done = subprocess.run(["openssl", "req", "-in", str(csr_file), "-verify", "-noout"],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "verify OK" in done.stdout + done.stderr


def spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- the default: EC P-256 into the current directory --------------------------------------

def test_default_writes_an_ec_key_0600_a_csr_and_prints_its_pin(tmp_path: Path) -> None:
    done = run_pinproxy("backup-key", "--san", "DNS:api.example.com", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    key_file, csr_file = tmp_path / "backup.key.pem", tmp_path / "backup.csr.pem"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.csr.pem", "backup.key.pem"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    key = load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert spki(csr.public_key()) == spki(key.public_key())
    assert openssl_verifies_csr(csr_file)
    assert csr.subject.rfc4514_string() == "CN=api.example.com"
    assert csr.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "api.example.com"]

    match = _PIN_LINE.search(done.stdout)
    assert match, done.stdout
    assert match.group(1) == openssl_pin(key_file)
    assert "store backup.key.pem offline" in done.stdout


def test_the_printed_yaml_line_goes_into_a_pinset_as_is(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(["backup-key", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    yaml_line = _YAML_LINE.search(out)
    pin_line = _PIN_LINE.search(out)
    assert yaml_line and pin_line, out
    pinset = parse_pinset("version: 1\nhosts:\n  - host: api.example.com\n    pins:\n"
                          f"      - sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M=\n"
                          f"{yaml_line.group(0)}\n")
    assert parse_pin(pin_line.group(1)) in pinset.rules[0].pins
    assert openssl_pin(tmp_path / "backup.key.pem") == pin_line.group(1)


def test_the_key_is_created_0600_whatever_the_umask(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    previous = os.umask(0)
    try:
        assert main(["backup-key", "--out", str(tmp_path)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "backup.key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "backup.csr.pem").stat().st_mode) == 0o644  # public


# -- choices -------------------------------------------------------------------------------

def test_rsa_with_subject_and_sans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup-key", "--out", str(tmp_path), "--name", "api-2027", "--type", "rsa",
                 "--rsa-bits", "2048", "--subject", "CN=api.example.com,O=Example",
                 "--san", "DNS:api.example.com", "--san", "dns:*.Bücher.example",
                 "--san", "IP:192.0.2.10", "--san", "IP:[2001:db8::1]"]) == 0
    key_file, csr_file = tmp_path / "api-2027.key.pem", tmp_path / "api-2027.csr.pem"
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert openssl_verifies_csr(csr_file)
    assert csr.subject.rfc4514_string() == "CN=api.example.com,O=Example"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["api.example.com",
                                                      "*.xn--bcher-kva.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.10",
                                                                              "2001:db8::1"]
    out = capsys.readouterr().out
    assert "a new RSA 2048 private key" in out
    assert f"Backup pin: {openssl_pin(key_file)}" in out


def test_without_san_or_subject_the_csr_still_verifies(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main(["backup-key", "--out", str(tmp_path)]) == 0
    csr = x509.load_pem_x509_csr((tmp_path / "backup.csr.pem").read_bytes())
    assert csr.subject.rfc4514_string() == "CN=pinproxy backup key"
    assert list(csr.extensions) == []
    assert openssl_verifies_csr(tmp_path / "backup.csr.pem")


# -- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("existing", ["backup.key.pem", "backup.csr.pem"])
def test_never_overwrites_and_leaves_nothing_behind(existing: str, tmp_path: Path) -> None:
    (tmp_path / existing).write_bytes(b"keep me")
    done = run_pinproxy("backup-key", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == (f"pinproxy: {tmp_path / existing}: already exists; backup-key never "
                           "overwrites a file (choose another --name or --out)\n")
    assert done.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_bytes() == b"keep me"


def test_refuses_a_symlink_in_place_of_the_key(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "backup.key.pem").symlink_to(target)
    assert main(["backup-key", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--rsa-bits", "4096"], "pinproxy: --rsa-bits applies only to --type rsa"),
    (["--out", "NOWHERE"], "pinproxy: --out NOWHERE: no such directory"),
    (["--name", "../escape"], "pinproxy: --name '../escape': give a plain file name"),
    (["--name", ""], "pinproxy: --name '': give a plain file name"),
    (["--san", "api.example.com"], "pinproxy: --san 'api.example.com': write DNS:<name> or "
                                   "IP:<address>"),
    (["--san", "DNS:-bad-.example"], "pinproxy: --san 'DNS:-bad-.example': host "
                                     "'-bad-.example' is not a valid host name"),
    (["--san", "DNS:192.0.2.1"], "pinproxy: --san 'DNS:192.0.2.1': an IP address goes in "
                                 "IP:192.0.2.1"),
    (["--san", "IP:300.1.1.1"], "pinproxy: --san 'IP:300.1.1.1': '300.1.1.1' does not appear "
                                "to be an IPv4 or IPv6 address"),
    (["--subject", "api.example.com"], "pinproxy: --subject 'api.example.com' is not a "
                                       "distinguished name"),
    (["--subject", "/CN=api.example.com"], "pinproxy: --subject '/CN=api.example.com' is not"),
    (["--subject", ""], "pinproxy: --subject '' is empty"),
    (["--subject", f"CN={'a' * 65}"], f"pinproxy: --subject 'CN={'a' * 65}' is not a "
                                      "distinguished name"),
])
def test_bad_arguments_are_one_line(args: list[str], message: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["backup-key", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_bad_argument_from_the_real_cli(tmp_path: Path) -> None:
    done = run_pinproxy("backup-key", "--san", "DNS:-bad-.example", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


@pytest.mark.parametrize("args", [["--type", "dsa"], ["--type", "rsa", "--rsa-bits", "1024"],
                                  ["--rsa-bits", "big"]])
def test_bad_choices_are_usage_errors(args: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["backup-key", "--out", str(tmp_path), *args])
    assert exit_.value.code == 2
    assert "invalid" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
