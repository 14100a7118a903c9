"""Proxy credentials: the `--proxy-auth` spec, and checking a client's `Proxy-Authorization`.

Two spellings, as mitmproxy's: `user:password` (one user; split on the FIRST colon, so a
password may contain `:` and a user name may not) and `@path/to/htpasswd` (bcrypt hashes
only, read once at start). The spec is a secret: no message, `str` or `repr` here ever
contains a password, and none echoes the spec itself.

Checks do not leak by timing what an attacker could learn: the single user's name and
password are compared as SHA-256 digests with `hmac.compare_digest` (equal length, constant
time, both always compared), and an htpasswd user that does not exist still costs one bcrypt
check against a dummy hash of the file's cost.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import bcrypt

from pinproxy.errors import PinproxyError, quote
from pinproxy.files import open_regular

__all__ = ["Htpasswd", "SingleUser", "Verifier", "basic_credentials", "parse_proxy_auth"]

MAX_HTPASSWD_BYTES = 1 << 20  # far more users than a proxy's htpasswd holds
MAX_HEADER_CHARS = 4096  # a Proxy-Authorization value longer than this is not credentials
_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
_BCRYPT_MAX_PASSWORD = 72  # bcrypt ignores what follows; we refuse it instead
_SUPPORTED = "supported: bcrypt ($2y$, $2b$, $2a$; htpasswd -B)"


class Verifier(Protocol):
    """Checks one user name and password; a wrong user or password is simply False."""

    def verify(self, user: str, password: str) -> bool: ...

    def verify_at_once(self, user: str, password: str) -> bool | None:
        """The answer when it costs no bcrypt check; None when only `verify` can tell (it is
        slow, so the proxy runs it off its event loop)."""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True, repr=False)
class SingleUser:
    """`user:password`: only SHA-256 digests are kept, compared in constant time."""

    user: str
    _user_digest: bytes
    _password_digest: bytes

    @classmethod
    def from_spec(cls, spec: str) -> SingleUser:
        user, colon, password = spec.partition(":")
        if not colon:
            raise PinproxyError("--proxy-auth: expected 'user:password' or '@htpasswd-file' "
                                "(the value is not shown: it may be a password)")
        if not user:
            raise PinproxyError("--proxy-auth: the user name before the first ':' is empty")
        if not password:
            raise PinproxyError(f"--proxy-auth: the password of user {quote(user)} is empty")
        return cls(user, _digest(user), _digest(password))

    def verify(self, user: str, password: str) -> bool:
        # `&`, not `and`: both comparisons always run, so timing does not say which failed.
        return (hmac.compare_digest(_digest(user), self._user_digest)
                & hmac.compare_digest(_digest(password), self._password_digest))

    def verify_at_once(self, user: str, password: str) -> bool:
        return self.verify(user, password)

    def __repr__(self) -> str:
        return f"SingleUser(user={self.user!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Htpasswd:
    """An htpasswd file's bcrypt hashes, read once; `verify` costs one bcrypt check either way,
    except for credentials it already accepted.

    A bcrypt check is deliberately slow: the proxy runs it in a thread, and `verify_at_once`
    answers from the memory of accepted credentials, so a client's every plain http:// request
    (each carries its own credentials) does not cost one. The memory holds keyed digests, never
    passwords, and is bounded; the file is never re-read, so an accepted password stays valid
    until restart.
    """

    path: str
    hashes: Mapping[str, bytes]
    _dummy: bytes  # checked for unknown users, at the file's own cost
    _accepted: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _digest_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _lock: threading.Lock = field(default_factory=threading.Lock)  # verify runs in threads

    @classmethod
    def from_file(cls, path: str) -> Htpasswd:
        text = _read_small_regular_file(path)
        hashes: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            user, colon, hashed = line.partition(":")
            if not colon or not user:
                raise PinproxyError(f"{where}: expected 'user:hash'")
            if user in hashes:
                raise PinproxyError(f"{where}: user {quote(user)} appears twice")
            hashes[user] = _bcrypt_hash(hashed, where)
        if not hashes:
            raise PinproxyError(f"{path}: no users in the htpasswd file")
        cost = int(next(iter(hashes.values()))[4:6])
        dummy = bcrypt.hashpw(b"pinproxy: no such user", bcrypt.gensalt(rounds=cost))
        return cls(path, hashes, dummy)

    def verify_at_once(self, user: str, password: str) -> bool | None:
        digest = self._remembered(user, password)
        with self._lock:
            if digest in self._accepted:
                self._accepted.move_to_end(digest)
                return True
        return None

    def verify(self, user: str, password: str) -> bool:
        if self.verify_at_once(user, password):
            return True
        secret = password.encode("utf-8")
        known = self.hashes.get(user)
        matches = bcrypt.checkpw(secret[:_BCRYPT_MAX_PASSWORD],
                                 known if known is not None else self._dummy)
        if not (matches and known is not None and len(secret) <= _BCRYPT_MAX_PASSWORD):
            return False
        with self._lock:
            self._accepted[self._remembered(user, password)] = None
            if len(self._accepted) > _ACCEPTED_MAX:
                self._accepted.popitem(last=False)
        return True

    def _remembered(self, user: str, password: str) -> bytes:
        """The keyed digest the memory of accepted credentials holds for them."""
        return hmac.digest(self._digest_key, f"{user}\0{password}".encode(), "sha256")

    def __repr__(self) -> str:
        return f"Htpasswd(path={self.path!r}, users={len(self.hashes)})"

    __str__ = __repr__


_ACCEPTED_MAX = 1024  # accepted credentials remembered by an Htpasswd


def _bcrypt_hash(hashed: str, where: str) -> bytes:
    if not hashed.startswith(_BCRYPT_PREFIXES):
        raise PinproxyError(f"{where}: unsupported password hash ({_scheme_name(hashed)}); "
                            f"{_SUPPORTED}")
    raw = hashed.encode("ascii", "replace")
    if len(raw) != 60 or not raw[4:6].isdigit() or raw[6:7] != b"$":
        raise PinproxyError(f"{where}: malformed bcrypt hash (expected 60 characters, "
                            "$2y$NN$ then salt and hash)")
    try:  # a hash bcrypt cannot read fails here, at start, not at the first client
        bcrypt.checkpw(b"", raw)
    except ValueError:
        raise PinproxyError(f"{where}: malformed bcrypt hash") from None
    return raw


def _scheme_name(hashed: str) -> str:
    if hashed.startswith("$apr1$"):
        return "MD5 $apr1$"
    if hashed.startswith("{SHA}"):
        return "SHA-1 {SHA}"
    if hashed.startswith(("$1$", "$5$", "$6$")):
        return "crypt " + hashed[:3]
    return "crypt or plain text"


def _read_small_regular_file(path: str) -> str:
    """The file's text: only a regular file (no FIFO to block on), at most 1 MiB, UTF-8."""
    try:
        with open_regular(Path(path).expanduser()) as stream:
            data = stream.read(MAX_HTPASSWD_BYTES + 1)
    except OSError as e:
        raise PinproxyError(f"{path}: cannot read htpasswd file: {e.strerror or e}") from None
    if len(data) > MAX_HTPASSWD_BYTES:
        raise PinproxyError(f"{path}: htpasswd file is larger than {MAX_HTPASSWD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PinproxyError(f"{path}:{line}: htpasswd is not UTF-8 text") from None


def parse_proxy_auth(spec: str) -> SingleUser | Htpasswd:
    """The verifier a `--proxy-auth` spec names; a bad spec is a `PinproxyError` that never
    contains the password."""
    if spec.startswith("@"):
        if len(spec) == 1:
            raise PinproxyError("--proxy-auth: '@' must be followed by an htpasswd file path")
        return Htpasswd.from_file(spec[1:])
    return SingleUser.from_spec(spec)


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from `Basic base64(user:password)`, or None for anything else.

    Strict: one token, canonical base64 with padding, UTF-8, a colon (the first one splits).
    """
    if len(header) > MAX_HEADER_CHARS:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(parts[1], validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None
