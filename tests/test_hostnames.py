"""Tests of `pinproxy.hostnames`: one canonical spelling per host, and clear refusals.

A pinned name must compare equal however a client spells it; every accepted spelling below has
a rejected twin that differs in the one property under test.
"""

from __future__ import annotations

import pytest

from pinproxy.errors import HostnameError
from pinproxy.hostnames import is_ip_literal, normalize_host, parent_domains, parse_host_pattern

LABEL_63 = "a" * 63
LABEL_64 = "a" * 64
NAME_253 = ".".join(["a" * 49] * 5) + ".abc"  # 5 * 50 + 3 = 253 characters
assert len(NAME_253) == 253


def _id(value: object) -> str:
    """A quoted test id in printable ASCII without backslashes: pytest escapes any other id, and
    mutmut, which hands node ids back to pytest, then finds no such test."""
    text = "".join(c if c.isascii() and c.isprintable() and c != "\\" else f"U+{ord(c):04X}"
                   for c in str(value))
    return f"'{text}'"


@pytest.mark.parametrize(("name", "canonical"), [
    ("example.com", "example.com"),
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("EXAMPLE.com.", "example.com"),
    ("  example.com  ", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("bücher.example.", "xn--bcher-kva.example"),
    ("bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop is a dot in IDNA
    # UTS #46 maps full-width letters (and the full-width dot) to ASCII, as browsers do
    ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "example.com"),
    ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0ecom", "example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("_acme-challenge.example", "_acme-challenge.example"),
    ("a-b.example", "a-b.example"),
    (f"{LABEL_63}.example", f"{LABEL_63}.example"),
    (NAME_253, NAME_253),
    ("localhost", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
    ("[127.0.0.1]", "127.0.0.1"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("[2001:db8::0:1]", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
], ids=_id)
def test_normalize_host(name: str, canonical: str) -> None:
    assert normalize_host(name) == canonical
    assert normalize_host(canonical) == canonical  # idempotent


@pytest.mark.parametrize("name", [
    "",
    ".",
    " ",
    "exa mple.com",
    "example.com ..",
    f"{LABEL_64}.example",
    f"bü{LABEL_64}.example",
    NAME_253 + "d",
    "-bad.example",
    "bad-.example",
    "a..b",
    ".example.com",
    "example.com..",
    "example.com:443",
    "user@example.com",
    "example.com/path",
    "*.example.com",
    "[::1",
    "2001:db8::1::2",
    "a\n.example",
    "exa\x00mple.com",
], ids=_id)
def test_normalize_host_rejects_and_names_the_host(name: str) -> None:
    with pytest.raises(HostnameError) as e:
        normalize_host(name)
    assert repr(name) in str(e.value)


@pytest.mark.parametrize(("host", "is_ip"), [
    ("127.0.0.1", True),
    ("10.1.2.3", True),
    ("::1", True),
    ("2001:db8::1", True),
    ("example.com", False),
    ("1.example", False),
    ("example.123", False),
    ("[::1]", False),  # is_ip_literal takes normalised hosts only
    ("", False),
])
def test_is_ip_literal(host: str, is_ip: bool) -> None:
    assert is_ip_literal(host) is is_ip


@pytest.mark.parametrize(("host", "parents"), [
    ("a.b.example.com", ["b.example.com", "example.com", "com"]),
    ("example.com", ["com"]),
    ("com", []),
])
def test_parent_domains_are_strict_and_nearest_first(host: str, parents: list[str]) -> None:
    assert parent_domains(host) == parents
    assert host not in parent_domains(host)


@pytest.mark.parametrize(("raw", "expected"), [
    ("faß.de", "xn--fa-hia.de"),                # IDNA 2008, as curl and browsers send it
    ("[::ffff:1.2.3.4]", "1.2.3.4"),            # IPv4-mapped IPv6 is the IPv4 address
    ("::ffff:1.2.3.4", "1.2.3.4"),
])
def test_normalize_host_matches_what_clients_send(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize("raw", ["127.1", "010.0.0.1", "0x7f.0.0.1", "[example.com]", "1.2.3"])
def test_normalize_host_refuses_ambiguous_addresses(raw: str) -> None:
    """Resolvers read 127.1 as 127.0.0.1: as a "name" it would dodge an IP rule."""
    with pytest.raises(HostnameError):
        normalize_host(raw)


@pytest.mark.parametrize(("text", "include_subdomains", "pattern"), [
    ("Example.COM.", False, "example.com"),
    ("example.com", True, "example.com"),
    ("*.Example.COM", False, "*.example.com"),
    ("*.example.com", True, "*.example.com"),
    ("*.bücher.example", False, "*.xn--bcher-kva.example"),
    ("[::1]", False, "::1"),
    ("10.0.0.1", False, "10.0.0.1"),  # an address takes an exact rule
    ("1.0.0.1", False, "1.0.0.1"),
    ("0.example", True, "0.example"),  # a name may start with a digit
], ids=_id)
def test_parse_host_pattern_normalises_names_wildcards_and_addresses(
        text: str, include_subdomains: bool, pattern: str) -> None:
    assert parse_host_pattern(text, include_subdomains) == pattern


def test_parse_host_pattern_takes_an_address_without_include_subdomains_by_default() -> None:
    assert parse_host_pattern("10.0.0.1") == "10.0.0.1"
    assert parse_host_pattern("2001:db8::1") == "2001:db8::1"


STAR = "'*' is allowed only as a whole leftmost label, as in '*.example.com'"
ADDRESS = "is an IP address: it takes neither '*.' nor include_subdomains"


@pytest.mark.parametrize(("text", "include_subdomains", "message"), [
    ("*example.com", False, f"host '*example.com': {STAR}"),
    ("a.*.example.com", False, f"host 'a.*.example.com': {STAR}"),
    ("*.*.example.com", False, f"host '*.*.example.com': {STAR}"),
    ("*", False, f"host '*': {STAR}"),
    ("*.10.0.0.1", False, f"host '*.10.0.0.1' {ADDRESS}"),
    ("*.::1", False, f"host '*.::1' {ADDRESS}"),
    ("10.0.0.1", True, f"host '10.0.0.1' {ADDRESS}"),
    ("[2001:db8::1]", True, f"host '[2001:db8::1]' {ADDRESS}"),
    ("*.", False, "host '' is not a valid host name or IP address"),
    ("exa mple.com", False, "host 'exa mple.com' is not a valid host name or IP address"),
    ("127.1", False,
     "host '127.1' is neither a DNS name nor an IP address in dotted-quad form"),
    ("[example.com]", False, "host '[example.com]': only IPv6 addresses go in brackets"),
    ("*.[10.0.0.1]", False, f"host '*.[10.0.0.1]' {ADDRESS}"),
], ids=_id)
def test_parse_host_pattern_refuses_and_says_why(
        text: str, include_subdomains: bool, message: str) -> None:
    """The pinset loader's host check: one line that quotes the host and says what is wrong."""
    with pytest.raises(HostnameError) as e:
        parse_host_pattern(text, include_subdomains)
    assert str(e.value) == message
