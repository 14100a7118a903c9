"""The proxy CA pinproxy makes: ECDSA P-256, private key 0600, and one mitmproxy can use."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from mitmproxy import certs

from pinproxy.errors import PinproxyError
from pinproxy.proxy.ca import CA_CERT_FILE, CA_KEY_FILE, ensure_ca


def test_a_new_ca_is_ecdsa_with_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    confdir = ensure_ca(str(tmp_path / "conf"))
    assert stat.S_IMODE((confdir / CA_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(confdir.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate((confdir / CA_CERT_FILE).read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_mitmproxy_mints_certificates_with_it(tmp_path: Path) -> None:
    confdir = ensure_ca(str(tmp_path / "conf"))
    store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    entry = store.get_cert("api.example", [x509.DNSName("api.example")])
    leaf = entry.cert.to_cryptography()
    ca = x509.load_pem_x509_certificate((confdir / CA_CERT_FILE).read_bytes())
    leaf.verify_directly_issued_by(ca)  # raises if the CA did not sign it


def test_an_existing_ca_is_kept(tmp_path: Path) -> None:
    """Clients already trust it: replacing it would break them."""
    confdir = tmp_path / "conf"
    certs.CertStore.from_store(confdir, "mitmproxy", 2048)  # mitmproxy's own RSA CA
    before = (confdir / CA_KEY_FILE).read_bytes()
    ensure_ca(str(confdir))
    assert (confdir / CA_KEY_FILE).read_bytes() == before


def test_an_unusable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PinproxyError, match=r"^--confdir .*file/conf: "):
        ensure_ca(str(blocker / "conf"))
