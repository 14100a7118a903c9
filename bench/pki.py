"""The benchmark's upstream PKI: a trustme root, an intermediate and a leaf for `BENCH_HOST`.

A three-certificate chain, as most public sites serve: nginx sends leaf + intermediate, the
proxies trust only the root, and the pinset pins the root's key, so a successful check walks
the whole verified chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pinproxy.pins import CertificatePins, Pin, certificate_pins

__all__ = ["BENCH_HOST", "BenchPki", "make_pki"]

BENCH_HOST = "bench.pinned.test"


@dataclass(frozen=True, slots=True)
class BenchPki:
    """The files nginx and the proxies read, and the chain as the pin check sees it."""

    ca_file: Path  # the root alone: the proxies' upstream trust store
    chain_file: Path  # leaf + intermediate: what nginx sends
    key_file: Path
    chain: tuple[CertificatePins, ...]  # verified chain, leaf first, root last

    @property
    def root_pin(self) -> Pin:
        return self.chain[-1].spki

    @property
    def ders(self) -> tuple[bytes, ...]:
        return tuple(cert.der for cert in self.chain)


def make_pki(directory: Path) -> BenchPki:
    root = trustme.CA(organization_name="pinproxy bench root")
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert(BENCH_HOST)
    ca_file, chain_file, key_file = (directory / name for name in
                                     ("upstream-ca.pem", "upstream-chain.pem", "upstream-key.pem"))
    root.cert_pem.write_to_path(str(ca_file))
    chain_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    pems = (leaf.cert_chain_pems[0].bytes(), intermediate.cert_pem.bytes(), root.cert_pem.bytes())
    chain = tuple(certificate_pins(_der(pem)) for pem in pems)
    return BenchPki(ca_file, chain_file, key_file, chain)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
