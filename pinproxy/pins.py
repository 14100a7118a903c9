"""Pins: the `Pin` value, its spellings, and pins computed from certificates and keys.

Two kinds of pin, kept apart by prefix and never guessed from the value:
- `sha256/<base64>`: SHA-256 of the DER SubjectPublicKeyInfo (OkHttp, HPKP, Android, Envoy).
  It survives certificate renewal with the same key.
- `cert-sha256/<base64 or hex>`: SHA-256 of the whole DER certificate (Envoy's
  `verify_certificate_hash`, `openssl x509 -fingerprint -sha256`). It changes at every renewal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
    load_pem_private_key,
    load_pem_public_key,
)

from pinproxy.errors import PinError, quote

__all__ = [
    "CertificatePins",
    "Pin",
    "PinKind",
    "certificate_pins",
    "parse_pin",
    "read_pem_or_der",
    "spki_pin",
]

DIGEST_SIZE = 32
_HPKP = re.compile(r'^pin-sha256\s*=\s*("?)([^"]*)\1$', re.IGNORECASE)
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_HEXISH = re.compile(r"[0-9a-fA-F:]+")
_HEX = re.compile(r"^[0-9a-fA-F]{2}(:?[0-9a-fA-F]{2}){31}$")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class PinKind(StrEnum):
    """What a pin's digest is taken over; the value is the pin's prefix."""

    SPKI = "sha256"
    CERTIFICATE = "cert-sha256"


@dataclass(frozen=True, slots=True)
class Pin:
    """One pinned digest. Compares by kind and digest, so spellings of one pin are equal."""

    kind: PinKind
    digest: bytes

    def __hash__(self) -> int:
        # The digest alone: bytes keep their hash, an enum member computes its own in Python
        # each time. Equality still compares both fields.
        return hash(self.digest)

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.base64}"

    @property
    def base64(self) -> str:
        """The digest alone, as Android, iOS and Envoy write it."""
        return base64.b64encode(self.digest).decode("ascii")

    @property
    def hpkp(self) -> str:
        """The RFC 7469 spelling, used in violation reports (`known-pins`)."""
        return f'pin-sha256="{self.base64}"'


def parse_pin(text: str) -> Pin:
    """Parse one pin in any accepted spelling; raise `PinError` saying what is wrong.

    Accepted: `sha256/<b64>`, curl's `sha256//<b64>`, HPKP's `pin-sha256="<b64>"`, and
    `cert-sha256/<b64>` or `cert-sha256/<hex, colons allowed>` for whole-certificate pins.
    """
    if len(text) == 51 and text.startswith("sha256/"):  # the common case, checked the same way
        return Pin(PinKind.SPKI, _decode_base64(text[7:], text))
    value = text.strip()
    if hpkp := _HPKP.match(value):
        return Pin(PinKind.SPKI, _decode_base64(hpkp.group(2), text))
    prefix, slash, body = value.partition("/")
    if not slash or not _PREFIX.fullmatch(prefix):
        raise PinError(
            f"pin {quote(text)} has no prefix: write 'sha256/<base64>' for a public-key (SPKI) pin "
            "or 'cert-sha256/<base64>' for a whole-certificate pin"
        )
    match prefix.lower():
        case "sha256":
            # curl writes `sha256//<b64>`; base64 may itself start with "/", but a 32-byte
            # digest is always 44 characters, so the length tells the two apart.
            if len(body) == 45 and body.startswith("/"):
                body = body[1:]
            return Pin(PinKind.SPKI, _decode_base64(body, text))
        case "cert-sha256":
            if _HEX.match(body):
                return Pin(PinKind.CERTIFICATE, bytes.fromhex(body.replace(":", "")))
            if _HEXISH.fullmatch(body) and len(body) != 44:
                raise PinError(f"pin {quote(text)} is not the hex of a 32-byte SHA-256 digest "
                               "(64 hex digits, colons allowed)")
            return Pin(PinKind.CERTIFICATE, _decode_base64(body, text))
        case _:
            raise PinError(
                f"pin {quote(text)} uses the unsupported prefix {prefix + '/'!r}: only 'sha256/' "
                "(public key, SPKI) and 'cert-sha256/' (whole certificate) pins are accepted"
            )


def _decode_base64(body: str, text: str) -> bytes:
    try:
        digest = binascii.a2b_base64(body)
    except ValueError:  # binascii.Error, or a character beyond ASCII
        digest = b""
    # Only the canonical spelling: what a2b_base64 skipped or tolerated does not re-encode.
    if len(digest) != DIGEST_SIZE or binascii.b2a_base64(digest, newline=False) != body.encode():
        raise PinError(f"pin {quote(text)} is not base64 of a 32-byte SHA-256 digest")
    return digest


def spki_pin(public_key: PublicKeyTypes) -> Pin:
    """The `sha256/` pin of a public key."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Pin(PinKind.SPKI, hashlib.sha256(spki).digest())


@dataclass(frozen=True, slots=True)
class CertificatePins:
    """Both pins of one certificate, with what a person needs to recognise it."""

    spki: Pin
    certificate: Pin
    subject: str
    der: bytes

    @property
    def pem(self) -> str:
        body = base64.encodebytes(self.der).decode("ascii").replace("\n", "")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@lru_cache(maxsize=4096)
def certificate_pins(der: bytes) -> CertificatePins:
    """Pins of a DER certificate, computed once per distinct certificate.

    The proxy sees the same few intermediates and roots on every handshake, so the cache turns
    the per-handshake cost into one dictionary lookup per certificate. Raises `ValueError` for
    bytes that are not a certificate. The body is a plain function for the reason given at
    `hostnames.normalize_host`.
    """
    return _certificate_pins(der)


def _certificate_pins(der: bytes) -> CertificatePins:
    """`certificate_pins` without the cache: a plain function, so mutation testing reaches it."""
    cert = x509.load_der_x509_certificate(der)
    return CertificatePins(
        spki=spki_pin(cert.public_key()),
        certificate=Pin(PinKind.CERTIFICATE, hashlib.sha256(der).digest()),
        subject=cert.subject.rfc4514_string() or "(empty subject)",
        der=der,
    )


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """One certificate or bare public key found in a file, in file order."""

    spki: Pin
    certificate: CertificatePins | None  # None for a bare public or private key
    label: str


def read_pem_or_der(data: bytes, source: str) -> list[KeyMaterial]:
    """Every certificate, key and CSR in a PEM bundle, or the one object of a DER file.

    Private keys and certificate signing requests (CSRs) yield the pin of their public key, so
    a backup key can be pinned before it has a certificate. Other PEM blocks (parameters, CRLs)
    hold no key and are skipped. Raises `PinError` naming `source` when nothing usable is found.
    """
    if b"-----BEGIN" in data:
        blocks = (_pem_block(m.group(1).decode("ascii"), m.group(0), source)
                  for m in _PEM_BLOCK.finditer(data))
        found = [item for item in blocks if item is not None]
    else:
        found = [_der_object(data, source)]
    if not found:
        raise PinError(f"{source}: no certificate, CSR, public key or private key found")
    return found


def _pem_block(kind: str, block: bytes, source: str) -> KeyMaterial | None:
    try:
        match kind:
            case "CERTIFICATE":
                cert = x509.load_pem_x509_certificate(block)
                return _from_certificate(cert.public_bytes(Encoding.DER))
            case "PUBLIC KEY" | "RSA PUBLIC KEY":
                return KeyMaterial(spki_pin(load_pem_public_key(block)), None, "public key")
            case "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY":
                key = load_pem_private_key(block, password=None)
                return KeyMaterial(spki_pin(key.public_key()), None, "public key of private key")
            case "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST":
                return _from_csr(x509.load_pem_x509_csr(block), source)
            case "ENCRYPTED PRIVATE KEY":
                raise PinError(f"{source}: the private key is encrypted; pin its public key "
                               "(openssl pkey -pubout) or its CSR instead")
            case _:
                return None
    except PinError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PinError(f"{source}: unreadable {kind} block: {e}") from None


def _der_object(data: bytes, source: str) -> KeyMaterial:
    try:
        return _from_certificate(x509.load_der_x509_certificate(data).public_bytes(Encoding.DER))
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        return KeyMaterial(spki_pin(load_der_public_key(data)), None, "public key")
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        request = x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm):
        pass
    else:
        return _from_csr(request, source)
    try:
        key = load_der_private_key(data, password=None)
        return KeyMaterial(spki_pin(key.public_key()), None, "public key of private key")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PinError(
            f"{source}: not a PEM or DER certificate, CSR, public key or private key"
        ) from None


def _from_csr(request: x509.CertificateSigningRequest, source: str) -> KeyMaterial:
    """A CSR is signed by the key it requests: one whose signature fails names a key that
    nobody here is shown to hold, and is refused."""
    if not request.is_signature_valid:
        raise PinError(f"{source}: the CSR's signature does not verify with the key it names")
    subject = request.subject.rfc4514_string() or "(empty subject)"
    return KeyMaterial(spki_pin(request.public_key()), None, f"public key of CSR {subject}")


def _from_certificate(der: bytes) -> KeyMaterial:
    pins = certificate_pins(der)
    return KeyMaterial(pins.spki, pins, pins.subject)
