"""Tests of `pinproxy.tools.lint`: each finding with its twin that must stay silent.

Pins are real keys from trustme (tests/certs.py), so a "missing backup" is about real keys;
the well-known placeholders are the ones the lint must see through.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from pinproxy.loader import parse_pinset
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.tools.lint import (
    CODES,
    EXPIRY_WARNING_DAYS,
    STALE_WARNING_DAYS,
    Finding,
    Severity,
    lint,
    mixed_scripts,
    protects_nothing,
)
from tests import certs

TODAY = date(2027, 6, 1)
ROOT, INTER, LEAF = (cert.spki for cert in certs.pki("lint").chain)
OTHER_ROOT, OTHER_INTER, _ = (cert.spki for cert in certs.pki("lint-other").chain)
LEAF_CERT = certs.pki("lint").chain[0].certificate
SECOND_LEAF_CERT = certs.pki("lint").second_chain[0].certificate
HELLO = Pin(PinKind.SPKI, hashlib.sha256(b"hello").digest())
EMPTY = Pin(PinKind.SPKI, hashlib.sha256(b"").digest())
ZERO = Pin(PinKind.SPKI, bytes(32))
GOOD = (ROOT, INTER)
OTHER = (OTHER_ROOT, OTHER_INTER)


def rule(host: str, *pins: Pin, line: int = 1, include: bool = False,
         expires: date | None = None, mode: Mode = Mode.ENFORCE) -> HostRule:
    return HostRule(host=host, pins=tuple(pins or GOOD), location=Location("p.yaml", line),
                    include_subdomains=include, mode=mode, expires=expires)


def pinset(*rules: HostRule) -> Pinset:
    numbered = [HostRule(r.host, r.pins, Location("p.yaml", 10 * (i + 1)), r.include_subdomains,
                         r.mode, r.expires) for i, r in enumerate(rules)]
    return Pinset(rules=tuple(numbered), source="p.yaml")


def codes(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return [(f.code, f.host) for f in findings]


def only(findings: list[Finding], code: str) -> Finding:
    [found] = [f for f in findings if f.code == code]
    return found


# -- a clean pinset ------------------------------------------------------------------------

def test_a_careful_pinset_has_no_findings() -> None:
    clean = pinset(rule("api.example.com"), rule("*.cdn.example.com", *OTHER),
                   rule("bank.example", include=True, expires=TODAY + timedelta(days=365)),
                   rule("192.0.2.10", *OTHER))
    assert lint(clean, TODAY) == []


def test_finding_keeps_its_shape_and_one_line_form() -> None:
    """`pinproxy.tools.live` builds findings too: fields and `str` are a contract."""
    finding = Finding(Severity.WARNING, "expired", "api.example: expired",
                      Location("p.yaml", 3), "api.example")
    assert str(finding) == "p.yaml:3: warning: api.example: expired [expired]"
    assert str(Finding(Severity.ERROR, "x", "m")) == "-: error: m [x]"


# -- backups -------------------------------------------------------------------------------

def test_one_pin_is_no_backup() -> None:
    found = only(lint(pinset(rule("api.example.com", ROOT)), TODAY), "missing-backup-pin")
    assert found.severity is Severity.WARNING
    assert found.location == Location("p.yaml", 10)
    assert found.host == "api.example.com"
    assert "only one pin can match" in found.message
    assert "pinproxy backup-key" in found.message
    assert lint(pinset(rule("api.example.com", ROOT, OTHER_ROOT)), TODAY) == []


def test_two_spellings_of_one_pin_are_one_pin() -> None:
    b64 = base64.b64encode(ROOT.digest).decode()
    loaded = parse_pinset(textwrap.dedent(f"""\
        version: 1
        hosts:
          - host: api.example.com
            pins: ["sha256/{b64}", 'pin-sha256="{b64}"']
    """))
    assert codes(lint(loaded, TODAY)) == [("missing-backup-pin", "api.example.com")]


@pytest.mark.parametrize(("placeholder", "named"), [
    (HELLO, 'SHA-256 of "hello"'), (EMPTY, 'SHA-256 of ""'), (ZERO, "all-zero digest")])
def test_a_placeholder_is_no_backup(placeholder: Pin, named: str) -> None:
    found = only(lint(pinset(rule("api.example.com", ROOT, placeholder)), TODAY),
                 "missing-backup-pin")
    assert f"'{placeholder}' ({named}) matches no key" in found.message


def test_placeholders_only_match_nothing() -> None:
    found = only(lint(pinset(rule("api.example.com", HELLO, ZERO)), TODAY), "missing-backup-pin")
    assert "no pin can match a real key" in found.message


def test_whole_certificate_pins_break_at_renewal() -> None:
    findings = lint(pinset(rule("api.example.com", LEAF_CERT, SECOND_LEAF_CERT)), TODAY)
    assert codes(findings) == [("certificate-pins-only", "api.example.com")]
    assert "changes at every renewal" in findings[0].message
    assert lint(pinset(rule("api.example.com", LEAF_CERT, ROOT)), TODAY) == []


# -- expiry --------------------------------------------------------------------------------

@pytest.mark.parametrize(("days_left", "expected"), [
    (EXPIRY_WARNING_DAYS + 1, []),
    (EXPIRY_WARNING_DAYS, ["expires-soon"]),
    (1, ["expires-soon"]),
    (0, ["expires-soon"]),  # the last enforced day is still enforced
    (-1, ["protects-nothing", "expired"]),  # the only rule: nothing is enforced any more
])
def test_expiry(days_left: int, expected: list[str]) -> None:
    last_day = TODAY + timedelta(days=days_left)
    findings = lint(pinset(rule("api.example.com", expires=last_day)), TODAY)
    assert [f.code for f in findings] == expected
    if days_left == 0:
        assert f"last enforced day is {last_day.isoformat()} (today)" in findings[0].message
    if days_left == EXPIRY_WARNING_DAYS:
        assert f"(in {EXPIRY_WARNING_DAYS} days)" in findings[0].message
    if days_left < 0:
        assert f"expired after {last_day.isoformat()}" in findings[1].message


def test_expiry_follows_the_day_asked_for() -> None:
    rules = pinset(rule("api.example.com", expires=date(2027, 12, 31)))
    assert lint(rules, date(2027, 11, 30)) == []
    assert [f.code for f in lint(rules, date(2027, 12, 1))] == ["expires-soon"]
    assert [f.code for f in lint(rules, date(2028, 1, 1))] == ["protects-nothing", "expired"]


# -- overlapping, redundant and shadowed rules ---------------------------------------------

def test_exact_host_under_a_wildcard_with_other_pins() -> None:
    rules = pinset(rule("*.example.com", *OTHER), rule("api.example.com"))
    found = only(lint(rules, TODAY), "overlapping-rules")
    assert found.host == "api.example.com"
    assert found.location == Location("p.yaml", 20)
    assert "also covered by '*.example.com' at p.yaml:10, with different pins" in found.message
    assert "this rule takes precedence" in found.message
    # ... and that is what the proxy does:
    assert next(rules.candidates("api.example.com")).host == "api.example.com"
    assert len(lint(rules, TODAY)) == 1  # reported once, from the winning rule


def test_exact_host_under_include_subdomains_with_other_pins() -> None:
    rules = pinset(rule("example.com", *OTHER, include=True), rule("api.example.com"))
    assert codes(lint(rules, TODAY)) == [("overlapping-rules", "api.example.com")]


def test_wildcard_over_include_subdomains_says_which_names_it_takes() -> None:
    rules = pinset(rule("example.com", *OTHER, include=True), rule("*.example.com"))
    found = only(lint(rules, TODAY), "overlapping-rules")
    assert found.host == "*.example.com"
    assert found.message.startswith(
        "*.example.com: the names one label below example.com are also covered by "
        "'example.com' (include_subdomains) at p.yaml:10, with different pins")


def test_nested_include_subdomains_rules_overlap() -> None:
    rules = pinset(rule("example.com", *OTHER, include=True),
                   rule("api.example.com", include=True))
    found = only(lint(rules, TODAY), "overlapping-rules")
    assert found.host == "api.example.com"
    assert "api.example.com and the names below api.example.com are also covered" in (
        found.message)


def test_only_the_next_rule_in_precedence_is_compared() -> None:
    rules = pinset(rule("example.com", GOOD[0], OTHER[0], include=True),
                   rule("*.example.com", *OTHER), rule("api.example.com"))
    assert codes(lint(rules, TODAY)) == [("overlapping-rules", "*.example.com"),
                                         ("overlapping-rules", "api.example.com")]
    assert "'*.example.com' at p.yaml:20" in lint(rules, TODAY)[1].message


def test_expired_rules_decide_nothing_so_they_overlap_nothing() -> None:
    gone = TODAY - timedelta(days=1)
    rules = pinset(rule("*.example.com", *OTHER, expires=gone), rule("api.example.com"),
                   rule("*.example.org"), rule("api.example.org", *OTHER, expires=gone))
    assert codes(lint(rules, TODAY)) == [("expired", "*.example.com"),
                                         ("expired", "api.example.org")]
    assert codes(lint(rules, gone)) == [("expires-soon", "*.example.com"),
                                        ("overlapping-rules", "api.example.com"),
                                        ("expires-soon", "api.example.org"),
                                        ("overlapping-rules", "api.example.org")]


def test_unrelated_rules_do_not_overlap() -> None:
    rules = pinset(rule("example.com", *OTHER), rule("api.example.com"),
                   rule("*.example.org", *OTHER), rule("a.b.example.org"))
    assert lint(rules, TODAY) == []  # exact example.com covers no subdomain; *. is one label


def test_a_rule_that_changes_nothing_is_redundant() -> None:
    rules = pinset(rule("*.example.com"), rule("api.example.com"))
    found = only(lint(rules, TODAY), "redundant-rule")
    assert found.host == "api.example.com"
    assert "'*.example.com' at p.yaml:10 would decide the same names the same way" in (
        found.message)


@pytest.mark.parametrize("narrower", [
    rule("api.example.com", mode=Mode.REPORT),
    rule("api.example.com", expires=TODAY + timedelta(days=100)),
])
def test_same_pins_but_another_mode_or_expiry_is_not_redundant(narrower: HostRule) -> None:
    assert lint(pinset(rule("*.example.com"), narrower), TODAY) == []


def test_include_subdomains_under_a_wildcard_include_never_applies() -> None:
    rules = pinset(rule("a.example.org", include=True), rule("*.a.example.org", *OTHER,
                                                              include=True))
    found = only(lint(rules, TODAY), "shadowed-rule")
    assert found.host == "a.example.org"
    assert "this rule's include_subdomains never applies" in found.message
    assert "'*.a.example.org' (include_subdomains) at p.yaml:20" in found.message
    assert next(rules.candidates("x.y.a.example.org")).host == "*.a.example.org"


def test_a_one_label_wildcard_does_not_shadow_deeper_names() -> None:
    rules = pinset(rule("a.example.org", include=True), rule("*.a.example.org", *OTHER))
    assert codes(lint(rules, TODAY)) == [("overlapping-rules", "*.a.example.org")]
    assert next(rules.candidates("x.y.a.example.org")).host == "a.example.org"


def test_a_second_rule_for_one_host_never_applies() -> None:
    """The loader refuses this; a `Pinset` built in code can still contain it."""
    found = only(lint(pinset(rule("api.example.com"), rule("api.example.com", *OTHER)), TODAY),
                 "shadowed-rule")
    assert found.location == Location("p.yaml", 10)
    assert "this rule never applies" in found.message


# -- public suffixes -----------------------------------------------------------------------

@pytest.mark.parametrize(("host", "include"), [
    ("*.co.uk", False), ("com", True), ("*.com", True), ("*.github.io", False),
    ("xn--p1ai", True),  # .рф, an IDNA TLD
    # on the list since 2021 (Cloudflare Pages), after publicsuffix2's December 2019 copy
    ("*.pages.dev", False), ("pages.dev", True),
    ("*.deno.dev", False),  # private section, added 2022
])
def test_patterns_on_a_public_suffix(host: str, include: bool) -> None:
    found = only(lint(pinset(rule(host, include=include)), TODAY), "public-suffix")
    assert found.host == host
    assert "is a public suffix" in found.message


@pytest.mark.parametrize(("host", "include"), [
    ("example.co.uk", True), ("*.example.co.uk", False), ("co.uk", False), ("com", False),
    ("corp", True),  # not on the list: an internal TLD is the operator's own
    ("*.pinned.test", False),
    ("*.example.pages.dev", False), ("example.pages.dev", True),  # below the newer suffix
    ("www.ck", True),  # the list's exception to its rule *.ck
])
def test_patterns_below_a_public_suffix_are_fine(host: str, include: bool) -> None:
    assert lint(pinset(rule(host, include=include)), TODAY) == []


def test_the_public_suffix_list_is_read_offline() -> None:
    """The suffix list package has an updater; the lint must never use it: network use fails."""
    script = textwrap.dedent("""
        import sys
        from datetime import date

        def refuse_network(event, args):
            if event.startswith(("socket.", "urllib.")):
                raise RuntimeError(f"network use: {event}")

        sys.addaudithook(refuse_network)
        from pinproxy.loader import parse_pinset
        from pinproxy.tools.lint import lint
        pinset = parse_pinset('''
        version: 1
        hosts:
          - host: "*.co.uk"
            pins: ["sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M=",
                   "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="]
        ''')
        print([f.code for f in lint(pinset, date(2027, 1, 1))])
        import socket
        socket.getaddrinfo("localhost", 443)  # the negative control: the hook does fire
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert done.stdout.strip() == "['public-suffix']", done.stderr
    assert "RuntimeError: network use: socket.getaddrinfo" in done.stderr


# -- every code, and the cost on a large pinset --------------------------------------------

@pytest.mark.parametrize(("top", "own", "expected"), [
    ("http://127.0.0.1:9/r", None, [("plaintext-report-uri", None)]),
    ("HTTP://localhost/r", None, [("plaintext-report-uri", None)]),
    (None, "http://[::1]:9/r", [("plaintext-report-uri", "one.example")]),
    ("https://c.example/r", "https://d.example/r", []),  # the twin: https is not flagged
    (None, None, []),
])
def test_a_plaintext_report_uri_is_a_warning(top: str | None, own: str | None,
                                             expected: list[tuple[str, str | None]]) -> None:
    one = replace(rule("one.example", *GOOD), report_uri=own)
    found = lint(replace(pinset(), rules=(one,), report_uri=top), TODAY)
    assert codes([f for f in found if f.code == "plaintext-report-uri"]) == expected
    for finding in found:
        if finding.code == "plaintext-report-uri":
            assert finding.severity is Severity.WARNING and "http://" in finding.message


def test_every_documented_code_can_be_reported() -> None:
    rules = pinset(
        rule("one.example", ROOT),
        rule("cert.example", LEAF_CERT, SECOND_LEAF_CERT),
        rule("soon.example", expires=TODAY),
        rule("gone.example", expires=TODAY - timedelta(days=1)),
        rule("*.example.com", *OTHER), rule("api.example.com"), rule("www.example.com", *OTHER),
        rule("a.example.org", include=True), rule("*.a.example.org", include=True),
        rule("*.co.uk"), rule("xn--pypal-4ve.com"),
    )
    rules = replace(rules, report_uri="http://127.0.0.1:9/r")
    stale = replace(rules, valid_until=datetime(2020, 1, 1, tzinfo=UTC))
    soon = replace(rules, valid_until=datetime(2027, 6, 2, tzinfo=UTC))
    found = {f.code for f in lint(rules, TODAY) + lint(stale, TODAY) + lint(soon, TODAY)}
    assert found | {"protects-nothing"} == set(CODES)
    assert {f.code for f in lint(pinset(), TODAY)} == {"protects-nothing"}


class CountingPinset(Pinset):
    """A `Pinset` that counts the index lookups the lint makes and the rules they yield."""

    calls: list[int]

    def candidates(self, host: str):  # type: ignore[no-untyped-def]
        found = list(super().candidates(host))
        self.calls.append(len(found))
        yield from found


def test_linting_100_000_rules_is_linear() -> None:
    """1 000 bases, each with an include_subdomains rule, a `*.` rule and 98 exact hosts.

    Every exact host overlaps its `*.` rule, which overlaps its include rule: a pairwise
    comparison would make 10^10 steps; the lint makes one or two index walks per rule, each
    yielding at most one rule per label.
    """
    rules: list[HostRule] = []
    for base in range(1000):
        domain = f"s{base}.example.com"
        rules.append(rule(domain, *OTHER, include=True))
        rules.append(rule(f"*.{domain}"))
        rules += [rule(f"h{i}.{domain}", *(OTHER if i % 2 else GOOD)) for i in range(98)]
    counted = CountingPinset(rules=tuple(rules), source="generated.yaml")
    object.__setattr__(counted, "calls", [])
    findings = lint(counted, TODAY)
    assert len(rules) == 100_000
    include_rules = 1000
    assert len(counted.calls) == len(rules) + include_rules  # include rules: two walks
    assert max(counted.calls) <= 3  # rule, its next, and at most one more
    assert sum(counted.calls) <= 3 * len(counted.calls)
    by_code = {code: sum(1 for f in findings if f.code == code) for code in CODES}
    assert by_code["overlapping-rules"] == 1000 + 1000 * 49  # each `*.`, odd exact hosts
    assert by_code["redundant-rule"] == 1000 * 49  # even exact hosts: same pins as `*.`
    assert sum(by_code.values()) == len(findings)


# -- a pinset that refuses nothing ---------------------------------------------------------

def test_no_rules_and_unpinned_allowed_protects_nothing() -> None:
    found = only(lint(Pinset(rules=(), source="p.yaml"), TODAY), "protects-nothing")
    assert found.location == Location("p.yaml")
    assert found.message == protects_nothing(Pinset(rules=(), source="p.yaml"))
    assert found.message.startswith("p.yaml: no host rules and 'unpinned: allow'")


def test_report_mode_rules_only_protect_nothing() -> None:
    reported = pinset(rule("api.example.com", mode=Mode.REPORT),
                      rule("www.example.com", mode=Mode.REPORT))
    assert "every rule is in report mode" in (protects_nothing(reported) or "")


def test_expired_rules_protect_nothing_on_the_day_asked_for() -> None:
    old = pinset(rule("api.example.com", expires=TODAY - timedelta(days=1)))
    assert "every rule has expired" in (protects_nothing(old, TODAY) or "")
    assert protects_nothing(old, TODAY - timedelta(days=1)) is None
    assert protects_nothing(old) is None  # no day: expiry is not judged


@pytest.mark.parametrize(("mode", "unpinned", "nothing"), [
    (Mode.ENFORCE, Unpinned.BLOCK, False),  # every unpinned host is refused
    (Mode.REPORT, Unpinned.BLOCK, True),  # ... only reported
    (Mode.ENFORCE, Unpinned.ALLOW, True),
])
def test_an_empty_pinset_that_blocks_unpinned_hosts_protects(
        mode: Mode, unpinned: Unpinned, nothing: bool) -> None:
    empty = Pinset(rules=(), source="p.yaml", mode=mode, unpinned=unpinned)
    assert (protects_nothing(empty) is not None) is nothing
    assert ("protects-nothing" in [f.code for f in lint(empty, TODAY)]) is nothing


def test_one_enforced_rule_among_reported_ones_protects() -> None:
    mixed = pinset(rule("api.example.com", mode=Mode.REPORT), rule("www.example.com"))
    assert protects_nothing(mixed) is None
    assert "protects-nothing" not in [f.code for f in lint(mixed, TODAY)]


# -- look-alike names ----------------------------------------------------------------------

@pytest.mark.parametrize(("host", "label", "scripts"), [
    ("p\u0430ypal.com", "'p\u0430ypal' (xn--pypal-4ve)", "Latin and Cyrillic"),  # U-label
    ("xn--pypal-4ve.com", "'p\u0430ypal' (xn--pypal-4ve)", "Latin and Cyrillic"),  # A-label
    ("*.\u03b1pple.com", "'\u03b1pple'", "Greek and Latin"),
    ("api.g\u043e\u043egle.example", "'g\u043e\u043egle'", "Latin and Cyrillic"),
])
def test_mixed_script_labels_are_named(host: str, label: str, scripts: str) -> None:
    loaded = parse_pinset(f'version: 1\nhosts:\n  - host: "{host}"\n'
                          f'    pins: ["{ROOT}", "{INTER}"]\n', source="p.yaml")
    found = only(lint(loaded, TODAY), "mixed-script")
    assert found.location == Location("p.yaml", 3)
    assert f"label {label.split(' ')[0]}" in found.message
    assert f"mixes {scripts} letters" in found.message


@pytest.mark.parametrize("host", [
    "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",  # пример.рф: Cyrillic only
    "b\u00fccher.example", "\u30c9\u30e1\u30a4\u30f3\u540d\u4f8b.jp",  # kana with kanji
    "paypal.com", "xn--e1afmkfd.xn--p1ai", "a1-b.example",
])
def test_single_script_labels_are_fine(host: str) -> None:
    loaded = parse_pinset(f'version: 1\nhosts:\n  - host: "{host}"\n'
                          f'    pins: ["{ROOT}", "{INTER}"]\n', source="p.yaml")
    assert lint(loaded, TODAY) == []


def test_mixed_scripts_reads_a_label() -> None:
    assert mixed_scripts("xn--pypal-4ve") == ("p\u0430ypal", ["Latin", "Cyrillic"])
    assert mixed_scripts("paypal") is None
    assert mixed_scripts("xn--zz") is None  # no valid A-label: the loader's business


# -- a signed pinset's valid_until ---------------------------------------------------------

NOW = datetime(2027, 6, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(("valid_until", "expected"), [
    (None, []),
    (NOW + timedelta(days=STALE_WARNING_DAYS, seconds=1), []),
    (NOW + timedelta(days=STALE_WARNING_DAYS), ["stale-soon"]),
    (NOW + timedelta(seconds=1), ["stale-soon"]),
    (NOW, ["stale-soon"]),  # the last valid instant
    (NOW - timedelta(seconds=1), ["stale"]),
])
def test_valid_until(valid_until: datetime | None, expected: list[str]) -> None:
    signed = Pinset(pinset(rule("api.example")).rules, "p.yaml", valid_until=valid_until)
    findings = [f for f in lint(signed, NOW.date(), NOW) if f.code.startswith("stale")]
    assert [f.code for f in findings] == expected
    for finding in findings:
        assert finding.location == Location("p.yaml") and finding.host is None
        assert valid_until is not None and valid_until.isoformat() in finding.message


def test_valid_until_without_a_time_judges_from_the_start_of_the_day() -> None:
    signed = Pinset((), "p.yaml", valid_until=datetime(2027, 6, 1, 6, tzinfo=UTC))
    assert "stale-soon" in {f.code for f in lint(signed, date(2027, 6, 1))}
    assert "stale" in {f.code for f in lint(signed, date(2027, 6, 2))}
