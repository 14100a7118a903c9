"""pyOpenSSL at the boundary: its certificates as pins, and the OpenSSL calls it has no public
API for, in one place.

pyOpenSSL exposes no verify-error text and no host-name verification on a client connection,
so these go through its private cffi bindings `SSL._lib` / `SSL._ffi` and a connection's
`_ssl` pointer, as mitmproxy's own `tlsconfig` does. Checked against pyOpenSSL 26.4.0 (with
OpenSSL 4.0). `check()` (run by `build_master`, and before the live probe names a host) raises
a `PinproxyError` naming what is missing, instead of a probe or a refusal failing obscurely.

`HOSTFLAGS` are the host-name check flags mitmproxy's `tlsconfig` sets upstream (no partial
wildcards, never the subject CN), spelled here as it spells them rather than imported: importing
mitmproxy would make every `pin` and `check --live` start several times slower. `expect_name`
sets them, so the probe accepts exactly the names the proxy does; tests/test_probe.py checks
the two stay equal.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL, crypto

from pinproxy.errors import PinproxyError
from pinproxy.pins import CertificatePins, certificate_pins

__all__ = ["HOSTFLAGS", "check", "expect_name", "verify_error_text", "x509_pins"]

CHECKED_VERSION = "26.4.0"

_FUNCTIONS = ("X509_verify_cert_error_string", "SSL_get0_param", "X509_VERIFY_PARAM_set1_host",
              "X509_VERIFY_PARAM_set1_ip", "X509_VERIFY_PARAM_set_hostflags",
              "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS")

_ffi: Any = getattr(SSL, "_ffi", None)
_lib: Any = getattr(SSL, "_lib", None)
_supported = False  # set once `check` passed on the real module
HOSTFLAGS: int = (getattr(_lib, "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS", 0)
                  | getattr(_lib, "X509_CHECK_FLAG_NEVER_CHECK_SUBJECT", 0))


def check(ssl: Any = SSL) -> None:
    """Raise `PinproxyError` if pyOpenSSL lost a private name used here (`ssl`: tests pass a
    stand-in for the module)."""
    global _supported
    if ssl is SSL and _supported:
        return
    lib, ffi = getattr(ssl, "_lib", None), getattr(ssl, "_ffi", None)
    missing = [f"SSL.{name}" for name, value in (("_lib", lib), ("_ffi", ffi)) if value is None]
    missing += [f"SSL._lib.{name}" for name in _FUNCTIONS
                if lib is not None and not hasattr(lib, name)]
    if ffi is not None and not hasattr(ffi, "string"):
        missing.append("SSL._ffi.string")
    if not hasattr(ssl.Connection(ssl.Context(ssl.TLS_CLIENT_METHOD)), "_ssl"):
        missing.append("SSL.Connection._ssl")
    if missing:
        import OpenSSL

        raise PinproxyError(
            f"pyOpenSSL {OpenSSL.__version__} is not supported: {', '.join(missing)} is gone "
            f"(pinproxy uses it and was checked against pyOpenSSL {CHECKED_VERSION})")
    _supported = _supported or ssl is SSL


def x509_pins(cert: crypto.X509) -> CertificatePins:
    """The (cached) pins of a certificate pyOpenSSL handed over."""
    return certificate_pins(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))


def verify_error_text(errno: int) -> str:
    """OpenSSL's words for a certificate verification error number."""
    return str(_ffi.string(_lib.X509_verify_cert_error_string(errno)).decode())


def expect_name(conn: SSL.Connection, name: str, hostflags: int = HOSTFLAGS) -> None:
    """Send SNI for `name` and make OpenSSL verify the certificate against it, with `hostflags`
    (by default the proxy's)."""
    check()
    param = _lib.SSL_get0_param(conn._ssl)
    _lib.X509_VERIFY_PARAM_set_hostflags(param, hostflags)
    try:
        ip = ipaddress.ip_address(name).packed
    except ValueError:
        encoded = name.encode("idna")
        conn.set_tlsext_host_name(encoded)
        _lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
    else:
        _lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
