"""`pinproxy keygen` and `pinproxy sign`: files, modes, refusals, and `minisign -V` agreeing."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pinproxy import minisign
from pinproxy.cli import main
from tests import certs

ROOT, INTER, _ = (str(cert.spki) for cert in certs.pki("sign").chain)
PINSET = f"""\
version: 1
serial: 3
valid_until: 2030-01-01T00:00:00Z
hosts:
  - host: api.example.com
    pins: ["{ROOT}", "{INTER}"]
"""


def keygen(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    public, secret = tmp_path / "k.pub", tmp_path / "k.key"
    assert main(["keygen", "-p", str(public), "-s", str(secret), *extra]) == 0
    return public, secret


def test_keygen_writes_a_minisign_key_pair(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    public, secret = keygen(tmp_path)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key = minisign.parse_secret_key(secret.read_bytes())
    assert minisign.parse_public_key(public.read_text()) == key.public_key
    out = capsys.readouterr().out
    assert key.public_key.text in out and key.id_text in out


def test_keygen_never_overwrites_without_force(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    public, secret = keygen(tmp_path)
    before = secret.read_bytes()
    assert main(["keygen", "-p", str(public), "-s", str(secret)]) == 2
    assert capsys.readouterr().err == (
        f"pinproxy: {secret}: already exists; use --force to replace it\n")
    assert secret.read_bytes() == before
    keygen(tmp_path, "--force")
    assert secret.read_bytes() != before
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_keygen_needs_two_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = str(tmp_path / "k")
    assert main(["keygen", "-p", same, "-s", same]) == 2
    assert "two different files" in capsys.readouterr().err


def test_sign_writes_a_signature_minisign_verifies(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path)
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET)
    assert main(["sign", str(pinset), "--key", str(secret)]) == 0
    signature = minisign.parse_signature((tmp_path / "pins.yaml.minisig").read_text())
    comment = minisign.verify(minisign.parse_public_key(public.read_text()), pinset.read_bytes(),
                              signature)
    assert "\tfile:pins.yaml\tserial:3\thashed" in comment
    minisign_path = shutil.which("minisign")
    assert minisign_path, "minisign is required (installed by .ci/run)"
    done = subprocess.run([minisign_path, "-V", "-p", str(public), "-m", str(pinset)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_sign_with_output_and_trusted_comment(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path)
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET)
    out = tmp_path / "elsewhere.sig"
    assert main(["sign", str(pinset), "--key", str(secret), "-o", str(out),
                 "--trusted-comment", "release 7"]) == 0
    assert not (tmp_path / "pins.yaml.minisig").exists()
    assert minisign.verify(minisign.parse_public_key(public.read_text()), pinset.read_bytes(),
                           minisign.parse_signature(out.read_text())) == "release 7"


def test_sign_reads_an_encrypted_key_password_from_stdin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = minisign.generate()
    secret = tmp_path / "k.key"
    secret.write_text(key.file_text("pw", opslimit=65536, memlimit=16 << 20))
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["sign", str(pinset), "--key", str(secret)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("nope\n"))
    assert main(["sign", str(pinset), "--key", str(secret)]) == 2


@pytest.mark.parametrize(("text", "error"), [
    ("version: 1\nserial: -4\nhosts: []\n", "pins.yaml:2: 'serial' must be a whole number"),
    ("version: 1\nhosts:\n  - host: a.example\n    pins: ['file:root.pem']\n",
     "pins.yaml:4: 'file:' pins are not allowed in a signed pinset"),
])
def test_a_pinset_that_does_not_load_is_never_signed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str) -> None:
    _, secret = keygen(tmp_path)
    capsys.readouterr()
    (tmp_path / "root.pem").write_bytes(certs.pki("sign").root_pem)
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(text)
    assert main(["sign", str(pinset), "--key", str(secret)]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "pins.yaml.minisig").exists()


@pytest.mark.parametrize(("key_text", "error"), [
    (None, "cannot read secret key"),
    ("untrusted comment: x\nnot a key\n", "malformed secret key: not base64"),
])
def test_a_bad_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               key_text: str | None, error: str) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(PINSET)
    secret = tmp_path / "k.key"
    if key_text is not None:
        secret.write_text(key_text)
    assert main(["sign", str(pinset), "--key", str(secret)]) == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1 and err.startswith(f"pinproxy: {secret}: ")
