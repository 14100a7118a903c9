"""The one test PKI: trustme root -> intermediate -> leaf, plus a rogue root, never mocks.

`pki(name)` is one CA hierarchy, built once per test process (`functools.cache`) so the tests
stay fast while using real keys and real signatures; two names are two unrelated CAs. The
pure-core tests use its certificates as DER and as pinproxy's `CertificatePins`. The end-to-end
tests use `trusted_pki(directory)`: the same cached hierarchies "a" (genuine) and "rogue"
(a trusted CA that mis-issues), with their roots written as CA files where the fixture asks.
Its pins (`spki_pin`, `cert_pin`, `leaf_pin`) are computed with `cryptography` directly, so
those tests cross-check the proxy's own pin parsing and matching instead of re-using it.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import subprocess
from dataclasses import dataclass
from functools import cache

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pinproxy.pins import CertificatePins, certificate_pins
from tests.upstream import ServerChain

__all__ = [
    "HOST", "Pki", "TrustedPki", "b64_sha256", "cert_pin", "der_of", "issue", "leaf_pin",
    "openssl", "pki", "spki_pin", "trusted_pki",
]

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


def spki_pin(cert_pem: bytes) -> str:
    """``sha256/<base64>`` of the certificate's DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + b64_sha256(spki)


def cert_pin(cert_pem: bytes) -> str:
    """``cert-sha256/<base64>`` of the whole DER certificate."""
    return "cert-sha256/" + b64_sha256(der_of(cert_pem))


def leaf_pin(leaf: trustme.LeafCert | ServerChain) -> str:
    """SPKI pin of the leaf (end-entity) certificate."""
    if isinstance(leaf, ServerChain):
        return spki_pin(leaf.leaf_pem)
    return spki_pin(leaf.cert_chain_pems[0].bytes())


def issue(issuer: trustme.CA, *names: str) -> trustme.LeafCert:
    """Issue a server certificate for ``names`` (DNS names or IP literals)."""
    return issuer.issue_cert(*names)


@dataclass(frozen=True)
class TrustedPki:
    """Two trusted roots: the genuine hierarchy (root -> intermediate) and a rogue root.

    Both roots are in ``ca_bundle`` because the threat model is a CA that *is*
    trusted by the system but mis-issues for pinned names; only pins stop it.
    """

    genuine: Pki
    rogue: Pki
    ca_bundle: pathlib.Path  # root + rogue root: the proxy's --upstream-ca
    root_file: pathlib.Path  # root only
    rogue_file: pathlib.Path  # rogue root only

    @property
    def root(self) -> trustme.CA:
        return self.genuine.root

    @property
    def intermediate(self) -> trustme.CA:
        return self.genuine.intermediate

    @property
    def rogue_root(self) -> trustme.CA:
        return self.rogue.root

    def issue(self, issuer: trustme.CA, *names: str) -> trustme.LeafCert:
        """See module-level :func:`issue`."""
        return issue(issuer, *names)

    def attack_chain(self, *names: str) -> ServerChain:
        """A leaf for ``names`` from the rogue root, with the genuine intermediate appended.

        A correct pin check looks at the *verified* chain (rogue leaf -> rogue
        root) and must reject it; a naive one that scans the *presented*
        certificates finds the pinned intermediate and wrongly accepts.
        """
        leaf = issue(self.rogue_root, *names)
        return ServerChain.from_leaf(leaf, extra=[self.genuine.intermediate_pem])

    @property
    def root_pin(self) -> str:
        return spki_pin(self.genuine.root_pem)

    @property
    def intermediate_pin(self) -> str:
        return spki_pin(self.genuine.intermediate_pem)

    @property
    def rogue_root_pin(self) -> str:
        return spki_pin(self.rogue.root_pem)


def trusted_pki(directory: pathlib.Path) -> TrustedPki:
    """The cached PKIs "a" and "rogue", with their roots written as CA files into ``directory``."""
    genuine, rogue = pki("a"), pki("rogue")
    directory.mkdir(parents=True, exist_ok=True)
    root_file, rogue_file, bundle = (
        directory / "root-ca.pem",
        directory / "rogue-ca.pem",
        directory / "ca-bundle.pem",
    )
    root_file.write_bytes(genuine.root_pem)
    rogue_file.write_bytes(rogue.root_pem)
    bundle.write_bytes(genuine.root_pem + rogue.root_pem)
    return TrustedPki(genuine, rogue, bundle, root_file, rogue_file)
