"""Host name normalisation, shared by the pinset loader and the runtime checks.

A pinned name must compare equal however a client spells it: case, IDNA (Unicode or punycode),
a trailing dot, IPv6 brackets or zero compression. One function does it for both sides.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import idna

from pinproxy.errors import HostnameError, quote

__all__ = ["authority_host", "is_ip_literal", "normalize_host", "parent_domains",
           "parse_host_pattern"]

# An address starts with a digit, a bracket, or is IPv6 (has a colon); a DNS name that starts
# with a digit still goes through the parse and falls through to the name checks.
_LOOKS_LIKE_ADDRESS = re.compile(r"[\d\[]|.*:")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")


@lru_cache(maxsize=65536)
def normalize_host(name: str) -> str:
    """`_canonical_host`, cached: the proxy normalises the same few names on every connection.

    The body stays a plain function: mutmut does not mutate decorated ones, and the tests clear
    this cache between tests (tests/conftest.py) so each one really runs the canonicalisation.
    """
    return _canonical_host(name)


def _canonical_host(name: str) -> str:
    """Canonical form of a DNS name or IP literal; raises `HostnameError` when it is neither.

    Lowercase, IDNA 2008 A-labels (UTS 46 mapping, as curl and browsers send them), no trailing
    dot; IP literals in their compressed form, IPv4-mapped IPv6 as IPv4.
    """
    text = name.strip()
    if _LOOKS_LIKE_ADDRESS.match(text):  # skip the costly failed parse for ordinary names
        bracketed = text.startswith("[") and text.endswith("]")
        try:
            address = ipaddress.ip_address(text[1:-1] if bracketed else text)
        except ValueError:
            if bracketed:
                raise HostnameError(
                    f"host {quote(name)}: only IPv6 addresses go in brackets") from None
        else:
            mapped = getattr(address, "ipv4_mapped", None)
            return str(mapped or address)
    text = text.removesuffix(".").lower()
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise HostnameError(
                f"host {quote(name)} is not a valid internationalised name") from None
    if len(text) > 253 or not _NAME.fullmatch(text):
        raise HostnameError(f"host {quote(name)} is not a valid host name or IP address")
    if text.rpartition(".")[2].isdigit():  # 127.1, 010.0.0.1: resolvers read IPv4 addresses
        raise HostnameError(f"host {quote(name)} is neither a DNS name nor an IP address in "
                            "dotted-quad form")
    return text


def authority_host(authority: str) -> str:
    """The host part of a Host header or :authority, without port or IPv6 brackets."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    host, _, port = authority.rpartition(":")
    return host if host and port.isdigit() else authority


def is_ip_literal(host: str) -> bool:
    """True for a normalised IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parent_domains(host: str) -> list[str]:
    """Strict parents of a normalised DNS name, nearest first: a.b.c -> [b.c, c]."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


def parse_host_pattern(text: str, include_subdomains: bool = False) -> str:
    """A rule's host: a name, an IP literal, or `*.name`; normalised, or `HostnameError`."""
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if "*" in base:
        raise HostnameError(f"host {quote(text)}: '*' is allowed only as a whole leftmost label, "
                            "as in '*.example.com'")
    base = _canonical_host(base)  # not the cache: a pinset's names are read once
    # A canonical name never holds a colon nor ends in an all-digit label: an address does.
    if (wildcard or include_subdomains) and (":" in base or base.rpartition(".")[2].isdigit()):
        raise HostnameError(f"host {quote(text)} is an IP address: it takes neither '*.' "
                            "nor include_subdomains")
    return f"*.{base}" if wildcard else base
