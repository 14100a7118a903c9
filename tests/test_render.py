"""Generated pinset YAML reads back unchanged, and outside text cannot add lines to it."""

from __future__ import annotations

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
