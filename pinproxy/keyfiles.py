"""Key material from files, CSRs included: what `pinproxy pin FILE` reads.

`pins.read_pem_or_der` reads certificates, public keys and private keys. A certificate signing
request (CSR) adds one more way to pin a key before its certificate exists: the backup key's CSR
is what an operator sends to the CA, so its pin is the one to add to the pinset now. This module
adds CSRs (PEM `CERTIFICATE REQUEST` or DER) and hands everything else to `read_pem_or_der`.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from pinproxy.errors import PinError
from pinproxy.pins import KeyMaterial, read_pem_or_der, spki_pin

__all__ = ["read_key_file", "read_keys"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_CSR_KINDS = frozenset({"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"})
# The PEM kinds `read_pem_or_der` reads; other blocks (parameters, CRLs) hold no key to pin.
_KEY_KINDS = frozenset({"CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY", "PRIVATE KEY",
                        "RSA PRIVATE KEY", "EC PRIVATE KEY"})


def read_key_file(path: str) -> list[KeyMaterial]:
    """Every certificate, key and CSR of a file, in file order; `PinError` names the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PinError(f"{path}: {e.strerror or e}") from None
    return read_keys(data, path)


def read_keys(data: bytes, source: str) -> list[KeyMaterial]:
    """Like `pins.read_pem_or_der`, and CSRs too: the pin of the key a CSR requests."""
    if b"-----BEGIN" not in data:
        return [_der(data, source)]
    found: list[KeyMaterial] = []
    for match in _PEM_BLOCK.finditer(data):
        kind, block = match.group(1).decode("ascii"), match.group(0)
        if kind in _CSR_KINDS:
            found.append(_csr(block, kind, source))
        elif kind == "ENCRYPTED PRIVATE KEY":
            raise PinError(f"{source}: the private key is encrypted; pin its public key "
                           "(openssl pkey -pubout) or its CSR instead")
        elif kind in _KEY_KINDS:
            found.extend(read_pem_or_der(block, source))
    if not found:
        raise PinError(f"{source}: no certificate, CSR, public key or private key found")
    return found


def _der(data: bytes, source: str) -> KeyMaterial:
    try:
        return read_pem_or_der(data, source)[0]
    except PinError:
        pass
    try:
        request = x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm):
        raise PinError(f"{source}: not a PEM or DER certificate, CSR, public key or "
                       "private key") from None
    return _from_csr(request, source)


def _csr(block: bytes, kind: str, source: str) -> KeyMaterial:
    try:
        request = x509.load_pem_x509_csr(block)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PinError(f"{source}: unreadable {kind} block: {e}") from None
    return _from_csr(request, source)


def _from_csr(request: x509.CertificateSigningRequest, source: str) -> KeyMaterial:
    # A CSR is signed with the key it requests; one that does not verify names someone
    # else's key, and pinning that would pin a key nobody here holds.
    try:
        key = request.public_key()
        valid = request.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PinError(f"{source}: unreadable CSR: {e}") from None
    if not valid:
        raise PinError(f"{source}: the CSR's signature does not verify with the key it names")
    subject = request.subject.rfc4514_string() or "(empty subject)"
    return KeyMaterial(spki_pin(key), None, f"public key of CSR {subject}")
