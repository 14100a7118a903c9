"""The proxy's CA: made once, ECDSA P-256, in mitmproxy's file layout.

mitmproxy signs every client-side handshake with its CA key (the certificates it mints reuse
that key). With the RSA-2048 key mitmproxy generates, that signature is one of the costliest
steps of a new tunnel; an ECDSA P-256 signature is more than ten times cheaper, and every
current TLS client accepts it. A CA that already exists in the directory is used as it is, so
clients that trust it keep working.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pinproxy.errors import PinproxyError
from pinproxy.files import create_exclusively

__all__ = ["CA_CERT_FILE", "CA_KEY_FILE", "ensure_ca"]

CA_KEY_FILE = "mitmproxy-ca.pem"  # private key and certificate: what mitmproxy loads
CA_CERT_FILE = "mitmproxy-ca-cert.pem"  # the certificate alone: what clients must trust
_VALIDITY = dt.timedelta(days=3650)


def ensure_ca(confdir: str) -> Path:
    """The CA directory, with a new CA in it unless it has one; `PinproxyError` if unusable."""
    path = Path(os.path.expanduser(confdir))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (path / CA_KEY_FILE).exists():
            _write_ca(path)
    except OSError as e:
        raise PinproxyError(f"--confdir {confdir}: {e.strerror or e}") from None
    return path


def _write_ca(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinproxy CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pinproxy")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))  # tolerate clients with a slow clock
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(path / CA_KEY_FILE, key_pem + cert_pem, 0o600)
    _write_new(path / CA_CERT_FILE, cert_pem, 0o644)
    _write_new(path / "mitmproxy-ca-cert.cer", cert_pem, 0o644)  # the name Windows expects


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Exclusive, not atomic: a CA is only ever created, never replaced (the one in use stays),
    and the key is created 0600 from the start; a failed write leaves no half-written key."""
    create_exclusively(path, data, mode)
