"""OkHttp `CertificatePinner` host/pin pairs <-> pins.

Accepted input, one pair or call per line, anything else ignored:
- Kotlin or Java calls with string literals: `.add("*.example.com", "sha256/...", ...)`,
  possibly spread over several lines;
- plain pairs: `example.com sha256/... [sha256/...]` (commas, semicolons or quotes allowed);
- `//` and `#` comments.
A line that mentions a pin but fits neither form is reported, never skipped silently.

Patterns map exactly: `host`, `*.host` (one label) and `**.host` (host and every name below,
our `include_subdomains`). OkHttp *unions* the pins of every pattern that matches a host where a
pinset uses the most specific rule, so an import copies a broader pattern's pins into the
narrower rules, and an export reports where the union would accept more than the pinset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from pinproxy.errors import FormatError, PinproxyError, quote
from pinproxy.formats.model import (
    Converted,
    Entry,
    Notice,
    Parsed,
    Target,
    at,
    exportable,
    host_pattern,
    merge,
    unique,
)
from pinproxy.pins import Pin, parse_pin
from pinproxy.pinset import HostRule, Location, Pinset
from pinproxy.tools.render import PinLine

__all__ = ["TARGET", "parse", "render"]

TARGET = Target("OkHttp")
_STRING = r'"(?:[^"\\\n]|\\.)*"'
_ADD = re.compile(rf"\badd\s*\(\s*({_STRING}(?:\s*,\s*{_STRING})+)\s*,?\s*\)")
_ADD_START = re.compile(r'\badd\s*\(\s*"')
_PIN_TOKEN = re.compile(r"[A-Za-z0-9-]+/\S+")
_MENTIONS_PIN = re.compile(r"\bsha(?:1|256)/", re.IGNORECASE)
_COMMENT = re.compile(rf"({_STRING})|(?<!\S)//[^\n]*|/\*.*?\*/|(?<!\S)#[^\n]*", re.DOTALL)
_SEPARATORS = re.compile(r"[\s,;]+")


def parse(text: str, source: str) -> Parsed:
    """Entries for every host/pin pair; sha1 pins and unreadable lines are lossy notices."""
    text = _COMMENT.sub(_keep_strings_and_lines, text)
    pairs: list[tuple[str, list[str], int]] = []
    covered: set[int] = set()
    for call in _ADD.finditer(text):
        first = text.count("\n", 0, call.start()) + 1
        covered.update(range(first, text.count("\n", 0, call.end()) + 2))
        args = [literal[1:-1] for literal in re.findall(_STRING, call.group(1))]
        pairs.append((args[0], args[1:], first))
    notices: list[Notice] = []
    for number, line in enumerate(text.splitlines(), 1):
        if number in covered:
            continue
        tokens = [t.strip("\"'") for t in _SEPARATORS.split(line) if t.strip("\"'")]
        if len(tokens) >= 2 and "/" not in tokens[0] and all(
                _PIN_TOKEN.fullmatch(t) for t in tokens[1:]):
            pairs.append((tokens[0], tokens[1:], number))
        elif _MENTIONS_PIN.search(line) or _ADD_START.search(line):
            notices.append(Notice(at(source, number), (
                "line not understood (accepted: .add(\"host\", \"sha256/...\") with string "
                "literals, or 'host sha256/...'); ignored")))
    entries = [entry for pattern, pins, line in pairs
               if (entry := _entry(pattern, pins, at(source, line), line, notices)) is not None]
    merged, merge_notices = merge(entries, source)
    return Parsed(tuple(_with_union(merged, source, notices)),
                  tuple(notices + merge_notices))


def _keep_strings_and_lines(match: re.Match[str]) -> str:
    """Comments go (a commented-out pin is not a pin), strings and line breaks stay."""
    return match.group(1) or "\n" * match.group(0).count("\n")


def _entry(pattern: str, pins: list[str], where: Location, line: int,
           notices: list[Notice]) -> Entry | None:
    include = pattern.startswith("**.")
    host = host_pattern(pattern[3:] if include else pattern, where)
    lines: list[PinLine] = []
    for text in pins:
        prefix = text.partition("/")[0].lower()
        if prefix == "sha1":
            notices.append(Notice(where, f"{pattern}: sha1 pin {quote(text)} cannot be mapped "
                                         "(pinproxy pins are SHA-256 digests); left out"))
            continue
        if prefix != "sha256":
            raise FormatError(f"{where}: pin {quote(text)}: OkHttp accepts only 'sha256/' and "
                              "'sha1/' pins")
        try:
            lines.append(PinLine(parse_pin(text)))
        except PinproxyError as e:
            raise FormatError(f"{where}: {e}") from None
    if not lines:
        return None  # only sha1 pins, each reported above
    return Entry(host, unique(lines), line, include_subdomains=include,
                 notes=(f"from {where}: {pattern}",))


def _with_union(entries: list[Entry], source: str, notices: list[Notice]) -> list[Entry]:
    """Copy into each rule the pins OkHttp would also accept there from broader patterns."""
    rules = [HostRule(e.host, e.rule_pins, Location(source, e.line),
                      include_subdomains=e.include_subdomains) for e in entries]
    result: list[Entry] = []
    for entry, per_name in zip(entries, _also_accepted(rules), strict=True):
        extra: dict[Pin, str] = {}
        for found in per_name:
            for pin, pattern in found.items():
                extra.setdefault(pin, pattern)
        if len({frozenset(found) for found in per_name}) > 1:
            others = ", ".join(sorted(set(extra.values())))
            notices.append(Notice(at(source, entry.line), (
                f"{entry.host}: OkHttp accepts the pins of {others} for only some of the names "
                "this rule covers; the imported rule accepts them for all")))
        result.append(replace(entry, pins=entry.pins + tuple(
            PinLine(pin, f"also pinned by {pattern}: OkHttp unions the pins of every "
                         "matching pattern") for pin, pattern in extra.items())))
    return result


def _also_accepted(rules: Sequence[HostRule]) -> list[list[dict[Pin, str]]]:
    """Per rule, per name the rule decides in a pinset: the pins OkHttp accepts there besides
    the rule's own, each with the pattern it comes from."""
    pinset = Pinset(tuple(rules), "<okhttp>")
    patterns = [(_pattern(rule), rule) for rule in rules]
    result: list[list[dict[Pin, str]]] = []
    for rule in rules:
        per_name: list[dict[Pin, str]] = []
        for name in _names(rule):
            if next(pinset.candidates(name), None) is not rule:
                continue  # a more specific rule decides this name
            extra: dict[Pin, str] = {}
            for pattern, other in patterns:
                if other is not rule and _matches(pattern, name):
                    for pin in sorted(set(other.pins).difference(rule.pins), key=str):
                        extra.setdefault(pin, pattern)
            per_name.append(extra)
        result.append(per_name)
    return result


def _names(rule: HostRule) -> list[str]:
    """Sample names a rule covers; `*` stands for any label and never names a real host."""
    deeper = [f"*.{rule.host}", f"*.*.{rule.host}"] if rule.include_subdomains else []
    return [rule.host, *deeper]


def _pattern(rule: HostRule) -> str:
    return f"**.{rule.base}" if rule.include_subdomains else rule.host


def _matches(pattern: str, name: str) -> bool:
    """OkHttp's rule: `*.x` is exactly one label below x, `**.x` is x or any name below it."""
    if pattern.startswith("**."):
        base = pattern[3:]
        return name == base or name.endswith(f".{base}")
    if pattern.startswith("*."):
        base = pattern[2:]
        return name.endswith(f".{base}") and "." not in name[: -len(base) - 1]
    return name == pattern


# -- export ------------------------------------------------------------------------------------

def render(pinset: Pinset) -> Converted:
    """A Kotlin `CertificatePinner.Builder()` chain, one `.add(pattern, pin)` per pin."""
    rules, notices = exportable(pinset, TARGET)
    out = [f"// Generated by `pinproxy export --format okhttp` from {pinset.source}.",
           "// OkHttp, like pinproxy, accepts a connection when any pin matches any certificate "
           "of the verified chain.",
           '// "*.x" is one label below x; "**.x" is x and every name below it.',
           "val certificatePinner = CertificatePinner.Builder()"]
    for rule, per_name in zip(rules, _also_accepted(rules), strict=True):
        where = rule.location
        pattern = _pattern(rule)
        if rule.is_wildcard and rule.include_subdomains:
            notices.append(Notice(where, f"{rule.host}: OkHttp has no pattern for every name "
                                         f"strictly below {rule.base}; exported as {pattern!r}, "
                                         f"which also pins {rule.base} itself"))
        others = sorted({p for found in per_name for p in found.values()})
        if others:
            notices.append(Notice(where, f"{rule.host}: OkHttp unions the pins of every "
                                         f"matching pattern, so it also accepts the pins of "
                                         f"{', '.join(others)} here, where the pinset uses only "
                                         "this rule's"))
        out.append(f"    // {where}")
        out.extend(f'    .add("{pattern}", "{pin}")' for pin in sorted(rule.pins, key=str))
    out.append("    .build()")
    return Converted("\n".join(out) + "\n", tuple(notices))
