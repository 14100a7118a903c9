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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from pinproxy.errors import PinproxyError
from pinproxy.files import create_exclusively, replace_atomically

__all__ = ["CA_CERT_FILE", "CA_KEY_FILE", "EXPORT_FORMATS", "ensure_ca", "export_ca",
           "install_ca"]

CA_KEY_FILE = "mitmproxy-ca.pem"  # private key and certificate: what mitmproxy loads
CA_CERT_FILE = "mitmproxy-ca-cert.pem"  # the certificate alone: what clients must trust
_CER_FILE = "mitmproxy-ca-cert.cer"  # the same, under the name Windows and Android expect
EXPORT_FORMATS = ("pem", "der", "p12")
_FRIENDLY_NAME = b"pinproxy CA"
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
    _write_new(path / _CER_FILE, cert_pem, 0o644)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Exclusive, not atomic: a CA is only ever created, never replaced (the one in use stays),
    and the key is created 0600 from the start; a failed write leaves no half-written key."""
    create_exclusively(path, data, mode)


def export_ca(confdir: str, fmt: str) -> bytes:
    """The CA certificate clients must trust, as PEM, DER or PKCS#12 (certificate only, no key).

    Read from the key file mitmproxy loads, so what is exported is what the proxy signs with.
    """
    path = Path(os.path.expanduser(confdir)) / CA_KEY_FILE
    try:
        certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except OSError as e:
        raise PinproxyError(f"{path}: {e.strerror or e}") from None
    except ValueError:
        raise PinproxyError(f"{path}: no PEM certificate in it") from None
    if fmt == "pem":
        return certificate.public_bytes(serialization.Encoding.PEM)
    if fmt == "der":
        return certificate.public_bytes(serialization.Encoding.DER)
    return pkcs12.serialize_key_and_certificates(
        _FRIENDLY_NAME, None, certificate, None, serialization.NoEncryption())


def install_ca(confdir: str, cert_path: str, key_path: str, *, force: bool = False) -> Path:
    """Install an organisation's CA (certificate and key, PEM or DER) in mitmproxy's layout.

    Refused (`PinproxyError`, one line, never the key): a certificate that is no CA or has
    expired, a key that is not the certificate's, an unreadable file, and an existing CA
    unless `force` (which replaces each file atomically).
    """
    certificate = _read_certificate(cert_path)
    key = _read_key(key_path)
    _check_ca(cert_path, certificate)
    if key.public_key() != certificate.public_key():
        raise PinproxyError(f"--key {key_path}: not the key of the certificate {cert_path}")
    path = Path(os.path.expanduser(confdir))
    if (path / CA_KEY_FILE).exists() and not force:
        raise PinproxyError(f"--confdir {confdir}: already has a CA ({CA_KEY_FILE}); "
                            "give --force to replace it")
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write = replace_atomically if force else create_exclusively
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The key file first: mitmproxy reads only it, and the others are derived from it.
        for name, data, mode in ((CA_KEY_FILE, key_pem + cert_pem, 0o600),
                                 (CA_CERT_FILE, cert_pem, 0o644), (_CER_FILE, cert_pem, 0o644)):
            if force and not (path / name).exists():
                create_exclusively(path / name, data, mode)
            else:
                write(path / name, data, mode)
    except FileExistsError as e:
        raise PinproxyError(f"--confdir {confdir}: {e.filename} exists; give --force to "
                            "replace it") from None
    except OSError as e:
        raise PinproxyError(f"--confdir {confdir}: {e.strerror or e}") from None
    return path


_CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _read(flag: str, file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise PinproxyError(f"{flag} {file}: {e.strerror or e}") from None


def _read_certificate(file: str) -> x509.Certificate:
    data = _read("--cert", file)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise PinproxyError(f"--cert {file}: not a PEM or DER certificate") from None


def _read_key(file: str) -> _CAKey:
    data = _read("--key", file)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, None)
        else:
            key = serialization.load_der_private_key(data, None)
    except TypeError:  # the error text would not show the key, but keep it to a fixed line
        raise PinproxyError(f"--key {file}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PinproxyError(f"--key {file}: not a PEM or DER private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey)):
        raise PinproxyError(f"--key {file}: a {type(key).__name__}; "
                            "the CA key must be RSA, ECDSA or Ed25519")
    return key


def _check_ca(file: str, certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise PinproxyError(f"--cert {file}: not a CA certificate "
                            "(no BasicConstraints extension)") from None
    if not constraints.value.ca:
        raise PinproxyError(f"--cert {file}: not a CA certificate (BasicConstraints ca=False)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.key_cert_sign:
            raise PinproxyError(f"--cert {file}: not a CA certificate "
                                "(its KeyUsage lacks keyCertSign)")
    now = dt.datetime.now(dt.UTC)
    if certificate.not_valid_after_utc <= now:
        raise PinproxyError(f"--cert {file}: expired on "
                            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
