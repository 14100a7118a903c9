"""The minisign format (Ed25519): public keys, secret keys and detached signatures.

Operators sign pinsets in CI with the standard `minisign` tool (or `pinproxy sign`); the proxy
verifies them here. The formats, as minisign 0.10+ writes them:

- public key: `untrusted comment: ...` and base64 of "Ed" + 8-byte key id + 32-byte key; the
  bare base64 line alone (`minisign -P RW...`) is accepted too.
- signature (`FILE.minisig`): `untrusted comment: ...`, base64 of the algorithm + key id +
  64-byte signature, `trusted comment: ...`, and base64 of the global signature over the
  signature and the trusted comment. Algorithm "ED" signs BLAKE2b-512 of the file (minisign's
  default since 0.10), legacy "Ed" the file itself; both verify. The trusted comment's
  signature is always checked: an unchecked comment could be swapped.
- secret key: base64 of "Ed", the KDF ("Sc" scrypt, or two zero bytes: unencrypted, as
  `minisign -W` writes), "B2", a salt, the scrypt limits, then key id + secret key + a
  BLAKE2b-256 checksum, XORed with an scrypt stream when encrypted.

Pure (cryptography and hashlib only); every failure is a `MinisignError`, one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pinproxy.errors import PinproxyError

__all__ = ["MinisignError", "PublicKey", "SecretKey", "Signature", "generate",
           "parse_public_key", "parse_secret_key", "parse_signature", "sign", "verify"]

_ED = b"Ed"  # the key algorithm, and the legacy signature over the file itself
_PREHASHED = b"ED"  # the signature over BLAKE2b-512 of the file
_SCRYPT = b"Sc"
_NO_KDF = b"\0\0"
_BLAKE2B = b"B2"
_UNTRUSTED = "untrusted comment: "
_TRUSTED = "trusted comment: "
_MAX_COMMENT = 1024  # minisign's limit on an untrusted comment line
_MAX_TRUSTED = 8192  # and on a trusted comment
# minisign's scrypt limits for a new encrypted key (libsodium's "sensitive" ones)
OPSLIMIT = 33554432
MEMLIMIT = 1073741824
_SECRET_KEY_BYTES = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32


class MinisignError(PinproxyError):
    """A key or signature that is malformed, of another key, or that does not verify."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: bytes  # 8 bytes, as stored
    key: bytes  # the 32-byte Ed25519 public key

    @property
    def id_text(self) -> str:
        """The key id as minisign prints it (a little-endian 64-bit number in hex)."""
        return key_id_text(self.key_id)

    @property
    def text(self) -> str:
        """The base64 line (`RW...`): what `--pinset-pubkey` and `minisign -P` take."""
        return base64.b64encode(_ED + self.key_id + self.key).decode()

    def file_text(self) -> str:
        return f"{_UNTRUSTED}minisign public key {self.id_text}\n{self.text}\n"


@dataclass(frozen=True, slots=True)
class SecretKey:
    key_id: bytes
    seed: bytes  # the 32-byte Ed25519 seed

    def __repr__(self) -> str:  # never print a secret
        return f"SecretKey(key_id={self.id_text})"

    @property
    def id_text(self) -> str:
        return key_id_text(self.key_id)

    @property
    def public_key(self) -> PublicKey:
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        return PublicKey(self.key_id, private.public_key().public_bytes_raw())

    def file_text(self, password: str | None = None, opslimit: int = OPSLIMIT,
                  memlimit: int = MEMLIMIT) -> str:
        """The secret key file; unencrypted (as `minisign -W`) without a password."""
        public = self.public_key.key
        body = self.key_id + self.seed + public
        checksum = hashlib.blake2b(_ED + body, digest_size=32).digest()
        plain = body + checksum
        if password is None:
            head = _ED + _NO_KDF + _BLAKE2B + bytes(32) + bytes(16)
            return f"{_UNTRUSTED}minisign secret key\n{_b64(head + plain)}\n"
        salt = secrets.token_bytes(32)
        stream = _scrypt_stream(password, salt, opslimit, memlimit, len(plain))
        head = _ED + _SCRYPT + _BLAKE2B + salt + struct.pack("<QQ", opslimit, memlimit)
        return (f"{_UNTRUSTED}minisign encrypted secret key\n"
                f"{_b64(head + _xor(plain, stream))}\n")


@dataclass(frozen=True, slots=True)
class Signature:
    algorithm: bytes  # b"ED" (prehashed) or b"Ed" (legacy)
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = ""

    @property
    def prehashed(self) -> bool:
        return self.algorithm == _PREHASHED

    def file_text(self) -> str:
        return (f"{_UNTRUSTED}{self.untrusted_comment}\n"
                f"{_b64(self.algorithm + self.key_id + self.signature)}\n"
                f"{_TRUSTED}{self.trusted_comment}\n{_b64(self.global_signature)}\n")


def key_id_text(key_id: bytes) -> str:
    return f"{int.from_bytes(key_id, 'little'):016X}"


def generate() -> SecretKey:
    """A new key pair with a random key id."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return SecretKey(secrets.token_bytes(8), seed)


def parse_public_key(text: str) -> PublicKey:
    """A public key file's text, or its base64 line alone."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].startswith(_UNTRUSTED):
        lines = lines[1:]
    if len(lines) != 1:
        raise MinisignError("malformed public key: expected a base64 line 'RW...' (and an "
                            "'untrusted comment:' line before it)")
    raw = _unbase64(lines[0], "public key")
    if len(raw) != 42:
        raise MinisignError(f"malformed public key: {len(raw)} bytes, not 42")
    if raw[:2] != _ED:
        raise MinisignError(f"unsupported public key algorithm {_shown(raw[:2])} "
                            "(minisign keys are 'Ed')")
    return PublicKey(raw[2:10], raw[10:])


def parse_secret_key(data: bytes, password: Callable[[], str] | None = None) -> SecretKey:
    """A secret key file; `password` is asked for only when the key is encrypted."""
    try:
        lines = [line.strip() for line in data.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise MinisignError("malformed secret key: not a minisign secret key file") from None
    if len(lines) != 2 or not lines[0].startswith(_UNTRUSTED):
        raise MinisignError("malformed secret key: expected an 'untrusted comment:' line and a "
                            "base64 line")
    raw = _unbase64(lines[1], "secret key")
    if len(raw) != _SECRET_KEY_BYTES:
        raise MinisignError(f"malformed secret key: {len(raw)} bytes, not {_SECRET_KEY_BYTES}")
    sig_alg, kdf, chk_alg, salt = raw[0:2], raw[2:4], raw[4:6], raw[6:38]
    opslimit, memlimit = struct.unpack("<QQ", raw[38:54])
    sealed = raw[54:]
    if sig_alg != _ED:
        raise MinisignError(f"unsupported secret key algorithm {_shown(sig_alg)}")
    if chk_alg != _BLAKE2B:
        raise MinisignError(f"unsupported secret key checksum {_shown(chk_alg)}")
    if kdf == _SCRYPT:
        if password is None:
            raise MinisignError("the secret key is encrypted and no password was given")
        plain = _xor(sealed, _scrypt_stream(password(), salt, opslimit, memlimit, len(sealed)))
    elif kdf == _NO_KDF:
        plain = sealed
    else:
        raise MinisignError(f"unsupported secret key derivation {_shown(kdf)}")
    key_id, seed, public, checksum = plain[:8], plain[8:40], plain[40:72], plain[72:]
    expected = hashlib.blake2b(_ED + plain[:72], digest_size=32).digest()
    if kdf == _SCRYPT and not hmac.compare_digest(checksum, expected):
        raise MinisignError("wrong password for the secret key")
    key = SecretKey(key_id, seed)
    # minisign -W leaves the checksum zero: the key's own public half is the check instead
    if key.public_key.key != public:
        raise MinisignError("malformed secret key: its public half does not match")
    return key


def parse_signature(text: str | bytes) -> Signature:
    """A `.minisig` file: four lines."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MinisignError("malformed signature: not UTF-8 text") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != 4 or not lines[0].startswith(_UNTRUSTED) \
            or not lines[2].startswith(_TRUSTED):
        raise MinisignError("malformed signature: expected 4 lines ('untrusted comment:', the "
                            "signature, 'trusted comment:', the comment's signature)")
    raw = _unbase64(lines[1].strip(), "signature")
    if len(raw) != 74:
        raise MinisignError(f"malformed signature: {len(raw)} bytes, not 74")
    if raw[:2] not in (_PREHASHED, _ED):
        raise MinisignError(f"unsupported signature algorithm {_shown(raw[:2])} "
                            "(minisign signs with 'ED', or legacy 'Ed')")
    trusted = lines[2].removeprefix(_TRUSTED)
    if len(trusted.encode()) > _MAX_TRUSTED:
        raise MinisignError("malformed signature: the trusted comment is too long")
    global_signature = _unbase64(lines[3].strip(), "trusted comment signature")
    if len(global_signature) != 64:
        raise MinisignError("malformed signature: the trusted comment signature is "
                            f"{len(global_signature)} bytes, not 64")
    return Signature(raw[:2], raw[2:10], raw[10:], trusted, global_signature,
                     lines[0].removeprefix(_UNTRUSTED))


def verify(key: PublicKey, data: bytes, signature: Signature) -> str:
    """Check `signature` of `data` and of its trusted comment; return the trusted comment."""
    if not hmac.compare_digest(signature.key_id, key.key_id):
        raise MinisignError(f"signature key id {key_id_text(signature.key_id)} is not the "
                            f"public key's {key.id_text}")
    public = Ed25519PublicKey.from_public_bytes(key.key)
    message = _blake2b(data) if signature.prehashed else data
    try:
        public.verify(signature.signature, message)
    except InvalidSignature:
        raise MinisignError(f"bad signature: the data does not match its signature by key "
                            f"{key.id_text}") from None
    try:
        public.verify(signature.global_signature,
                      signature.signature + signature.trusted_comment.encode())
    except InvalidSignature:
        raise MinisignError("bad signature: the trusted comment does not match its "
                            "signature") from None
    return signature.trusted_comment


def sign(key: SecretKey, data: bytes, trusted_comment: str,
         untrusted_comment: str = "signature from pinproxy secret key",
         prehashed: bool = True) -> Signature:
    """Sign `data` as `minisign -S` does (prehashed by default; `prehashed=False`: legacy)."""
    for name, comment, limit in (("trusted", trusted_comment, _MAX_TRUSTED),
                                 ("untrusted", untrusted_comment, _MAX_COMMENT)):
        if "\n" in comment or "\r" in comment:
            raise MinisignError(f"the {name} comment must be one line")
        if len(comment.encode()) > limit:
            raise MinisignError(f"the {name} comment is longer than {limit} bytes")
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    algorithm = _PREHASHED if prehashed else _ED
    signature = private.sign(_blake2b(data) if prehashed else data)
    global_signature = private.sign(signature + trusted_comment.encode())
    return Signature(algorithm, key.key_id, signature, trusted_comment, global_signature,
                     untrusted_comment)


# -- helpers -----------------------------------------------------------------------------

def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unbase64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MinisignError(f"malformed {what}: not base64") from None


def _shown(raw: bytes) -> str:
    return repr(raw.decode("latin-1"))


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def _scrypt_stream(password: str, salt: bytes, opslimit: int, memlimit: int,
                   length: int) -> bytes:
    """libsodium's `crypto_pwhash_scryptsalsa208sha256`: its limits mapped to N, r, p."""
    n_log2, r, p = _scrypt_parameters(opslimit, memlimit)
    if n_log2 > 24:  # 2 GiB and more: a key file cannot make us allocate that
        raise MinisignError("the secret key's scrypt parameters are too large")
    n = 1 << n_log2
    try:
        return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                              maxmem=128 * r * n + (1 << 24), dklen=length)
    except (ValueError, MemoryError) as e:
        raise MinisignError(f"cannot derive the secret key's encryption key: {e}") from None


def _scrypt_parameters(opslimit: int, memlimit: int) -> tuple[int, int, int]:
    """N (as log2), r and p for libsodium's opslimit and memlimit: the largest N the memory
    limit allows, or that the operations limit allows when it is the tighter one."""
    opslimit = max(opslimit, 32768)
    r = 8
    if opslimit < memlimit // 32:
        p = 1
        max_n = opslimit // (r * 4)
        return _log2_below(max_n // 2), r, p
    max_n = memlimit // (r * 128)
    n_log2 = _log2_below(max_n // 2)
    max_rp = min((opslimit // 4) // (1 << n_log2), 0x3FFFFFFF)
    return n_log2, r, max(1, max_rp // r)


def _log2_below(limit: int) -> int:
    """The smallest n >= 1 with 2**n > limit (at most 63)."""
    n = 1
    while n < 63 and (1 << n) <= limit:
        n += 1
    return n
