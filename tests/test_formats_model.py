"""Tests of `pinproxy.formats` as a whole: format detection, same-host merging, empty input."""

from __future__ import annotations

import plistlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pinproxy.errors import FormatError
from pinproxy.formats import detect_format, export_pinset, import_pins
from pinproxy.loader import parse_pinset

DATA = Path(__file__).parent / "data" / "formats"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
X1 = "C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="
X2 = "diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="


@pytest.mark.parametrize(("data", "fmt"), [
    ((DATA / "network_security_config.xml").read_bytes(), "android"),
    ((DATA / "Info.plist").read_bytes(), "ios"),
    (plistlib.dumps({"a": 1}, fmt=plistlib.FMT_BINARY), "ios"),
    ((DATA / "hpkp-headers.txt").read_bytes(), "hpkp"),
    (f'pin-sha256="{X1}"; max-age=1'.encode(), "hpkp"),
    ((DATA / "CertificatePinner.kt").read_bytes(), "okhttp"),
    (b"<html><body>sha256/ in a web page</body></html>", "okhttp"),
    (b"version: 1\nhosts: []\n", None),
    (b"<manifest/>", None),
])
def test_format_is_detected_from_content(data: bytes, fmt: str | None) -> None:
    assert detect_format(data) == fmt


def test_content_without_a_format_asks_for_one() -> None:
    with pytest.raises(FormatError, match=r"^pins\.yaml: cannot tell the format from the "
                                          r"content; give --format android\|ios\|hpkp\|okhttp$"):
        import_pins(b"version: 1\nhosts: []\n", "pins.yaml")


@pytest.mark.parametrize("call", [
    lambda: import_pins(b"x", "f", "jks"),
    lambda: export_pinset(parse_pinset("version: 1\nhosts: []\n"), "jks"),
])
def test_unknown_format_names_the_choices(call: object) -> None:
    with pytest.raises(FormatError, match=r"^unknown (import|export) format 'jks': choose "):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(("second", "warned"), [
    (f'Public-Key-Pins: pin-sha256="{X2}"; max-age=86400', False),
    (f'Public-Key-Pins: pin-sha256="{X2}"; max-age=86400; includeSubDomains', True),
])
def test_same_host_entries_merge_and_disagreement_is_reported(second: str, warned: bool) -> None:
    text = f'Public-Key-Pins: pin-sha256="{X1}"; max-age=86400\n{second}\n'
    result = import_pins(text.encode(), "h.txt", host="api.example", now=NOW)
    (rule,) = parse_pinset(result.text).rules
    assert {str(p) for p in rule.pins} == {f"sha256/{X1}", f"sha256/{X2}"}
    assert rule.include_subdomains is warned  # the looser scope, and a warning saying so
    lossy = [str(n) for n in result.notices if n.lossy]
    assert lossy == (["h.txt:2: warning: api.example is also pinned at h.txt:1 with a different "
                      "include_subdomains; a pinset has one rule per host, so the merged rule "
                      "has the pins of both, covers subdomains if either did, ends at the later "
                      "expiry and is enforced if either was"] if warned else [])


def test_a_file_without_pins_gives_an_empty_pinset_and_a_warning() -> None:
    result = import_pins(b'<?xml version="1.0"?>\n<network-security-config/>\n', "nsc.xml")
    assert parse_pinset(result.text).rules == ()
    assert [str(n) for n in result.notices] == [
        "nsc.xml: warning: found no pins to import (read as Android network security config)"]


@pytest.mark.parametrize(("include", "noted"), [("true", True), ("false", False)])
def test_an_ip_address_with_subdomains_is_pinned_alone(include: str, noted: bool) -> None:
    data = (f'<network-security-config>\n<domain-config>\n<domain includeSubdomains="{include}">'
            f'10.0.2.2</domain>\n<pin-set><pin digest="SHA-256">{X1}</pin></pin-set>\n'
            "</domain-config>\n</network-security-config>\n").encode()
    result = import_pins(data, "nsc.xml")
    (rule,) = parse_pinset(result.text).rules
    assert (rule.host, rule.include_subdomains) == ("10.0.2.2", False)
    assert [str(n) for n in result.notices] == (
        ["nsc.xml:3: note: 10.0.2.2 is an IP address, which has no subdomains: pinned alone"]
        if noted else [])
