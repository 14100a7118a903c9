"""Real certificates for the pure-core tests: trustme CAs and leaves, as DER and as pins.

Shared by `test_pins.py`, `test_policy.py`, `test_report.py` and `test_loader.py`. Every PKI is
built once per test process (`functools.cache`), so the tests stay fast while using real keys
and real signatures, never mocks. Import it the way `test_upstream.py` imports `upstream`.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass
from functools import cache

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pinproxy.pins import CertificatePins, certificate_pins

__all__ = ["Pki", "b64_sha256", "der_of", "openssl", "pki"]

HOST = "api.example"


def b64_sha256(data: bytes) -> str:
    """base64(SHA-256(data)), computed without pinproxy."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def der_of(pem: bytes) -> bytes:
    """The DER form of one PEM certificate."""
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def openssl(*args: str, data: bytes) -> bytes:
    """Run `openssl <args>` with `data` on stdin; an independent check of our own hashing."""
    done = subprocess.run(["openssl", *args], input=data, capture_output=True, check=True)
    return done.stdout


@dataclass(frozen=True)
class Pki:
    """root CA -> intermediate CA (`create_child_ca`) -> leaf for `HOST` (and `*.HOST`)."""

    root: trustme.CA
    intermediate: trustme.CA
    leaf: trustme.LeafCert
    second_leaf: trustme.LeafCert  # same intermediate, same host, another key and certificate

    @property
    def root_pem(self) -> bytes:
        return self.root.cert_pem.bytes()

    @property
    def intermediate_pem(self) -> bytes:
        return self.intermediate.cert_pem.bytes()

    @property
    def leaf_pem(self) -> bytes:
        return self.leaf.cert_chain_pems[0].bytes()

    @property
    def bundle_pem(self) -> bytes:
        """leaf + intermediate + root, in that order, as one PEM file."""
        return self.leaf_pem + self.intermediate_pem + self.root_pem

    @property
    def chain(self) -> tuple[CertificatePins, ...]:
        """The verified chain as the proxy sees it: leaf first, trust anchor last."""
        return tuple(certificate_pins(der_of(pem)) for pem in
                     (self.leaf_pem, self.intermediate_pem, self.root_pem))

    @property
    def second_chain(self) -> tuple[CertificatePins, ...]:
        leaf = self.second_leaf.cert_chain_pems[0].bytes()
        return (certificate_pins(der_of(leaf)), *self.chain[1:])


@cache
def pki(name: str = "a", key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> Pki:
    """One PKI per (name, key type); two names give two unrelated CAs (a mis-issuing CA)."""
    root = trustme.CA(organization_name=f"pinproxy test root {name}", key_type=key_type)
    intermediate = root.create_child_ca(key_type=key_type)
    leaf = intermediate.issue_cert(HOST, f"*.{HOST}", key_type=key_type)
    second_leaf = intermediate.issue_cert(HOST, key_type=key_type)
    return Pki(root, intermediate, leaf, second_leaf)
