"""The `--proxy-auth` spec and Basic credentials: table tests, bcrypt hashes made here."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from pinproxy.credentials import (
    MAX_HTPASSWD_BYTES,
    Htpasswd,
    SingleUser,
    basic_credentials,
    parse_proxy_auth,
)
from pinproxy.errors import PinproxyError

SECRET = "s3cr:et-Пароль"


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def bcrypt_hash(password: str, prefix: str = "$2b$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return prefix + hashed[4:]


@pytest.mark.parametrize(("spec", "user", "password", "ok"), [
    ("alice:pw", "alice", "pw", True),
    ("alice:pw", "alice", "pW", False),             # wrong password
    ("alice:pw", "bob", "pw", False),               # wrong user
    ("alice:pw", "alice", "", False),               # empty password offered
    ("alice:pw", "alice", "pw ", False),
    ("alice:a:b:c", "alice", "a:b:c", True),        # colons in the password
    ("alice:a:b:c", "alice", "a", False),
    ("alice:a:b:c", "alice:a", "b:c", False),       # the first colon splits, on both sides
    ("jürgen:Пароль", "jürgen", "Пароль", True),    # unicode
    ("jürgen:Пароль", "jurgen", "Пароль", False),
])
def test_single_user(spec: str, user: str, password: str, ok: bool) -> None:
    assert parse_proxy_auth(spec).verify(user, password) is ok


@pytest.mark.parametrize(("spec", "message"), [
    ("alice", "expected 'user:password' or '@htpasswd-file'"),
    ("", "expected 'user:password' or '@htpasswd-file'"),
    (":pw", "the user name before the first ':' is empty"),
    ("alice:", "the password of user 'alice' is empty"),
    ("@", "'@' must be followed by an htpasswd file path"),
])
def test_bad_spec(spec: str, message: str) -> None:
    with pytest.raises(PinproxyError) as e:
        parse_proxy_auth(spec)
    assert str(e.value).startswith("--proxy-auth: ")
    assert message in str(e.value)


def test_a_spec_without_colon_is_not_echoed() -> None:
    with pytest.raises(PinproxyError) as e:
        parse_proxy_auth("hunter2")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(("header", "expected"), [
    (basic("alice:pw"), ("alice", "pw")),
    (basic("alice:a:b"), ("alice", "a:b")),
    (basic("alice:"), ("alice", "")),
    (basic(":pw"), ("", "pw")),
    (basic("jürgen:Пароль"), ("jürgen", "Пароль")),
    ("basic " + base64.b64encode(b"a:b").decode(), ("a", "b")),   # scheme is case-insensitive
    (basic("alicepw"), None),                                      # no colon
    ("Basic YWxpY2U6cHc", None),                                   # padding missing
    ("Basic YWxp!2U6cHc=", None),                                  # not base64
    ("Basic " + base64.b64encode(b"a:\xff").decode(), None),       # not UTF-8
    ("Bearer " + base64.b64encode(b"a:b").decode(), None),
    ("Basic", None),
    ("", None),
    (basic("a:b") + " extra", None),
    ("Basic " + "QUFB" * 2000, None),                              # longer than any credential
])
def test_basic_credentials(header: str, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(header) == expected


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(f"# proxy users\n\nalice:{bcrypt_hash('pw')}\n"
                    f"bob:{bcrypt_hash(SECRET, '$2y$')}\ncarol:{bcrypt_hash('c', '$2a$')}\n")
    return path


@pytest.mark.parametrize(("user", "password", "ok"), [
    ("alice", "pw", True),
    ("alice", "PW", False),
    ("bob", SECRET, True),          # $2y$ (htpasswd -B), colon and unicode in the password
    ("bob", "s3cr", False),
    ("carol", "c", True),           # $2a$
    ("dave", "pw", False),          # unknown user
    ("", "pw", False),
    ("alice", "pw" + "x" * 80, False),  # bcrypt would ignore what follows byte 72
])
def test_htpasswd(htpasswd: Path, user: str, password: str, ok: bool) -> None:
    assert parse_proxy_auth(f"@{htpasswd}").verify(user, password) is ok


def test_unknown_user_costs_a_bcrypt_check(htpasswd: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = parse_proxy_auth(f"@{htpasswd}")
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert not verifier.verify("nobody", "pw")
    assert len(checked) == 1 and checked[0][:7] == b"$2b$04$"  # the file's cost


def test_accepted_credentials_cost_one_bcrypt_check_and_wrong_ones_every_time(
        htpasswd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = parse_proxy_auth(f"@{htpasswd}")
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert [verifier.verify("alice", "pw") for _ in range(3)] == [True] * 3
    assert len(checked) == 1  # remembered: the event loop pays bcrypt once per credential
    assert [verifier.verify("alice", "PW") for _ in range(3)] == [False] * 3
    assert len(checked) == 4  # the twin: a wrong password is checked every time
    assert not verifier.verify("bob", "pw")  # remembered for alice only, not for the password
    assert "pw" not in repr(verifier)


@pytest.mark.parametrize(("line", "message"), [
    ("alice:$apr1$abc$defghijklmnopqrstuvwx", "unsupported password hash (MD5 $apr1$)"),
    ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "unsupported password hash (SHA-1 {SHA})"),
    ("alice:$6$salt$hash", "unsupported password hash (crypt $6$)"),
    ("alice:abJnggxhB/yWI", "unsupported password hash (crypt or plain text)"),
    ("alice:$2b$04$tooshort", "malformed bcrypt hash"),
    ("alice", "expected 'user:hash'"),
    (":$2b$", "expected 'user:hash'"),
])
def test_bad_htpasswd_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"ok:{bcrypt_hash('x')}\n{line}\n")
    with pytest.raises(PinproxyError) as e:
        parse_proxy_auth(f"@{path}")
    assert str(e.value).startswith(f"{path}:2: {message}")
    if "unsupported" in message:
        assert "supported: bcrypt ($2y$, $2b$, $2a$; htpasswd -B)" in str(e.value)


def test_duplicate_user(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"a:{bcrypt_hash('x')}\na:{bcrypt_hash('y')}\n")
    with pytest.raises(PinproxyError) as e:
        parse_proxy_auth(f"@{path}")
    assert str(e.value) == f"{path}:2: user 'a' appears twice"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "cannot read htpasswd file: No such file or directory"),
    (lambda p: p.mkdir(), "cannot read htpasswd file: a directory"),
    (lambda p: os.mkfifo(p), "cannot read htpasswd file: not a regular file"),   # never blocks
    (lambda p: p.write_text("# nobody\n"), "no users in the htpasswd file"),
    (lambda p: p.write_bytes(b"a" * (MAX_HTPASSWD_BYTES + 1)), "larger than"),
    (lambda p: p.write_bytes(b"# ok\n\xff\n"), ":2: htpasswd is not UTF-8 text"),
])
def test_unreadable_htpasswd(tmp_path: Path, make: Callable[[Path], object],
                             message: str) -> None:
    path = tmp_path / "htpasswd"
    make(path)
    with pytest.raises(PinproxyError) as e:
        parse_proxy_auth(f"@{path}")
    assert str(e.value).startswith(str(path))
    assert message in str(e.value)


def test_the_password_is_in_no_repr_or_str(htpasswd: Path) -> None:
    single = parse_proxy_auth(f"alice:{SECRET}")
    assert isinstance(single, SingleUser)
    from_file = parse_proxy_auth(f"@{htpasswd}")
    assert isinstance(from_file, Htpasswd)
    for text in (repr(single), str(single), repr(from_file), str(from_file)):
        assert SECRET not in text and "s3cr" not in text and "$2" not in text
    assert repr(single) == "SingleUser(user='alice')"
    assert repr(from_file) == f"Htpasswd(path={str(htpasswd)!r}, users=3)"
    for slot in SingleUser.__slots__:
        assert SECRET.encode() not in repr(getattr(single, slot)).encode()


def test_errors_never_contain_the_password() -> None:
    for spec in (f":{SECRET}", "x" * 3):
        with pytest.raises(PinproxyError) as e:
            parse_proxy_auth(spec)
        assert SECRET not in str(e.value) and "xxx" not in str(e.value)
