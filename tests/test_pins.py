"""Tests of `pinproxy.pins`: pin spellings, pins computed from real certificates and keys.

Computed pins are checked against OpenSSL run as a separate process, so a shared mistake in
our hashing and the test's cannot hide. Every accepted spelling has a rejected twin.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from pinproxy.errors import PinError
from pinproxy.pins import Pin, PinKind, certificate_pins, parse_pin, read_pem_or_der, spki_pin
from tests import certs

# RFC 7469 example values: well-formed, 32 bytes, and nobody's key (reference section 3.3).
HELLO = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
EMPTY = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
HELLO_DIGEST = hashlib.sha256(b"hello").digest()
HELLO_HEX = HELLO_DIGEST.hex()
HELLO_HEX_COLONS = ":".join(HELLO_HEX[i : i + 2] for i in range(0, 64, 2))
SHORT = base64.b64encode(HELLO_DIGEST[:31]).decode("ascii")  # 31 bytes
LONG = base64.b64encode(HELLO_DIGEST + b"\0").decode("ascii")  # 33 bytes

KEY_TYPES = [trustme.KeyType.ECDSA, trustme.KeyType.RSA]


# -- parse_pin -----------------------------------------------------------------------------

def test_rfc7469_vectors_are_sha256_of_hello_and_of_nothing() -> None:
    assert certs.b64_sha256(b"hello") == HELLO
    assert certs.b64_sha256(b"") == EMPTY
    assert parse_pin(f"sha256/{HELLO}").digest == hashlib.sha256(b"hello").digest()
    assert parse_pin(f"sha256/{EMPTY}").digest == hashlib.sha256(b"").digest()
    assert parse_pin(f"sha256/{HELLO}") != parse_pin(f"sha256/{EMPTY}")


@pytest.mark.parametrize("spelling", [
    f"sha256/{HELLO}",            # OkHttp, Envoy, Android
    f"sha256//{HELLO}",           # curl --pinnedpubkey
    f'pin-sha256="{HELLO}"',      # HPKP header
    f"  sha256/{HELLO}  ",        # surrounding blanks from a YAML list or a shell
    f"SHA256/{HELLO}",
], ids=["okhttp", "curl", "hpkp", "blanks", "upper-prefix"])
def test_spki_spellings_parse_to_one_pin(spelling: str) -> None:
    pin = parse_pin(spelling)
    assert pin == Pin(PinKind.SPKI, HELLO_DIGEST)
    assert str(pin) == f"sha256/{HELLO}"
    assert pin.hpkp == f'pin-sha256="{HELLO}"'
    assert parse_pin(str(pin)) == pin and parse_pin(pin.hpkp) == pin


@pytest.mark.parametrize("spelling", [
    f"sha256/{SHORT}", f"sha256//{SHORT}", f'pin-sha256="{SHORT}"',
    f"sha256/{LONG}", f"sha256//{LONG}", f'pin-sha256="{LONG}"',
], ids=["okhttp-31", "curl-31", "hpkp-31", "okhttp-33", "curl-33", "hpkp-33"])
def test_spki_spellings_of_a_wrong_length_digest_fail(spelling: str) -> None:
    with pytest.raises(PinError, match="32-byte SHA-256") as e:
        parse_pin(spelling)
    assert repr(spelling) in str(e.value)


@pytest.mark.parametrize("spelling", [
    f"cert-sha256/{HELLO}",
    f"cert-sha256/{HELLO_HEX}",
    f"cert-sha256/{HELLO_HEX.upper()}",
    f"cert-sha256/{HELLO_HEX_COLONS}",
    f"cert-sha256/{HELLO_HEX_COLONS.upper()}",
], ids=["base64", "hex", "HEX", "hex-colons", "HEX-colons"])
def test_certificate_pin_spellings_parse_to_one_pin(spelling: str) -> None:
    pin = parse_pin(spelling)
    assert pin == Pin(PinKind.CERTIFICATE, HELLO_DIGEST)
    assert str(pin) == f"cert-sha256/{HELLO}"
    # the same digest as an SPKI pin is another pin: the kind comes from the prefix only
    assert pin != parse_pin(f"sha256/{HELLO}")


@pytest.mark.parametrize("spelling", [
    f"cert-sha256/{HELLO_HEX[:-2]}",             # 31 bytes of hex
    f"cert-sha256/{HELLO_HEX}00",                # 33 bytes of hex
    f"cert-sha256/{HELLO_HEX_COLONS[:-3]}",      # 31 bytes, colons
    f"cert-sha256/{HELLO_HEX_COLONS}:00",        # 33 bytes, colons
    f"cert-sha256/{HELLO_HEX[:-1]}g",            # not hex, not base64 of 32 bytes
    f"cert-sha256/{SHORT}",
], ids=["hex-31", "hex-33", "colons-31", "colons-33", "not-hex", "base64-31"])
def test_certificate_pin_spellings_of_a_wrong_digest_fail(spelling: str) -> None:
    with pytest.raises(PinError) as e:
        parse_pin(spelling)
    assert repr(spelling) in str(e.value)


@pytest.mark.parametrize(("text", "complaint"), [
    ("md5/DmxUShsZuNiqPQsX2Oi9uv2sCnw=", "unsupported prefix 'md5/'"),
    ("sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw*", "unsupported prefix 'sha1/'"),
    ("sha512/" + "A" * 86 + "==", "unsupported prefix 'sha512/'"),
    ("pin-sha1=\"DmxUShsZuNiqPQsX2Oi9uv2sCnw=\"", "has no prefix"),
    ("sha256/a", "32-byte SHA-256"),
    ("sha256/", "32-byte SHA-256"),
    (f"sha256/{HELLO[:-2]}*=", "32-byte SHA-256"),      # '*' is not base64
    (f"sha256/{HELLO[:10]} {HELLO[10:]}", "32-byte SHA-256"),  # a blank inside
    (f"sha256/{HELLO.rstrip('=')}", "32-byte SHA-256"),  # padding missing
    (f"sha256/{SHORT}", "32-byte SHA-256"),
    (f"sha256/{LONG}", "32-byte SHA-256"),
    (f"sha256///{HELLO}", "32-byte SHA-256"),
    (f'pin-sha256="{HELLO}"; max-age=10', "has no prefix"),  # a whole header is not a pin
    (HELLO, "has no prefix"),
    ("", "has no prefix"),
], ids=["md5", "sha1-star", "sha512", "hpkp-sha1", "short", "empty-body", "star", "blank",
        "no-padding", "31-bytes", "33-bytes", "three-slashes", "hpkp-header", "no-prefix",
        "empty"])
def test_parse_pin_rejects_and_names_the_pin(text: str, complaint: str) -> None:
    with pytest.raises(PinError) as e:
        parse_pin(text)
    message = str(e.value)
    assert message.startswith(f"pin {text!r} ")
    assert complaint in message
    assert "\n" not in message


def test_a_prefixless_pin_that_contains_a_slash_is_still_rejected() -> None:
    # EMPTY contains '/', so its first part looks like a prefix; it must not be accepted.
    with pytest.raises(PinError) as e:
        parse_pin(EMPTY)
    assert repr(EMPTY) in str(e.value)
    assert parse_pin(f"sha256/{EMPTY}").digest == hashlib.sha256(b"").digest()  # twin


def test_non_canonical_base64_is_rejected() -> None:
    # 'CR=' decodes to the same bytes as 'CQ=' with non-zero padding bits: one pin, one spelling.
    bad = f"sha256/{HELLO[:-2]}R="
    with pytest.raises(PinError, match="32-byte SHA-256"):
        parse_pin(bad)
    assert parse_pin(f"sha256/{HELLO}").digest == HELLO_DIGEST


# -- spki_pin and certificate_pins against OpenSSL ------------------------------------------

@pytest.mark.parametrize("key_type", KEY_TYPES, ids=["ecdsa", "rsa"])
def test_spki_pin_equals_openssl(key_type: trustme.KeyType) -> None:
    pem = certs.pki("a", key_type).leaf_pem
    public_pem = certs.openssl("x509", "-pubkey", "-noout", data=pem)
    spki_der = certs.openssl("pkey", "-pubin", "-outform", "der", data=public_pem)
    digest = certs.openssl("dgst", "-sha256", "-binary", data=spki_der)
    expected = base64.b64encode(digest).decode("ascii")

    cert = x509.load_pem_x509_certificate(pem)
    assert str(spki_pin(cert.public_key())) == f"sha256/{expected}"
    assert str(certificate_pins(certs.der_of(pem)).spki) == f"sha256/{expected}"
    # twin: another key (the intermediate's) has another pin
    other = x509.load_pem_x509_certificate(certs.pki("a", key_type).intermediate_pem)
    assert str(spki_pin(other.public_key())) != f"sha256/{expected}"


@pytest.mark.parametrize("key_type", KEY_TYPES, ids=["ecdsa", "rsa"])
def test_certificate_pin_equals_openssl(key_type: trustme.KeyType) -> None:
    pki = certs.pki("a", key_type)
    der = certs.openssl("x509", "-outform", "der", data=pki.leaf_pem)
    expected = base64.b64encode(certs.openssl("dgst", "-sha256", "-binary", data=der)).decode()

    pins = certificate_pins(certs.der_of(pki.leaf_pem))
    assert pins.certificate == Pin(PinKind.CERTIFICATE, base64.b64decode(expected))
    assert str(pins.certificate) == f"cert-sha256/{expected}"
    assert pins.certificate.digest != pins.spki.digest
    # twin: a second certificate for the same host from the same CA has another whole-cert pin
    second = certificate_pins(certs.der_of(pki.second_leaf.cert_chain_pems[0].bytes()))
    assert second.certificate != pins.certificate


def test_certificate_pins_carry_subject_der_and_a_pem_that_reads_back() -> None:
    pki = certs.pki()
    der = certs.der_of(pki.root_pem)
    pins = certificate_pins(der)
    assert pins.der == der
    assert "pinproxy test root a" in pins.subject
    assert x509.load_pem_x509_certificate(pins.pem.encode()).public_bytes(Encoding.DER) == der
    assert all(len(line) <= 64 for line in pins.pem.splitlines())


def test_certificate_pins_rejects_bytes_that_are_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        certificate_pins(b"not a certificate")


# -- read_pem_or_der -----------------------------------------------------------------------

def test_pem_bundle_yields_every_certificate_in_file_order() -> None:
    pki = certs.pki()
    found = read_pem_or_der(pki.bundle_pem, "bundle.pem")
    assert [item.spki for item in found] == [cert.spki for cert in pki.chain]
    assert [item.certificate for item in found] == list(pki.chain)
    assert [item.label for item in found] == [cert.subject for cert in pki.chain]
    # twin: the leaf alone yields the leaf alone
    assert [item.spki for item in read_pem_or_der(pki.leaf_pem, "leaf.pem")] == [
        pki.chain[0].spki]


def test_pem_bundle_skips_blocks_that_hold_no_key_but_keeps_the_rest() -> None:
    pki = certs.pki()
    noise = b"# comment\n-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    found = read_pem_or_der(noise + pki.root_pem, "mixed.pem")
    assert [item.spki for item in found] == [pki.chain[2].spki]
    with pytest.raises(PinError, match=r"^only-crl\.pem: no certificate, CSR, public key or "
                                       r"private key found$"):
        read_pem_or_der(noise, "only-crl.pem")


def test_der_certificate() -> None:
    pki = certs.pki()
    [item] = read_pem_or_der(certs.der_of(pki.leaf_pem), "leaf.der")
    assert item.spki == pki.chain[0].spki
    assert item.certificate == pki.chain[0]


@pytest.mark.parametrize("key_type", KEY_TYPES, ids=["ecdsa", "rsa"])
@pytest.mark.parametrize("encoding", [Encoding.PEM, Encoding.DER], ids=["pem", "der"])
def test_public_key(key_type: trustme.KeyType, encoding: Encoding) -> None:
    pki = certs.pki("a", key_type)
    key = x509.load_pem_x509_certificate(pki.leaf_pem).public_key()
    data = key.public_bytes(encoding, PublicFormat.SubjectPublicKeyInfo)
    [item] = read_pem_or_der(data, "key")
    assert item.spki == pki.chain[0].spki
    assert item.certificate is None
    assert item.spki != pki.chain[1].spki  # twin: not the intermediate's key


def test_pkcs1_rsa_public_key() -> None:
    pki = certs.pki("a", trustme.KeyType.RSA)
    key = x509.load_pem_x509_certificate(pki.leaf_pem).public_key()
    data = key.public_bytes(Encoding.PEM, PublicFormat.PKCS1)
    assert data.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    [item] = read_pem_or_der(data, "rsa-pub.pem")
    assert item.spki == pki.chain[0].spki


@pytest.mark.parametrize("key_type", KEY_TYPES, ids=["ecdsa", "rsa"])
@pytest.mark.parametrize(("encoding", "private_format"), [
    (Encoding.PEM, PrivateFormat.TraditionalOpenSSL),  # RSA PRIVATE KEY / EC PRIVATE KEY
    (Encoding.PEM, PrivateFormat.PKCS8),               # PRIVATE KEY
    (Encoding.DER, PrivateFormat.PKCS8),
], ids=["pem-traditional", "pem-pkcs8", "der-pkcs8"])
def test_private_key_yields_the_pin_of_its_public_half(
    key_type: trustme.KeyType, encoding: Encoding, private_format: PrivateFormat
) -> None:
    pki = certs.pki("a", key_type)
    key = load_pem_private_key(pki.leaf.private_key_pem.bytes(), password=None)
    data = key.private_bytes(encoding, private_format, NoEncryption())
    [item] = read_pem_or_der(data, "backup.key")
    assert item.spki == pki.chain[0].spki  # the leaf certificate's key
    assert item.certificate is None
    # twin: another private key pins to another key
    other = load_pem_private_key(pki.second_leaf.private_key_pem.bytes(), password=None)
    [other_item] = read_pem_or_der(other.private_bytes(encoding, private_format, NoEncryption()),
                                   "other.key")
    assert other_item.spki != item.spki


@pytest.mark.parametrize("data", [
    b"",
    b"garbage, not a certificate",
    b"\x30\x03\x02\x01\x00",  # valid DER, but an INTEGER in a SEQUENCE
], ids=["empty", "text", "der-noise"])
def test_garbage_raises_pin_error_naming_the_file(data: bytes) -> None:
    with pytest.raises(PinError) as e:
        read_pem_or_der(data, "certs/garbage.bin")
    assert str(e.value).startswith("certs/garbage.bin: ")


def test_a_damaged_pem_block_raises_pin_error_naming_the_file() -> None:
    damaged = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(PinError, match=r"^certs/bad\.pem: unreadable CERTIFICATE block"):
        read_pem_or_der(damaged, "certs/bad.pem")
    assert read_pem_or_der(certs.pki().root_pem, "certs/good.pem")  # twin


def test_an_encrypted_private_key_is_not_silently_read() -> None:
    key = load_pem_private_key(certs.pki().leaf.private_key_pem.bytes(), password=None)
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    with pytest.raises(PinError, match=r"^enc\.pem: "):
        read_pem_or_der(data, "enc.pem")


def test_base64_starting_with_a_slash_is_not_mistaken_for_curls_spelling() -> None:
    """base64 may begin with "/": `sha256//+to…` is a 44-character digest, not curl's `//`."""
    digest = bytes.fromhex("ff" * 3) + bytes(29)
    encoded = base64.b64encode(digest).decode()
    assert encoded.startswith("/")
    assert parse_pin(f"sha256/{encoded}") == Pin(PinKind.SPKI, digest)
    assert parse_pin(f"sha256//{encoded}") == Pin(PinKind.SPKI, digest)  # curl's spelling


def test_a_45_character_body_not_starting_with_a_slash_is_not_curls_spelling() -> None:
    """`sha256/A<44 base64>`: only a leading "/" makes a 45-character body curl's `//`; any
    other first character must not be dropped to leave a valid 44-character pin."""
    encoded = base64.b64encode(bytes(range(32))).decode()
    with pytest.raises(PinError, match=r"^pin 'sha256/A"):
        parse_pin(f"sha256/A{encoded}")
    assert parse_pin(f"sha256//{encoded}") == Pin(PinKind.SPKI, bytes(range(32)))  # twin


@pytest.mark.parametrize("text", ['pin-sha256="LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=',
                                  'pin-sha256=LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="'])
def test_hpkp_spelling_needs_matching_quotes(text: str) -> None:
    with pytest.raises(PinError):
        parse_pin(text)
