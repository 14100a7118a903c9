"""pyOpenSSL at the boundary: its certificates as pins, and the two OpenSSL calls it has no
public API for (mitmproxy uses both)."""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL, crypto

from pinproxy.pins import CertificatePins, certificate_pins

_ffi = SSL._ffi  # type: ignore[attr-defined]
_lib = SSL._lib  # type: ignore[attr-defined]


def x509_pins(cert: crypto.X509) -> CertificatePins:
    """The (cached) pins of a certificate pyOpenSSL handed over."""
    return certificate_pins(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))


def verify_error_text(errno: int) -> str:
    """OpenSSL's words for a certificate verification error number."""
    return str(_ffi.string(_lib.X509_verify_cert_error_string(errno)).decode())


def expect_name(conn: SSL.Connection, name: str) -> None:
    """Send SNI for `name` and make OpenSSL verify the certificate against it."""
    param = _lib.SSL_get0_param(conn._ssl)
    try:
        ip = ipaddress.ip_address(name).packed
    except ValueError:
        encoded = name.encode("idna")
        conn.set_tlsext_host_name(encoded)
        _lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
    else:
        _lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
