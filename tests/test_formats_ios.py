"""Tests of `pinproxy.formats.ios`: Info.plist NSPinnedDomains <-> pinset.

Apple's NSIncludesSubdomains covers exactly one label, and its leaf + CA lists must BOTH match:
the tests check that the first maps exactly (checked with the real policy on real certificates)
and that the second is reported, never silently widened.
"""

from __future__ import annotations

import plistlib
import textwrap
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pinproxy.errors import FormatError
from pinproxy.formats import export_pinset, import_pins
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location, Mode
from pinproxy.policy import Action, Reason, decide
from tests import certs

DATA = Path(__file__).parent / "data" / "formats"
PLIST = DATA / "Info.plist"
X1 = "sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="
X2 = "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="
LEAF = "sha256/d6qzRu9zOECb90Uez27xWltNsj0e1Md7GkYYkVoZWmM="
NEXT_LEAF = "sha256/E9CZ9INDbd+2eRQozYqqbQ2yXLVKB9+xcprMF+44U1g="
HELLO = "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
DIGICERT = "sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E="

EXPECTED = {
    ("shop.example.com", frozenset({X1, X2}), False),
    ("*.shop.example.com", frozenset({X1, X2}), False),  # NSIncludesSubdomains: one label
    ("api.example.org", frozenset({LEAF, NEXT_LEAF}), False),
    ("pay.example.net", frozenset({HELLO, DIGICERT}), False),
}
BOTH_LISTS = ("pay.example.net has both NSPinnedLeafIdentities and NSPinnedCAIdentities, which "
              "Apple requires BOTH to match; a pinset accepts any one pin, so the import accepts "
              "a leaf pin alone or a CA pin alone")


def summary(pinset_yaml: str) -> set[tuple[str, frozenset[str], bool]]:
    pinset = parse_pinset(pinset_yaml)
    assert all(r.expires is None and r.mode is Mode.ENFORCE for r in pinset.rules)
    return {(r.host, frozenset(str(p) for p in r.pins), r.include_subdomains)
            for r in pinset.rules}


def plist_of(domains: dict[str, Any]) -> bytes:
    return plistlib.dumps({"NSAppTransportSecurity": {"NSPinnedDomains": domains}})


def identities(*pins: str) -> list[dict[str, str]]:
    return [{"SPKI-SHA256-BASE64": pin.removeprefix("sha256/")} for pin in pins]


def test_realistic_info_plist_imports_and_reports_the_and_of_both_lists() -> None:
    result = import_pins(PLIST.read_bytes(), "Info.plist")
    assert summary(result.text) == EXPECTED
    assert [str(n) for n in result.notices] == [f"Info.plist:58: warning: {BOTH_LISTS}"]
    assert '"sha256/d6qzRu9zOECb90Uez27xWltNsj0e1Md7GkYYkVoZWmM="  # leaf' in result.text


def test_binary_plist_imports_the_same_pins_without_line_numbers() -> None:
    binary = plistlib.dumps(plistlib.loads(PLIST.read_bytes()), fmt=plistlib.FMT_BINARY)
    result = import_pins(binary, "Info.plist")
    assert summary(result.text) == EXPECTED
    assert [str(n) for n in result.notices] == [f"Info.plist: warning: {BOTH_LISTS}"]


def test_round_trip_folds_the_one_label_rule_back_into_ns_includes_subdomains() -> None:
    first = import_pins(PLIST.read_bytes(), "Info.plist")
    exported = export_pinset(parse_pinset(first.text, "pins.yaml"), "ios")
    assert not exported.lossy, exported.notices
    domains = plistlib.loads(exported.text.encode())["NSAppTransportSecurity"]["NSPinnedDomains"]
    assert domains["shop.example.com"]["NSIncludesSubdomains"] is True
    assert "*.shop.example.com" not in domains
    assert domains["api.example.org"] == {
        "NSIncludesSubdomains": False,
        "NSPinnedCAIdentities": identities(NEXT_LEAF, LEAF)}  # sorted, as the pinset writes
    again = import_pins(exported.text.encode(), "exported.plist")
    assert summary(again.text) == EXPECTED
    assert again.notices == ()


def test_ns_includes_subdomains_pins_exactly_one_label_below() -> None:
    """Checked with the real policy: one label pinned, the apex pinned, two labels not."""
    genuine, mis_issued = certs.pki("a"), certs.pki("b")
    root = str(genuine.chain[-1].spki)
    data = plist_of({certs.HOST: {"NSIncludesSubdomains": True,
                                  "NSPinnedCAIdentities": identities(root)}})
    pinset = parse_pinset(import_pins(data, "Info.plist").text)
    today = date(2026, 1, 1)
    for name in (certs.HOST, f"www.{certs.HOST}"):
        assert decide(pinset, [name], genuine.chain, today).action is Action.ALLOW
        assert decide(pinset, [name], mis_issued.chain, today).action is Action.BLOCK
    deeper = decide(pinset, [f"a.b.{certs.HOST}"], mis_issued.chain, today)
    assert (deeper.action, deeper.reason) == (Action.ALLOW, Reason.NOT_PINNED)


def test_without_ns_includes_subdomains_only_the_domain_is_pinned() -> None:
    data = plist_of({"api.example": {"NSPinnedLeafIdentities": identities(LEAF)}})
    assert summary(import_pins(data, "Info.plist").text) == {
        ("api.example", frozenset({LEAF}), False)}


def test_export_reports_what_apple_cannot_express() -> None:
    pinset = parse_pinset(textwrap.dedent(f"""\
        version: 1
        hosts:
          - host: deep.example
            include_subdomains: true
            pins: ["{X1}"]
          - host: "*.wild.example"
            pins: ["{X2}"]
          - host: dated.example
            expires: 2027-01-31
            pins: ["{X1}"]
          - host: apex.example
            pins: ["{X1}"]
          - host: "*.apex.example"
            pins: ["{X2}"]
        """), "pins.yaml")
    exported = export_pinset(pinset, "ios")
    domains = plistlib.loads(exported.text.encode())["NSAppTransportSecurity"]["NSPinnedDomains"]
    assert {name: d["NSIncludesSubdomains"] for name, d in domains.items()} == {
        "deep.example": True, "wild.example": True, "dated.example": False,
        "apex.example": False}
    assert [(n.location, n.message) for n in exported.notices] == [
        (Location("pins.yaml", 3),
         "deep.example: the pinset pins names at every depth below deep.example, "
         "but NSIncludesSubdomains covers only one label: deeper names are not "
         "pinned on iOS"),
        (Location("pins.yaml", 6),
         "*.wild.example: iOS has no wildcard; exported as wild.example with "
         "NSIncludesSubdomains, which also pins wild.example itself"),
        (Location("pins.yaml", 8),
         "dated.example expires after 2027-01-31 in the pinset, but iOS pins "
         "never expire: the app keeps enforcing them"),
        (Location("pins.yaml", 13),
         "*.apex.example: iOS can pin names one label below apex.example only "
         "together with apex.example itself, which has its own rule with other "
         "pins: not exported"),
    ]
    assert all(n.lossy for n in exported.notices)


@pytest.mark.parametrize(("config", "message"), [
    ({"NSIncludesSubdomains": "YES", "NSPinnedCAIdentities": identities(X1)},
     "Info.plist: api.example: NSIncludesSubdomains must be a boolean"),
    ({"NSPinnedCAIdentities": [{"SPKI-SHA256-BASE64": "C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0w=="}]},
     "Info.plist: pin 'sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0w==' is not base64 of a "
     "32-byte SHA-256 digest"),
    ({"NSPinnedCAIdentities": [{"SPKI-SHA256": X1[7:]}]},
     "Info.plist: every NSPinnedCAIdentities item must be a dictionary with a "
     "SPKI-SHA256-BASE64 string"),
    ({"NSPinnedLeafIdentities": X1[7:]},
     "Info.plist: NSPinnedLeafIdentities must be an array of {SPKI-SHA256-BASE64: ...} "
     "dictionaries"),
])
def test_rejected_pinned_domain_and_its_fixed_twin(config: dict[str, Any], message: str) -> None:
    binary = plistlib.dumps({"NSAppTransportSecurity": {"NSPinnedDomains": {
        "api.example": config}}}, fmt=plistlib.FMT_BINARY)  # binary: no line to name
    with pytest.raises(FormatError) as raised:
        import_pins(binary, "Info.plist")
    assert str(raised.value) == message
    fixed = {"api.example": {"NSIncludesSubdomains": False,
                             "NSPinnedCAIdentities": identities(X1)}}
    assert summary(import_pins(plist_of(fixed), "Info.plist").text) == {
        ("api.example", frozenset({X1}), False)}


def test_xml_plist_error_names_the_line_of_the_domain() -> None:
    data = plist_of({"ok.example": {"NSPinnedCAIdentities": identities(X1)},
                     "bad.example": {"NSPinnedCAIdentities": identities("sha256/AAAA")}})
    line = data.decode().splitlines().index("\t\t\t<key>bad.example</key>") + 1
    with pytest.raises(FormatError, match=rf"^Info\.plist:{line}: pin 'sha256/"):
        import_pins(data, "Info.plist")


def test_a_file_that_is_no_plist_is_one_error() -> None:
    with pytest.raises(FormatError, match=r"^Info\.plist: not a valid property list: "):
        import_pins(b"bplist00\x00garbage", "Info.plist", "ios")
