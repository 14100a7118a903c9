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
