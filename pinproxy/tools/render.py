"""Pinset YAML out: what `init`, `import` and `pin --format yaml` print.

Written by hand rather than by a YAML dumper so the output keeps the shape of the shipped
example (one rule per block, comments naming each pin's certificate) and reads back through
`loader.parse_pinset` unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from pinproxy.loader import format_duration
from pinproxy.pins import Pin
from pinproxy.pinset import DEFAULT_REPORT_DEDUPE, HostRule, Mode, OnExpiry, Pinset, Unpinned

__all__ = ["PinLine", "RuleText", "printable", "render_loaded", "render_pinset", "render_rules",
           "rule_text"]


@dataclass(frozen=True, slots=True)
class PinLine:
    """A pin and what it is (`# leaf: CN=api.example.com`), for a person reading the YAML."""

    pin: Pin | str  # a string for placeholders the operator must replace
    comment: str = ""


@dataclass(frozen=True, slots=True)
class RuleText:
    host: str
    pins: tuple[PinLine, ...]
    include_subdomains: bool = False
    expires: date | None = None
    mode: Mode | None = None  # None: the pinset's mode
    on_expiry: OnExpiry | None = None  # None: the pinset's on_expiry
    notes: tuple[str, ...] = field(default=())  # comment lines written above the rule
    report_uri: str | None = None  # None: the pinset's
    learn: bool = False  # `mode: learn`: no pins written


def rule_text(rule: HostRule, default_mode: Mode = Mode.ENFORCE,
              default_on_expiry: OnExpiry = OnExpiry.REPORT) -> RuleText:
    """A loaded rule as text, pins in the order written."""
    return RuleText(
        host=rule.host,
        pins=tuple(PinLine(pin) for pin in rule.pins),
        include_subdomains=rule.include_subdomains,
        expires=rule.expires,
        mode=rule.mode if rule.mode is not default_mode and not rule.learn else None,
        on_expiry=rule.on_expiry if rule.on_expiry is not default_on_expiry else None,
        report_uri=rule.report_uri,
        learn=rule.learn,
    )


def render_rules(rules: Iterable[RuleText], indent: str = "  ") -> str:
    """The items of a `hosts:` list."""
    out: list[str] = []
    for rule in rules:
        out.extend(f"{indent}# {printable(note)}" for note in rule.notes)
        out.append(f"{indent}- host: {_quoted(rule.host)}")
        if rule.include_subdomains:
            out.append(f"{indent}  include_subdomains: true")
        if rule.learn:
            out.append(f"{indent}  mode: learn")
        elif rule.mode is not None:
            out.append(f"{indent}  mode: {rule.mode.value}")
        if rule.expires is not None:
            out.append(f"{indent}  expires: {rule.expires.isoformat()}")
        if rule.on_expiry is not None:
            out.append(f"{indent}  on_expiry: {rule.on_expiry.value}")
        if rule.report_uri is not None:
            out.append(f"{indent}  report_uri: {_quoted(rule.report_uri)}")
        if rule.learn:
            continue
        out.append(f"{indent}  pins:")
        for line in rule.pins:
            comment = f"  # {printable(line.comment)}" if line.comment else ""
            out.append(f"{indent}    - {_quoted(str(line.pin))}{comment}")
    return "\n".join(out) + ("\n" if out else "")


def render_pinset(rules: Sequence[RuleText], mode: Mode = Mode.ENFORCE,
                  unpinned: Unpinned = Unpinned.ALLOW, header: Sequence[str] = (),
                  serial: int | None = None, valid_until: datetime | None = None,
                  report_uri: str | None = None,
                  report_dedupe: float = DEFAULT_REPORT_DEDUPE,
                  on_expiry: OnExpiry = OnExpiry.REPORT) -> str:
    """A whole version-1 pinset file (`on_expiry` written when it is not the default)."""
    lines = [f"# {printable(line)}" if line else "#" for line in header]
    lines += ["version: 1", f"mode: {mode.value}", f"unpinned: {unpinned.value}"]
    if on_expiry is not OnExpiry.REPORT:
        lines.append(f"on_expiry: {on_expiry.value}")
    if serial is not None:
        lines.append(f"serial: {serial}")
    if valid_until is not None:
        lines.append(f"valid_until: {_valid_until_text(valid_until)}")
    if report_uri is not None:
        lines.append(f"report_uri: {_quoted(report_uri)}")
    if report_dedupe != DEFAULT_REPORT_DEDUPE:
        lines.append(f"report_dedupe: {format_duration(report_dedupe)}")
    body = render_rules(rules)
    lines.append("hosts:" if body else "hosts: []")
    return "\n".join(lines) + "\n" + body


def render_loaded(pinset: Pinset, header: Sequence[str] = ()) -> str:
    """A loaded pinset written back out (comments are not kept)."""
    return render_pinset([rule_text(r, pinset.mode, pinset.on_expiry) for r in pinset.rules],
                         pinset.mode, pinset.unpinned, header, pinset.serial,
                         pinset.valid_until, pinset.report_uri, pinset.report_dedupe,
                         pinset.on_expiry)


def _valid_until_text(when: datetime) -> str:
    """A date when it was written as one (the end of that day, UTC), else the timestamp."""
    if when.utcoffset() == timedelta(0) and when.time() == time.max:
        return when.date().isoformat()
    return when.isoformat().replace("+00:00", "Z")


def printable(text: str) -> str:
    """Text from outside (a certificate subject, a file name) safe to print or to put in a YAML
    comment: a newline would start a YAML line the operator never chose, and an escape
    sequence would drive the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100
                   else f"\\u{ord(c):04x}" for c in text)


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    return json.dumps(text)
