"""`pinproxy.minisign`: the format, checked against the real `minisign` both ways.

Every signature that verifies has its twins that must not: another key, a changed byte of the
data, of the signature or of the trusted comment. Interoperability runs the real minisign 0.11
(`minisign` on PATH, installed by .ci/run): minisign signs, pinproxy verifies; pinproxy signs,
`minisign -V` verifies; keys go both ways, encrypted ones included (with small scrypt limits,
which the key file carries, so the test stays fast while covering libsodium's parameter choice).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pinproxy import minisign
from pinproxy.minisign import MinisignError

MINISIGN = shutil.which("minisign")
DATA = b"version: 1\nhosts: []\n"


def run_minisign(*args: str, password: str | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert MINISIGN, "minisign is required (installed by .ci/run)"
    return subprocess.run([MINISIGN, *args], input=f"{password}\n" if password else "",
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


@pytest.fixture(scope="module")
def key() -> minisign.SecretKey:
    return minisign.generate()


# -- round trips and their twins -----------------------------------------------------------

@pytest.mark.parametrize("prehashed", [True, False])
def test_a_signature_verifies_with_its_key(key: minisign.SecretKey, prehashed: bool) -> None:
    signature = minisign.sign(key, DATA, "serial:1", prehashed=prehashed)
    parsed = minisign.parse_signature(signature.file_text())
    assert parsed == signature
    assert minisign.verify(key.public_key, DATA, parsed) == "serial:1"
    assert parsed.prehashed is prehashed


def test_another_key_is_a_key_id_mismatch(key: minisign.SecretKey) -> None:
    other = minisign.generate()
    signature = minisign.sign(key, DATA, "c")
    with pytest.raises(MinisignError, match=f"signature key id {key.id_text} is not the public "
                                            f"key's {other.id_text}"):
        minisign.verify(other.public_key, DATA, signature)


def test_another_key_with_the_same_id_is_a_bad_signature(key: minisign.SecretKey) -> None:
    impostor = minisign.SecretKey(key.key_id, minisign.generate().seed)
    with pytest.raises(MinisignError, match="bad signature: the data does not match"):
        minisign.verify(key.public_key, DATA, minisign.sign(impostor, DATA, "c"))


def test_changed_data_is_a_bad_signature(key: minisign.SecretKey) -> None:
    signature = minisign.sign(key, DATA, "c")
    with pytest.raises(MinisignError, match="bad signature: the data does not match"):
        minisign.verify(key.public_key, DATA.replace(b"1", b"2"), signature)


def test_a_changed_trusted_comment_is_a_bad_signature(key: minisign.SecretKey) -> None:
    text = minisign.sign(key, DATA, "serial:1").file_text()
    forged = minisign.parse_signature(text.replace("serial:1", "serial:9"))
    with pytest.raises(MinisignError, match="the trusted comment does not match"):
        minisign.verify(key.public_key, DATA, forged)


def test_a_legacy_signature_relabelled_prehashed_fails(key: minisign.SecretKey) -> None:
    legacy = minisign.sign(key, DATA, "c", prehashed=False)
    relabelled = minisign.Signature(b"ED", legacy.key_id, legacy.signature,
                                    legacy.trusted_comment, legacy.global_signature)
    with pytest.raises(MinisignError, match="bad signature"):
        minisign.verify(key.public_key, DATA, relabelled)


def _line2(text: str, raw: bytes) -> str:
    lines = text.splitlines()
    lines[1] = base64.b64encode(raw).decode()
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda t: t.replace("untrusted comment: ", "comment: "), "malformed signature: expected 4"),
    (lambda t: t.replace("\ntrusted comment: ", "\nnote: "), "malformed signature: expected 4"),
    (lambda t: "\n".join(t.splitlines()[:3]) + "\n", "malformed signature: expected 4"),
    (lambda t: _line2(t, base64.b64decode(t.splitlines()[1])[:-1]),
     "malformed signature: 73 bytes, not 74"),
    (lambda t: _line2(t, b"Xx" + base64.b64decode(t.splitlines()[1])[2:]),
     "unsupported signature algorithm 'Xx'"),
    (lambda t: t.replace(t.splitlines()[1], t.splitlines()[1][:-4] + "!!!!"),
     "malformed signature: not base64"),
    (lambda t: t.replace(t.splitlines()[3], t.splitlines()[3][:8]),
     "malformed signature: the trusted comment signature is 6 bytes"),
])
def test_malformed_signatures(key: minisign.SecretKey, mangle: Callable[[str], str],
                              message: str) -> None:
    text = minisign.sign(key, DATA, "c").file_text()
    with pytest.raises(MinisignError, match=message) as e:
        minisign.parse_signature(mangle(text))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", "malformed public key"),
    ("RWQ", "malformed public key: not base64"),
    (base64.b64encode(b"Ed" + bytes(39)).decode(), "malformed public key: 41 bytes, not 42"),
    (base64.b64encode(b"XY" + bytes(40)).decode(), "unsupported public key algorithm 'XY'"),
    ("a\nb\nc", "malformed public key"),
])
def test_malformed_public_keys(text: str, message: str) -> None:
    with pytest.raises(MinisignError, match=message):
        minisign.parse_public_key(text)


def test_a_public_key_reads_as_a_file_or_as_its_line(key: minisign.SecretKey) -> None:
    public = key.public_key
    assert minisign.parse_public_key(public.file_text()) == public
    assert minisign.parse_public_key(public.text) == public
    assert minisign.parse_public_key(f"  {public.text}\r\n") == public


def test_secret_keys_round_trip_and_refuse_a_wrong_password(key: minisign.SecretKey) -> None:
    assert minisign.parse_secret_key(key.file_text().encode()) == key
    sealed = key.file_text("pw", opslimit=65536, memlimit=16 << 20).encode()
    assert minisign.parse_secret_key(sealed, lambda: "pw") == key
    with pytest.raises(MinisignError, match="wrong password for the secret key"):
        minisign.parse_secret_key(sealed, lambda: "wrong")
    with pytest.raises(MinisignError, match="encrypted and no password was given"):
        minisign.parse_secret_key(sealed)
    assert "seed" not in repr(key) and key.id_text in repr(key)


def test_a_secret_key_whose_halves_differ_is_refused(key: minisign.SecretKey) -> None:
    raw = bytearray(base64.b64decode(key.file_text().splitlines()[1]))
    raw[54 + 8 + 32] ^= 1  # a bit of the stored public half
    text = f"untrusted comment: x\n{base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(MinisignError, match="its public half does not match"):
        minisign.parse_secret_key(text.encode())


def test_huge_scrypt_limits_in_a_key_file_are_refused(key: minisign.SecretKey) -> None:
    raw = bytearray(base64.b64decode(key.file_text("pw", 65536, 16 << 20).splitlines()[1]))
    raw[38:54] = (1 << 40).to_bytes(8, "little") * 2
    text = f"untrusted comment: x\n{base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(MinisignError, match="scrypt parameters are too large"):
        minisign.parse_secret_key(text.encode(), lambda: "pw")


@pytest.mark.parametrize(("opslimit", "memlimit", "expected"), [
    (minisign.OPSLIMIT, minisign.MEMLIMIT, (20, 8, 1)),  # minisign's own: 1 GiB
    (524288, 16777216, (14, 8, 1)),  # memory-bound branch
    (65536, 16777216, (11, 8, 1)),  # operations-bound branch
    (1048576, 16777216, (14, 8, 2)),
])
def test_scrypt_parameters_as_libsodium_picks_them(opslimit: int, memlimit: int,
                                                   expected: tuple[int, int, int]) -> None:
    assert minisign._scrypt_parameters(opslimit, memlimit) == expected


def test_comments_must_be_one_line(key: minisign.SecretKey) -> None:
    with pytest.raises(MinisignError, match="the trusted comment must be one line"):
        minisign.sign(key, DATA, "a\nb")


# -- the real minisign ---------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_minisign_signs_pinproxy_verifies(tmp_path: Path, legacy: bool) -> None:
    done = run_minisign("-G", "-W", "-p", "k.pub", "-s", "k.sec", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "pins.yaml").write_bytes(DATA)
    done = run_minisign("-S", *(["-l"] if legacy else []), "-s", "k.sec", "-m", "pins.yaml",
                        "-t", "serial:5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    public = minisign.parse_public_key((tmp_path / "k.pub").read_text())
    signature = minisign.parse_signature((tmp_path / "pins.yaml.minisig").read_text())
    assert signature.prehashed is not legacy
    assert minisign.verify(public, DATA, signature) == "serial:5"
    with pytest.raises(MinisignError, match="bad signature"):
        minisign.verify(public, DATA + b"#", signature)
    # the secret key minisign wrote reads back to the same public key
    secret = minisign.parse_secret_key((tmp_path / "k.sec").read_bytes())
    assert secret.public_key == public


@pytest.mark.parametrize("prehashed", [True, False])
def test_pinproxy_signs_minisign_verifies(tmp_path: Path, key: minisign.SecretKey,
                                          prehashed: bool) -> None:
    (tmp_path / "pins.yaml").write_bytes(DATA)
    (tmp_path / "k.pub").write_text(key.public_key.file_text())
    signature = minisign.sign(key, DATA, "serial:6", prehashed=prehashed)
    (tmp_path / "pins.yaml.minisig").write_text(signature.file_text())
    done = run_minisign("-V", "-p", "k.pub", "-m", "pins.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Trusted comment: serial:6" in done.stdout
    done = run_minisign("-V", "-P", key.public_key.text, "-m", "pins.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "pins.yaml").write_bytes(DATA + b"#")  # the twin: minisign refuses it too
    done = run_minisign("-V", "-p", "k.pub", "-m", "pins.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "Signature verification failed" in done.stderr


@pytest.mark.parametrize(("opslimit", "memlimit"), [(65536, 16 << 20), (1048576, 16 << 20)])
def test_an_encrypted_pinproxy_key_signs_in_minisign(tmp_path: Path, key: minisign.SecretKey,
                                                     opslimit: int, memlimit: int) -> None:
    (tmp_path / "k.sec").write_text(key.file_text("secret pw", opslimit, memlimit))
    (tmp_path / "k.pub").write_text(key.public_key.file_text())
    (tmp_path / "pins.yaml").write_bytes(DATA)
    done = run_minisign("-S", "-s", "k.sec", "-m", "pins.yaml", password="secret pw",
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    done = run_minisign("-S", "-s", "k.sec", "-m", "pins.yaml", "-x", "wrong.minisig",
                        password="wrong pw", cwd=tmp_path)
    assert done.returncode != 0 and "Wrong password" in done.stderr + done.stdout
    signature = minisign.parse_signature((tmp_path / "pins.yaml.minisig").read_text())
    assert minisign.verify(key.public_key, DATA, signature).endswith("hashed")
