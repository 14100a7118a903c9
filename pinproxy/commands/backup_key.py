"""`pinproxy backup-key`: a new key pair for a future certificate, its CSR, and its pin.

A backup pin is what turns a lost or rotated key from an outage into a routine change: clients
already accept the next key. That only works if the key behind the pin exists and is kept apart,
so this generates it now, writes it readable by its owner only (created with mode 0600, never
chmod-ed afterwards, never overwriting a file), writes a CSR to have it certified on the day it
is needed, and prints the pin to add to the pinset today.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from pinproxy.errors import PinproxyError, quote
from pinproxy.files import write_all
from pinproxy.hostnames import is_ip_literal, normalize_host
from pinproxy.pins import Pin, spki_pin

RSA_BITS = (2048, 3072, 4096)
DEFAULT_RSA_BITS = 3072
_DEFAULT_CN = "pinproxy backup key"
_CN_MAX = 64  # RFC 5280 ub-common-name


@dataclass(frozen=True, slots=True)
class BackupKey:
    """A generated key, its CSR and its pin, not yet written anywhere."""

    key_pem: bytes
    csr_pem: bytes
    pin: Pin
    kind: str  # "EC P-256", "RSA 3072"


def generate(key_type: str, rsa_bits: int, subject: x509.Name,
             sans: Sequence[x509.GeneralName]) -> BackupKey:
    """A new private key and a CSR signed with it (SHA-256) for `subject` and `sans`."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key, kind = rsa.generate_private_key(65537, rsa_bits), f"RSA {rsa_bits}"
    else:
        key, kind = ec.generate_private_key(ec.SECP256R1()), "EC P-256"
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return BackupKey(key_pem, csr.public_bytes(Encoding.PEM), spki_pin(key.public_key()), kind)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "backup-key", help="generate a backup key pair, its CSR and its pin",
        description="Generate the key pair of a future certificate: NAME.key.pem (private key, "
                    "mode 0600) and NAME.csr.pem (its CSR). Prints the pin to add to your "
                    "pinset today as a backup pin. Never overwrites a file.")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="directory to write into (default: the current directory)")
    parser.add_argument("--name", default="backup",
                        help="file name stem: NAME.key.pem, NAME.csr.pem (default: %(default)s)")
    parser.add_argument("--type", choices=("ec", "rsa"), default="ec", dest="key_type",
                        help="ec: P-256 (default); rsa: see --rsa-bits")
    parser.add_argument("--rsa-bits", type=int, choices=RSA_BITS, metavar="BITS",
                        help=f"RSA key size: 2048, 3072 or 4096 (default: {DEFAULT_RSA_BITS})")
    parser.add_argument("--subject", metavar="DN",
                        help="CSR subject, RFC 4514: 'CN=api.example.com,O=Example' "
                             f"(default: CN=<the first DNS --san>, else CN={_DEFAULT_CN})")
    parser.add_argument("--san", action="append", default=[], metavar="DNS:NAME|IP:ADDRESS",
                        help="subjectAltName of the CSR; repeatable")
    parser.set_defaults(command=backup_key)


def backup_key(args: argparse.Namespace) -> int:
    if args.rsa_bits is not None and args.key_type != "rsa":
        raise PinproxyError("--rsa-bits applies only to --type rsa")
    out = Path(args.out)
    if not out.is_dir():
        raise PinproxyError(f"--out {args.out}: no such directory")
    name: str = args.name
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise PinproxyError(f"--name {quote(name)}: give a plain file name, without directories "
                            "(use --out for the directory)")
    sans = [_san(text) for text in args.san]
    subject = _subject(args.subject) if args.subject is not None else _default_subject(sans)
    made = generate(args.key_type, args.rsa_bits or DEFAULT_RSA_BITS, subject, sans)
    key_path, csr_path = out / f"{name}.key.pem", out / f"{name}.csr.pem"
    _write_new_pair((key_path, made.key_pem, 0o600), (csr_path, made.csr_pem, 0o644))
    _report(made, key_path, csr_path)
    return 0


def _san(text: str) -> x509.GeneralName:
    kind, colon, value = text.partition(":")
    try:
        if colon and kind.upper() == "DNS":
            wildcard = value.startswith("*.")
            host = normalize_host(value.removeprefix("*."))
            if not is_ip_literal(host):
                return x509.DNSName(f"*.{host}" if wildcard else host)
            raise PinproxyError(f"--san {quote(text)}: an IP address goes in IP:{value}")
        if colon and kind.upper() == "IP":
            return x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
    except ValueError as e:  # HostnameError included
        raise PinproxyError(f"--san {quote(text)}: {e}") from None
    raise PinproxyError(f"--san {quote(text)}: write DNS:<name> or IP:<address>")


def _subject(text: str) -> x509.Name:
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as e:
        reason = f": {e}" if str(e) else ""
        raise PinproxyError(f"--subject {quote(text)} is not a distinguished name such as "
                            f"'CN=api.example.com,O=Example' (RFC 4514){reason}") from None
    if not list(name):
        raise PinproxyError(f"--subject {quote(text)} is empty; for example 'CN=api.example.com'")
    return name


def _default_subject(sans: Sequence[x509.GeneralName]) -> x509.Name:
    names = [san.value for san in sans if isinstance(san, x509.DNSName)]
    common_name = names[0] if names and len(names[0]) <= _CN_MAX else _DEFAULT_CN
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_new_pair(*files: tuple[Path, bytes, int]) -> None:
    """Create every file with its mode from the start; refuse if any exists.

    All are created (O_EXCL) before any is written, so a refusal leaves nothing behind, and a
    failed write removes what was created rather than leave half a key.
    """
    opened: list[tuple[Path, int]] = []
    try:
        for path, _, mode in files:
            opened.append((path, _create(path, mode)))
        for (path, fd), (_, data, _) in zip(opened, files, strict=True):
            _write_all(path, fd, data)
    except PinproxyError:
        for path, _ in opened:
            path.unlink(missing_ok=True)
        raise
    finally:
        for _, fd in opened:
            os.close(fd)


def _write_all(path: Path, fd: int, data: bytes) -> None:
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as e:
        raise PinproxyError(f"cannot write {path}: {e.strerror or e}") from None


def _create(path: Path, mode: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        raise PinproxyError(f"{path}: already exists; backup-key never overwrites a file "
                            "(choose another --name or --out)") from None
    except OSError as e:
        raise PinproxyError(f"{path}: {e.strerror or e}") from None


def _report(made: BackupKey, key_path: Path, csr_path: Path) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    print(f"Wrote {key_path}: a new {made.kind} private key, mode 0600")
    print(f"Wrote {csr_path}: its certificate signing request (CSR)")
    print()
    print(f"Backup pin: {made.pin}")
    print()
    print("Add it today to every host rule this key may serve, next to the pins in use:")
    print(f"      - {json.dumps(str(made.pin))}  # backup key {csr_path.name}, {today}")
    print()
    print(f"Then store {key_path} offline (not on the servers, not in version control)\n"
          "and delete this copy. The day the current key or CA must go, have the CSR signed\n"
          "and deploy that certificate with this key: clients already accept its pin.")
