"""Tests of `pinproxy.pinset`: which rules cover a host, and in which order.

Precedence: an exact rule, then a `*.` wildcard (exactly one label, never the apex), then
`include_subdomains` rules, nearest base first. The matcher vectors come from OkHttp's tests
(reference section 3.4); every "covers" case has a "does not cover" twin.
"""

from __future__ import annotations

import hashlib
from datetime import date

import pytest

from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned

PIN = Pin(PinKind.SPKI, hashlib.sha256(b"hello").digest())


def rule(host: str, include_subdomains: bool = False, line: int = 1, **kwargs: object) -> HostRule:
    return HostRule(host=host, pins=(PIN,), location=Location("pins.yaml", line),
                    include_subdomains=include_subdomains, **kwargs)  # type: ignore[arg-type]


def hosts_of(pinset: Pinset, host: str) -> list[tuple[str, bool]]:
    return [(r.host, r.include_subdomains) for r in pinset.candidates(host)]


# -- OkHttp vectors ------------------------------------------------------------------------

WILDCARD = Pinset(rules=(rule("*.example.com"),), source="t")


@pytest.mark.parametrize(("host", "covered"), [
    ("a.example.com", True),
    ("xn--bcher-kva.example.com", True),
    ("example.com", False),                       # never the apex
    ("a.b.example.com", False),                   # exactly one label
    ("a.example.com.notexample.com", False),      # OkHttp issue #3324
    ("example.com.notexample.com", False),
    ("aexample.com", False),
    ("com", False),
])
def test_one_label_wildcard(host: str, covered: bool) -> None:
    assert WILDCARD.covers(host) is covered
    assert hosts_of(WILDCARD, host) == ([("*.example.com", False)] if covered else [])


SUBDOMAINS = Pinset(rules=(rule("example.co.uk", include_subdomains=True),), source="t")


@pytest.mark.parametrize(("host", "covered"), [
    ("example.co.uk", True),
    ("foo.example.co.uk", True),
    ("foo.bar.baz.example.co.uk", True),
    ("uk", False),
    ("co.uk", False),
    ("anotherexample.co.uk", False),
    ("foo.anotherexample.co.uk", False),
    ("example.co.uk.evil.example", False),
])
def test_include_subdomains_covers_the_base_and_every_depth_below(host: str,
                                                                  covered: bool) -> None:
    assert SUBDOMAINS.covers(host) is covered


def test_exact_rule_without_include_subdomains_covers_only_itself() -> None:
    pinset = Pinset(rules=(rule("example.co.uk"),), source="t")
    assert pinset.covers("example.co.uk")
    assert not pinset.covers("foo.example.co.uk")


WILDCARD_DEEP = Pinset(rules=(rule("*.example.com", include_subdomains=True),), source="t")


@pytest.mark.parametrize(("host", "covered"), [
    ("a.example.com", True),
    ("a.b.example.com", True),
    ("a.b.c.d.example.com", True),
    ("example.com", False),  # `*.` excludes the apex even with include_subdomains
    ("com", False),
    ("a.example.com.notexample.com", False),
])
def test_wildcard_with_include_subdomains_covers_every_depth_but_not_the_apex(
    host: str, covered: bool
) -> None:
    assert WILDCARD_DEEP.covers(host) is covered


# -- precedence ----------------------------------------------------------------------------

PRECEDENCE = Pinset(rules=(
    rule("example.com", include_subdomains=True, line=1),
    rule("*.example.com", line=2),
    rule("a.example.com", line=3),
    rule("b.example.com", include_subdomains=True, line=4),
), source="t")


@pytest.mark.parametrize(("host", "expected"), [
    # exact, then wildcard, then include_subdomains
    ("a.example.com", [("a.example.com", False), ("*.example.com", False),
                       ("example.com", True)]),
    # exact (with include_subdomains, listed once), then wildcard, then the parent
    ("b.example.com", [("b.example.com", True), ("*.example.com", False),
                       ("example.com", True)]),
    # no exact rule: wildcard first
    ("c.example.com", [("*.example.com", False), ("example.com", True)]),
    # nearest include_subdomains base first; the one-label wildcard does not reach here
    ("x.b.example.com", [("b.example.com", True), ("example.com", True)]),
    ("y.x.b.example.com", [("b.example.com", True), ("example.com", True)]),
    # the exact rule of a.example.com does not cover its children
    ("x.a.example.com", [("example.com", True)]),
    ("example.com", [("example.com", True)]),
    ("example.org", []),
])
def test_candidates_most_specific_first(host: str, expected: list[tuple[str, bool]]) -> None:
    assert hosts_of(PRECEDENCE, host) == expected


def test_wildcard_beats_include_subdomains_on_the_same_base() -> None:
    pinset = Pinset(rules=(rule("b.example.com", include_subdomains=True), rule("*.b.example.com")),
                    source="t")
    assert hosts_of(pinset, "a.b.example.com") == [("*.b.example.com", False),
                                                  ("b.example.com", True)]
    assert hosts_of(pinset, "z.a.b.example.com") == [("b.example.com", True)]


def test_expired_rules_are_still_candidates_and_still_cover() -> None:
    old = rule("a.example.com", expires=date(2000, 1, 1))
    pinset = Pinset(rules=(old, rule("example.com", include_subdomains=True)), source="t")
    assert next(pinset.candidates("a.example.com")) is old
    assert pinset.covers("a.example.com")
    assert old.expired(date(2000, 1, 2))
    assert not old.expired(date(2000, 1, 1))  # the expiry date is the last enforced day


# -- IP literals ---------------------------------------------------------------------------

IP_PINSET = Pinset(rules=(
    rule("10.0.0.1"),
    rule("::1"),
    # DNS-looking rules whose suffixes an IPv4 address shares; they must never match one
    rule("0.0.1", include_subdomains=True),
    rule("*.0.0.1"),
    rule("1", include_subdomains=True),
), source="t")


@pytest.mark.parametrize(("host", "expected"), [
    ("10.0.0.1", [("10.0.0.1", False)]),
    ("::1", [("::1", False)]),
    ("10.0.0.2", []),
    ("192.0.0.1", []),
    ("::2", []),
    # the second character is no digit: a lookup that tested host[1] for the shortcut, not
    # host[-1], would walk 1.0.0.1's "parents" into the rules above
    ("1.0.0.1", []), ("2.0.0.1", []),
    # the twin: the same suffix rules do cover DNS names
    ("x.0.0.1", [("*.0.0.1", False), ("0.0.1", True), ("1", True)]),
])
def test_ip_literals_match_exactly_and_have_no_parents(
    host: str, expected: list[tuple[str, bool]]
) -> None:
    assert hosts_of(IP_PINSET, host) == expected


# -- size ----------------------------------------------------------------------------------

def test_lookup_uses_the_index_not_the_rule_list_on_a_100000_rule_pinset() -> None:
    rules = [rule(f"h{i}.example") for i in range(50_000)]
    rules += [rule(f"*.w{i}.example") for i in range(25_000)]
    rules += [rule(f"s{i}.example", include_subdomains=True) for i in range(25_000)]
    pinset = Pinset(rules=tuple(rules), source="big", mode=Mode.ENFORCE,
                    unpinned=Unpinned.BLOCK)
    assert len(pinset.rules) == 100_000 and pinset.pin_count == 100_000
    # Lookups do not scan `rules`: with the list emptied after indexing, answers are unchanged.
    object.__setattr__(pinset, "rules", ())
    assert hosts_of(pinset, "h0.example") == [("h0.example", False)]
    assert hosts_of(pinset, "h49999.example") == [("h49999.example", False)]
    assert hosts_of(pinset, "x.w24999.example") == [("*.w24999.example", False)]
    assert hosts_of(pinset, "a.b.c.s12345.example") == [("s12345.example", True)]
    # twins
    assert hosts_of(pinset, "h50000.example") == []
    assert hosts_of(pinset, "w0.example") == []
    assert hosts_of(pinset, "x.h0.example") == []
    assert hosts_of(pinset, "s25000.example") == []
