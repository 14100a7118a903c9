"""Tests of `pinproxy.keyfiles`: CSRs (PEM and DER) beside what `pins.read_pem_or_der` reads.

The pin of a CSR is checked against OpenSSL run as a separate process (`openssl req -pubkey`),
so a shared mistake in our code and the test's cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from pinproxy.commands.pin import read_key_file
from pinproxy.errors import PinError
from pinproxy.pins import read_pem_or_der as read_keys
from tests import certs


def make_csr(key: CertificateIssuerPrivateKeyTypes, name: str = "backup.api.example",
             ) -> x509.CertificateSigningRequest:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def openssl_csr_pin(pem: bytes) -> str:
    """`openssl req -pubkey | openssl pkey -pubin -outform der | sha256 | base64`."""
    public_pem = certs.openssl("req", "-pubkey", "-noout", data=pem)
    der = certs.openssl("pkey", "-pubin", "-outform", "der", data=public_pem)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module", params=["ec", "rsa"])
def csr_key(request: pytest.FixtureRequest) -> CertificateIssuerPrivateKeyTypes:
    if request.param == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("encoding", [Encoding.PEM, Encoding.DER], ids=["pem", "der"])
def test_csr_yields_the_pin_of_the_requested_key(
        csr_key: CertificateIssuerPrivateKeyTypes, encoding: Encoding) -> None:
    csr = make_csr(csr_key)
    [item] = read_keys(csr.public_bytes(encoding), "backup.csr")
    assert str(item.spki) == openssl_csr_pin(csr.public_bytes(Encoding.PEM))
    assert item.certificate is None
    assert item.label == "public key of CSR CN=backup.api.example"
    # twin: a CSR for another key has another pin
    other = make_csr(ec.generate_private_key(ec.SECP256R1()))
    assert read_keys(other.public_bytes(encoding), "other.csr")[0].spki != item.spki


def test_csr_and_its_private_key_pin_the_same_key(
        csr_key: CertificateIssuerPrivateKeyTypes) -> None:
    key_pem = csr_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    csr_pem = make_csr(csr_key).public_bytes(Encoding.PEM)
    assert read_keys(key_pem, "backup.key")[0].spki == read_keys(csr_pem, "backup.csr")[0].spki


def test_new_certificate_request_spelling_is_read() -> None:
    pem = make_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.PEM)
    old_style = pem.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
    assert read_keys(old_style, "old.csr")[0].spki == read_keys(pem, "new.csr")[0].spki


def test_a_csr_whose_signature_does_not_verify_is_refused() -> None:
    good = make_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.DER)
    forged = good.replace(b"backup.api.example", b"backup.evl.example")  # same length
    assert forged != good
    for name, data in (("forged.csr", forged), ("forged.pem", _pem_csr(forged))):
        with pytest.raises(PinError, match=rf"^{name}: the CSR's signature does not verify"):
            read_keys(data, name)
    assert read_keys(good, "good.csr")  # twin


def _pem_csr(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


def test_mixed_pem_file_keeps_file_order_and_skips_blocks_without_a_key() -> None:
    pki = certs.pki()
    key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = make_csr(key).public_bytes(Encoding.PEM)
    crl = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    found = read_keys(pki.leaf_pem + crl + csr_pem + pki.root_pem, "mixed.pem")
    assert [item.spki for item in found] == [
        pki.chain[0].spki, read_keys(csr_pem, "x")[0].spki, pki.chain[2].spki]
    with pytest.raises(PinError, match=r"^crl\.pem: no certificate, CSR, public key or private"):
        read_keys(crl, "crl.pem")


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA],
                         ids=["ecdsa", "rsa"])
def test_certificates_and_keys_are_read_as_pins_reads_them(key_type: trustme.KeyType) -> None:
    pki = certs.pki("a", key_type)
    private = load_pem_private_key(pki.leaf.private_key_pem.bytes(), password=None)
    public = private.public_key()
    inputs = {
        "bundle.pem": pki.bundle_pem,
        "leaf.der": certs.der_of(pki.leaf_pem),
        "leaf.pub": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "leaf.pub.der": public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        "leaf.key": private.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL,
                                          NoEncryption()),
        "leaf.key.der": private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
    }
    for name, data in inputs.items():
        assert read_keys(data, name)[0].spki == pki.chain[0].spki, name
    assert [i.spki for i in read_keys(pki.bundle_pem, "b")] == [c.spki for c in pki.chain]


def test_an_encrypted_private_key_says_what_to_give_instead() -> None:
    key = load_pem_private_key(certs.pki().leaf.private_key_pem.bytes(), password=None)
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    with pytest.raises(PinError, match=r"^enc\.pem: the private key is encrypted; pin its public"):
        read_keys(data, "enc.pem")


@pytest.mark.parametrize("data", [b"", b"not a key", b"\x30\x03\x02\x01\x00"],
                         ids=["empty", "text", "der-noise"])
def test_garbage_names_the_file_and_every_accepted_kind(data: bytes) -> None:
    with pytest.raises(PinError, match=r"^junk\.bin: not a PEM or DER certificate, CSR, public "
                                       r"key or private key$"):
        read_keys(data, "junk.bin")


def test_read_key_file_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PinError, match=r"nope\.pem: No such file or directory$"):
        read_key_file(str(tmp_path / "nope.pem"))
    good = tmp_path / "root.pem"
    good.write_bytes(certs.pki().root_pem)
    assert read_key_file(str(good))[0].spki == certs.pki().chain[2].spki
