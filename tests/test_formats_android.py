"""Tests of `pinproxy.formats.android`: network_security_config.xml <-> pinset.

The realistic file in tests/data/formats/ is read as Android reads it (inheritance, expiry that
stops at the start of the day, debug-overrides ignored); every rejected file has a twin that
differs only in the broken part and imports.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import pytest

from pinproxy.errors import FormatError
from pinproxy.formats import export_pinset, import_pins
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location, Mode, Pinset
from pinproxy.policy import Action, Reason, decide
from tests import certs

DATA = Path(__file__).parent / "data" / "formats"
NSC = DATA / "network_security_config.xml"
X1 = "sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="
X2 = "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="
DIGICERT = "sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E="
GLOBALSIGN = "sha256/K87oWBWM9UZfyddvDfoxL+8lpNyoUB2ptGtn0fv6G2Q="
GTS = "sha256/hxqRlPTu1bMS/0DITB1SSu0vd4u/8l8TjPgfaAp63Gc="
AMAZON = "sha256/++MBgDH5WGvL9Bcn5Be30cRcL0f5O+NyoXuWtQdX1aI="
HELLO = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="

Rule = tuple[str, frozenset[str], bool, date | None, Mode]


def summary(pinset_yaml: str) -> set[Rule]:
    """What a pinset says: host, pins, subdomains, expiry, mode (comments and order aside)."""
    pinset = parse_pinset(pinset_yaml)
    return {(r.host, frozenset(str(p) for p in r.pins), r.include_subdomains, r.expires, r.mode)
            for r in pinset.rules}


def nsc(body: str) -> bytes:
    """A network security config whose line 3 is the first line of `body`."""
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<network-security-config>\n'
            f"{textwrap.dedent(body).strip()}\n</network-security-config>\n").encode()


def pin_xml(pin: str) -> str:
    return f'<pin digest="SHA-256">{pin.removeprefix("sha256/")}</pin>'


EXPECTED = {
    ("shop.example.com", frozenset({X1, X2}), True, date(2027, 6, 29), Mode.ENFORCE),
    ("api.shop.example.com", frozenset({X1, X2}), False, date(2027, 6, 29), Mode.ENFORCE),
    # nested, no pin-set of its own: the parent's pins and expiration
    ("static.shop-cdn.example.net", frozenset({X1, X2}), True, date(2027, 6, 29), Mode.ENFORCE),
    # nested with its own pin-set: only its own pins, no expiration
    ("legacy.shop.example.com", frozenset({DIGICERT, GLOBALSIGN}), False, None, Mode.ENFORCE),
    ("old.legacy.shop.example.com", frozenset({DIGICERT, GLOBALSIGN}), False, None, Mode.ENFORCE),
    ("pay.example.org", frozenset({GTS, AMAZON}), False, date(2026, 12, 30), Mode.ENFORCE),
}


def test_realistic_config_imports_with_inheritance_expiry_and_every_notice() -> None:
    result = import_pins(NSC.read_bytes(), "nsc.xml")
    assert summary(result.text) == EXPECTED
    assert [str(n) for n in result.notices] == [
        "nsc.xml:50: note: 10.0.2.2 has no pins (its domain-config sets other things only): "
        "not imported",
        "nsc.xml:53: warning: <debug-overrides> apply only to debuggable builds, where they "
        "usually bypass pins; ignored",
    ]
    assert result.lossy  # the debug-overrides warning
    assert "# from nsc.xml:24" in result.text  # where each rule came from


def test_round_trip_keeps_hosts_pins_subdomains_and_expiry() -> None:
    first = import_pins(NSC.read_bytes(), "nsc.xml")
    exported = export_pinset(parse_pinset(first.text, "pins.yaml"), "android")
    assert not exported.lossy, exported.notices
    ET.fromstring(exported.text)  # well-formed
    again = import_pins(exported.text.encode(), "exported.xml")
    assert summary(again.text) == EXPECTED
    assert again.notices == ()


@pytest.mark.parametrize(("expiration", "last_day"), [
    ("2027-01-01", date(2026, 12, 31)),
    ("2024-03-01", date(2024, 2, 29)),
])
def test_expiration_day_is_the_first_day_without_pins(expiration: str, last_day: date) -> None:
    """Android compares now > midnight of the expiration date: that whole day is unpinned."""
    data = nsc(f"""
        <domain-config><domain>a.example</domain>
        <pin-set expiration="{expiration}">{pin_xml(X1)}</pin-set></domain-config>""")
    pinset = parse_pinset(import_pins(data, "nsc.xml").text)
    rule = pinset.rules[0]
    assert rule.expires == last_day
    assert not rule.expired(last_day)
    assert rule.expired(date.fromisoformat(expiration))
    assert f'<pin-set expiration="{expiration}">' in export_pinset(pinset, "android").text


def test_nested_pin_set_replaces_the_parents_instead_of_adding_to_it() -> None:
    data = nsc(f"""
        <domain-config><domain>a.example</domain>
          <pin-set>{pin_xml(X1)}</pin-set>
          <domain-config><domain>inherits.a.example</domain></domain-config>
          <domain-config><domain>own.a.example</domain><pin-set>{pin_xml(X2)}</pin-set>
          </domain-config>
        </domain-config>""")
    rules = {rule[0]: rule[1] for rule in summary(import_pins(data, "nsc.xml").text)}
    assert rules == {"a.example": {X1}, "inherits.a.example": {X1}, "own.a.example": {X2}}


@pytest.mark.parametrize(("anchors", "warned"), [
    ('<certificates src="@raw/corporate_ca" overridePins="true"/>', True),
    ('<certificates src="@raw/corporate_ca"/>', False),
])
def test_override_pins_anchor_inherited_from_base_config_is_reported(anchors: str,
                                                                     warned: bool) -> None:
    data = nsc(f"""
        <base-config><trust-anchors>{anchors}</trust-anchors></base-config>
        <domain-config><domain>a.example</domain><pin-set>{pin_xml(X1)}</pin-set></domain-config>
        """)
    result = import_pins(data, "nsc.xml")
    messages = [str(n) for n in result.notices]
    expected = ('nsc.xml:3: warning: overridePins="true" on <certificates src="@raw/corporate_ca">'
                ": Android skips the pins of a.example for chains anchored there; pinproxy "
                "enforces them for every chain")
    assert messages == ([expected] if warned else [])


def test_imported_subdomain_rule_enforces_any_pin_of_the_verified_chain() -> None:
    """includeSubdomains covers every depth, and a root pin passes the genuine chain only."""
    genuine, mis_issued = certs.pki("a"), certs.pki("b")
    data = nsc(f"""
        <domain-config><domain includeSubdomains="true">{certs.HOST}</domain>
        <pin-set>{pin_xml(str(genuine.chain[-1].spki))}</pin-set></domain-config>""")
    pinset = parse_pinset(import_pins(data, "nsc.xml").text)
    for name in (certs.HOST, f"deep.down.{certs.HOST}"):
        assert decide(pinset, [name], genuine.chain, date(2026, 1, 1)).action is Action.ALLOW
        refused = decide(pinset, [name], mis_issued.chain, date(2026, 1, 1))
        assert (refused.action, refused.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)


GOOD_DOMAIN = f'<domain-config><domain>a.example</domain><pin-set>{pin_xml(X1)}</pin-set>' \
              "</domain-config>"


@pytest.mark.parametrize(("broken", "message"), [
    ('<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>\n<network-security-config>'
     f"\n{GOOD_DOMAIN}\n</network-security-config>",
     "nsc.xml:1: a DOCTYPE is not accepted here (refused to guard against XML entity attacks); "
     "remove it"),
    (f"<network-security-config>\n{GOOD_DOMAIN}\n<domain-config>\n</network-security-config>",
     "nsc.xml:4: not well-formed XML: mismatched tag"),
    (f"<network-security-config>\n{GOOD_DOMAIN.replace(X1[7:], HELLO[:40] + '=')}\n"
     "</network-security-config>",
     f"nsc.xml:2: pin 'sha256/{HELLO[:40]}=' is not base64 of a 32-byte SHA-256 digest"),
    (f"<network-security-config>\n{GOOD_DOMAIN.replace('SHA-256', 'SHA-1')}\n"
     "</network-security-config>",
     "nsc.xml:2: pin digest 'SHA-1' is not supported: Android accepts only digest=\"SHA-256\""),
    (f"<network-security-config>\n{GOOD_DOMAIN}\n{GOOD_DOMAIN}\n</network-security-config>",
     "nsc.xml:3: domain 'a.example' is already given at line 2 (Android rejects duplicates)"),
    ("<network-security-config>\n"
     f"{GOOD_DOMAIN.replace('<pin-set>', '<pin-set expiration="2027-13-01">')}\n"
     "</network-security-config>",
     "nsc.xml:2: pin-set expiration '2027-13-01' is not a date written yyyy-MM-dd"),
    ("<network-security-config>\n<base-config>\n<pin-set/>\n</base-config>\n"
     f"{GOOD_DOMAIN}\n</network-security-config>",
     "nsc.xml:3: <pin-set> is not allowed in <base-config> (Android rejects it)"),
    (f"<network-security-config>\n{GOOD_DOMAIN.replace('<domain>a.example</domain>', '')}\n"
     "</network-security-config>",
     "nsc.xml:2: <domain-config> has no <domain> (Android rejects it)"),
    (f"<manifest>\n{GOOD_DOMAIN}\n</manifest>",
     "nsc.xml:1: the root element is <manifest>, not <network-security-config>: not an Android "
     "network security config"),
])
def test_rejected_config_names_its_line_and_the_fixed_twin_imports(broken: str,
                                                                   message: str) -> None:
    with pytest.raises(FormatError) as raised:
        import_pins(broken.encode(), "nsc.xml", "android")
    assert str(raised.value) == message
    fixed = f"<network-security-config>\n{GOOD_DOMAIN}\n</network-security-config>"
    assert summary(import_pins(fixed.encode(), "nsc.xml", "android").text) == {
        ("a.example", frozenset({X1}), False, None, Mode.ENFORCE)}


def test_entity_expansion_bomb_is_refused_even_where_a_doctype_is_allowed() -> None:
    """The iOS reader accepts a bare DOCTYPE; an internal subset with entities is refused."""
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE plist [\n<!ENTITY a "aaaaaaaaaa">\n'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n]>\n<plist><dict/></plist>\n')
    with pytest.raises(FormatError, match=r"^Info\.plist:\d: a DOCTYPE is not accepted here"):
        import_pins(bomb.encode(), "Info.plist", "ios")


def pinset(text: str) -> Pinset:
    return parse_pinset(textwrap.dedent(text), "pins.yaml")


def test_export_widens_a_lone_wildcard_and_reports_it() -> None:
    exported = export_pinset(pinset(f"""\
        version: 1
        hosts:
          - host: "*.internal.example"
            pins: ["{X1}"]
        """), "android")
    root = ET.fromstring(exported.text)
    domain = root.find("domain-config/domain")
    assert domain is not None and domain.text == "internal.example"
    assert domain.get("includeSubdomains") == "true"
    assert [str(n) for n in exported.notices] == [
        'pins.yaml:3: warning: *.internal.example: Android has no one-label wildcard; exported '
        'as internal.example with includeSubdomains="true", which also pins internal.example '
        "itself and names more than one label below it"]


def test_export_leaves_out_what_android_cannot_express_and_says_so() -> None:
    cert_pin = "cert-sha256/" + HELLO
    exported = export_pinset(pinset(f"""\
        version: 1
        hosts:
          - host: internal.example
            pins: ["{X1}"]
          - host: "*.internal.example"
            pins: ["{X2}"]
          - host: report.example
            mode: report
            pins: ["{X1}"]
          - host: mixed.example
            pins: ["{X1}", "{cert_pin}"]
          - host: certonly.example
            pins: ["{cert_pin}"]
        """), "android")
    root = ET.fromstring(exported.text)
    domains = {config.findtext("domain"): [p.text for p in config.iter("pin")]
               for config in root.iter("domain-config")}
    assert domains == {"internal.example": [X1[7:]], "mixed.example": [X1[7:]]}
    assert [(n.location, n.lossy) for n in exported.notices] == [
        (Location("pins.yaml", 5), True), (Location("pins.yaml", 7), True),
        (Location("pins.yaml", 10), True), (Location("pins.yaml", 12), True),
        (Location("pins.yaml", 12), True)]
    assert "cannot be expressed in Android" in exported.notices[2].message
