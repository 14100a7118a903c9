"""Generated pinset YAML reads back unchanged, and outside text cannot add lines to it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pinproxy.loader import load_pinset, parse_pinset
from pinproxy.pins import parse_pin
from pinproxy.tools.render import PinLine, RuleText, printable, render_loaded, render_pinset

PIN = parse_pin("sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")


def test_the_shipped_pinset_round_trips() -> None:
    shipped = load_pinset("config/pins.yaml")
    again = parse_pinset(render_loaded(shipped))
    assert [(r.host, r.pins, r.include_subdomains, r.mode, r.expires) for r in again.rules] == [
        (r.host, r.pins, r.include_subdomains, r.mode, r.expires) for r in shipped.rules]


def test_a_hostile_subject_stays_inside_its_comment() -> None:
    subject = 'CN=x\n  - host: "evil.example"\n    pins: ["sha256/AAAA"]\x1b[2J'
    text = render_pinset([RuleText("api.example", (PinLine(PIN, subject),), notes=(subject,))],
                         header=(subject,))
    assert [r.host for r in parse_pinset(text).rules] == ["api.example"]
    assert "evil.example" in text and "\x1b" not in text
    assert printable(subject).count("\\x0a") == 2


@pytest.mark.parametrize(("written", "rendered"), [
    ("serial: 7\nvalid_until: 2027-01-31T12:00:00Z",
     "serial: 7\nvalid_until: 2027-01-31T12:00:00Z"),
    ("valid_until: 2027-01-31", "valid_until: 2027-01-31"),
    ("valid_until: 2027-01-31T14:00:00+02:00", "valid_until: 2027-01-31T14:00:00+02:00"),
    ("", ""),
])
def test_serial_and_valid_until_are_written_back(written: str, rendered: str) -> None:
    pinset = parse_pinset(f"version: 1\n{written}\nhosts: []\n")
    text = render_loaded(pinset)
    assert (rendered in text) if rendered else ("serial" not in text and "valid" not in text)
    again = parse_pinset(text)
    assert (again.serial, again.valid_until) == (pinset.serial, pinset.valid_until)
    if pinset.valid_until is not None:
        assert again.valid_until is not None and again.valid_until.tzinfo is not None
        assert again.valid_until <= datetime(2027, 2, 1, tzinfo=UTC)
def test_report_uri_and_report_dedupe_round_trip() -> None:
    text = f"""\
version: 1
report_uri: https://c.example/r?x=1
report_dedupe: 90m
hosts:
  - host: a.example
    report_uri: http://127.0.0.1:9000/a
    pins: ["{PIN}"]
  - host: b.example
    pins: ["{PIN}"]
"""
    loaded = parse_pinset(text)
    again = parse_pinset(render_loaded(loaded))
    assert (again.report_uri, again.report_dedupe) == ("https://c.example/r?x=1", 5400.0)
    assert [r.report_uri for r in again.rules] == ["http://127.0.0.1:9000/a", None]
    # the twin: without them, nothing is written and the defaults come back
    plain = render_loaded(parse_pinset(text.replace("report_uri: https://c.example/r?x=1\n", "")
                                       .replace("report_dedupe: 90m\n", "")))
    assert "report_dedupe" not in plain and plain.count("report_uri") == 1
