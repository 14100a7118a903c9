"""The format-neutral middle of `import` and `export`: entries, notices, merging, filtering.

Every app format says less, or something different, than a pinset can (Apple ANDs its leaf and
CA lists, Android's expiry stops at midnight, OkHttp unions patterns, ...). A mapping that is not
faithful is never silent: it becomes a `Notice`, and a lossy one makes the command exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date

from pinproxy.errors import FormatError, PinproxyError
from pinproxy.hostnames import is_ip_literal, parse_host_pattern
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.tools.render import PinLine, RuleText

__all__ = [
    "Converted",
    "Entry",
    "Notice",
    "Parsed",
    "Target",
    "at",
    "exportable",
    "host_pattern",
    "merge",
    "rule_texts",
    "unique",
]


@dataclass(frozen=True, slots=True)
class Notice:
    """One `file:line: warning: ...` line, kept structured until printed. A lossy notice means
    the output is not faithful; a notice about the whole file has no line."""

    location: Location
    message: str
    lossy: bool = True

    def __str__(self) -> str:
        return f"{self.location}: {'warning' if self.lossy else 'note'}: {self.message}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One host pattern and its pins as an app format states them, before same-host merging.

    `host` is normalised (`*.example.com` for one label below); `notes` become YAML comments.
    """

    host: str
    pins: tuple[PinLine, ...]
    line: int
    include_subdomains: bool = False
    expires: date | None = None
    mode: Mode = Mode.ENFORCE
    notes: tuple[str, ...] = ()

    @property
    def rule_pins(self) -> tuple[Pin, ...]:
        """The distinct pins, as a `HostRule` holds them (lines without a `Pin` left out)."""
        return tuple(dict.fromkeys(line.pin for line in self.pins if isinstance(line.pin, Pin)))


def unique(lines: Iterable[PinLine]) -> tuple[PinLine, ...]:
    """Pins in first-seen order, each once (files repeat pins; a pinset lists each once)."""
    seen: dict[Pin | str, PinLine] = {}
    for line in lines:
        seen.setdefault(line.pin, line)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a format's `parse` found: entries in file order, and what it could not map."""

    entries: tuple[Entry, ...]
    notices: tuple[Notice, ...]


@dataclass(frozen=True, slots=True)
class Converted:
    """The text `import` or `export` writes, and the notices it prints on stderr."""

    text: str
    notices: tuple[Notice, ...]

    @property
    def lossy(self) -> bool:
        return any(notice.lossy for notice in self.notices)


def at(source: str, line: int) -> Location:
    """`source:line`, or just `source` where no line is known (binary plists: line 0)."""
    return Location(source, line or None)


def host_pattern(text: str, where: Location | str) -> str:
    """A host or `*.host` from an app file, normalised as the loader does; `FormatError` if not."""
    try:
        return parse_host_pattern(text)
    except PinproxyError as e:
        raise FormatError(f"{where}: {e}") from None


# -- import: same-host entries become one rule -------------------------------------------------

def merge(entries: Iterable[Entry], source: str) -> tuple[list[Entry], list[Notice]]:
    """One entry per host, in order of first appearance; pins of repeated hosts are unioned.

    A pinset has one rule per host. When repeats disagree on scope, expiry or mode, the merged
    rule takes the looser scope, the later expiry and enforcement, and a lossy notice says so.
    """
    merged: dict[str, Entry] = {}
    notices: list[Notice] = []
    for entry in entries:
        if entry.include_subdomains and is_ip_literal(entry.host):
            notices.append(Notice(at(source, entry.line), f"{entry.host} is an IP address, which "
                                                          "has no subdomains: pinned alone",
                                  lossy=False))
            entry = replace(entry, include_subdomains=False)
        first = merged.get(entry.host)
        if first is None:
            merged[entry.host] = entry
            continue
        differs = [what for what, a, b in (
            ("include_subdomains", first.include_subdomains, entry.include_subdomains),
            ("expiry", first.expires, entry.expires),
            ("mode", first.mode, entry.mode)) if a != b]
        if differs:
            notices.append(Notice(at(source, entry.line), (
                f"{entry.host} is also pinned at {at(source, first.line)} with a different "
                f"{' and '.join(differs)}; a pinset has one rule per host, so the merged rule "
                "has the pins of both, covers subdomains if either did, ends at the later "
                "expiry and is enforced if either was")))
        merged[entry.host] = replace(
            first,
            pins=unique(first.pins + entry.pins),
            include_subdomains=first.include_subdomains or entry.include_subdomains,
            expires=(None if first.expires is None or entry.expires is None
                     else max(first.expires, entry.expires)),
            mode=Mode.ENFORCE if Mode.ENFORCE in (first.mode, entry.mode) else Mode.REPORT,
            notes=first.notes + tuple(n for n in entry.notes if n not in first.notes),
        )
    return list(merged.values()), notices


def rule_texts(entries: Sequence[Entry]) -> list[RuleText]:
    """Merged entries as `writer.RuleText`, for `writer.render_pinset`."""
    return [RuleText(host=e.host, pins=e.pins, include_subdomains=e.include_subdomains,
                     expires=e.expires, mode=Mode.REPORT if e.mode is Mode.REPORT else None,
                     notes=e.notes)
            for e in entries]


# -- export: what a target format can carry ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """What an export format can express besides hosts and SPKI pins."""

    name: str
    report_mode: bool = False
    expiry: bool = False
    certificate_pins: bool = False


def exportable(pinset: Pinset, target: Target) -> tuple[list[HostRule], list[Notice]]:
    """The rules (and pins) a target can carry, and a notice for everything left out.

    Report-mode rules are left out where the target has no report-only mode: enforcing in the
    app what the pinset only reports could break connections the operator meant to observe.
    """
    rules: list[HostRule] = []
    notices: list[Notice] = []
    for rule in pinset.rules:
        where = rule.location
        if rule.mode is Mode.REPORT and not target.report_mode:
            notices.append(Notice(where, f"{rule.host} is in report mode, which {target.name} "
                                         "does not have: not exported (exporting it would "
                                         "enforce what the pinset only reports)"))
            continue
        pins = tuple(pin for pin in rule.pins
                     if target.certificate_pins or pin.kind is PinKind.SPKI)
        if dropped := len(rule.pins) - len(pins):
            notices.append(Notice(where, f"{rule.host}: {dropped} whole-certificate pin(s) "
                                         f"(cert-sha256/) cannot be expressed in {target.name}, "
                                         "which pins public keys only: left out"))
        if not pins:
            notices.append(Notice(where, f"{rule.host} has no public-key pin left: not exported"))
            continue
        if rule.expires is not None and not target.expiry:
            notices.append(Notice(where, f"{rule.host} expires after {rule.expires} in the "
                                         f"pinset, but {target.name} pins never expire: the app "
                                         "keeps enforcing them"))
        rules.append(replace(rule, pins=pins))
    if pinset.unpinned is Unpinned.BLOCK:
        notices.append(Notice(Location(pinset.source), f"'unpinned: block' has no {target.name} "
                              "equivalent: hosts without a rule are not blocked there",
                              lossy=False))
    return rules, notices
