"""HPKP `Public-Key-Pins` headers (RFC 7469) <-> pins.

A header carries no host name (the host is whoever sends it), so an import takes the host from
the caller. `max-age` is a rolling lifetime that browsers restart at every response; a pinset's
`expires` is a fixed date, so the import counts max-age from today and says so, and the export
counts from today to the end of the `expires` day (60 days when a rule has no `expires`).
Browsers removed HPKP (Chrome 72, Firefox 72); the export exists for tools that still read it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

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
    unique,
)
from pinproxy.pins import parse_pin
from pinproxy.pinset import HostRule, Location, Mode, Pinset
from pinproxy.tools.render import PinLine

__all__ = ["DEFAULT_MAX_AGE", "TARGET", "parse", "render"]

TARGET = Target("HPKP", report_mode=True, expiry=True)
DEFAULT_MAX_AGE = 60 * 24 * 3600  # RFC 7469 section 4.1 suggests 60 days as a sensible upper bound
_HEADER = re.compile(r"(public-key-pins(?:-report-only)?)\s*:(.*)", re.IGNORECASE)
_DIRECTIVE = re.compile(r'([A-Za-z0-9_-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;\s]*))?\s*(?:;|$)')


def parse(text: str, source: str, host: str | None, now: datetime) -> Parsed:
    """Entries for every header line (`Public-Key-Pins[-Report-Only]: ...` or bare directives)."""
    if host is None:
        raise FormatError(f"{source}: HPKP headers do not name their host: give it with --host")
    pattern = host_pattern(host, "--host")
    entries: list[Entry] = []
    notices: list[Notice] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = at(source, number)
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if header := _HEADER.fullmatch(stripped):
            report = header.group(1).lower().endswith("-report-only")
            mode, value = (Mode.REPORT if report else Mode.ENFORCE), header.group(2)
        elif stripped.lower().startswith("pin-"):
            mode, value = Mode.ENFORCE, stripped
        else:
            notices.append(Notice(where, "line not understood (expected a Public-Key-Pins "
                                         "header); ignored"))
            continue
        entry = _entry(pattern, mode, _directives(value, where), where, number, now, notices)
        if entry is not None:
            entries.append(entry)
    return Parsed(tuple(entries), tuple(notices))


def _directives(value: str, where: Location) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    position, value = 0, value.strip()
    while position < len(value):
        if value[position] in " \t;":
            position += 1
            continue
        match = _DIRECTIVE.match(value, position)
        if match is None:
            raise FormatError(f"{where}: cannot read the header at {quote(value[position:])}")
        raw = match.group(2)
        if raw is not None and raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        found.append((match.group(1).lower(), raw))
        position = match.end()
    return found


def _entry(host: str, mode: Mode, directives: list[tuple[str, str | None]], where: Location,
           line: int, now: datetime, notices: list[Notice]) -> Entry | None:
    pins: list[PinLine] = []
    max_age: int | None = None
    include = False
    seen: set[str] = set()
    for name, raw in directives:
        if name in seen and not name.startswith("pin-"):
            raise FormatError(f"{where}: directive {quote(name)} appears twice (RFC 7469: browsers "
                              "ignore such a header)")
        seen.add(name)
        if name == "pin-sha256":
            try:
                pins.append(PinLine(parse_pin(f"sha256/{raw or ''}")))
            except PinproxyError as e:
                raise FormatError(f"{where}: {e}") from None
        elif name.startswith("pin-"):
            notices.append(Notice(where, f"{name} cannot be mapped (only pin-sha256 is "
                                         "defined); left out"))
        elif name == "max-age":
            if raw is None or not raw.isdigit():
                shown = quote(raw) if raw is not None else None
                raise FormatError(f"{where}: max-age={shown} is not a number of seconds")
            max_age = int(raw)
        elif name == "includesubdomains":
            include = True
        elif name == "report-uri":
            notices.append(Notice(where, f"report-uri {raw!r} is not kept: set the pinset's "
                                         "report_uri (or 'pinproxy run --report-log')"))
        else:
            notices.append(Notice(where, f"unknown directive {quote(name)} ignored, as RFC 7469 "
                                         "asks", lossy=False))
    if max_age is None:
        raise FormatError(f"{where}: the header has no max-age (RFC 7469 requires one)")
    if max_age == 0:
        notices.append(Notice(where, f"max-age=0 tells browsers to forget the pins of {host}: "
                                     "not imported"))
        return None
    if not pins:
        notices.append(Notice(where, "the header has no pin-sha256: not imported"))
        return None
    # the last day with any enforcement: a max-age ending at midnight does not reach the next day
    expires = (now + timedelta(seconds=max_age) - timedelta(microseconds=1)).date()
    counted = (f"expires {expires} is max-age={max_age} counted from today ({now.date()}); "
               "browsers restart max-age at every response, a pinset's expires is a fixed date")
    notices.append(Notice(where, counted, lossy=False))
    return Entry(host, unique(pins), line, include_subdomains=include, expires=expires,
                 mode=mode, notes=(f"from {where}", counted))


# -- export ------------------------------------------------------------------------------------

def render(pinset: Pinset, now: datetime) -> Converted:
    """One header line per rule, preceded by a comment naming the hosts that should send it."""
    rules, notices = exportable(pinset, TARGET)
    out = [f"# Generated by `pinproxy export --format hpkp` from {pinset.source} on "
           f"{now.date()}.",
           "# Browsers removed HPKP (Chrome 72, Firefox 72). max-age counts from today to the "
           "end of each rule's",
           f"# expires day, or is {DEFAULT_MAX_AGE} seconds (60 days) for a rule without one."]
    for rule in rules:
        where = rule.location
        max_age = DEFAULT_MAX_AGE
        if rule.expires is not None:
            end = datetime.combine(rule.expires + timedelta(days=1), time(), UTC)
            max_age = int((end - now).total_seconds())
            if max_age <= 0:
                notices.append(Notice(where, f"{rule.host} expired after {rule.expires}: "
                                             "not exported"))
                continue
        if len(rule.pins) < 2:
            notices.append(Notice(where, f"{rule.host} has one pin: browsers ignore a "
                                         "Public-Key-Pins header without a backup pin"))
        directives = [pin.hpkp for pin in sorted(rule.pins, key=str)]
        directives.append(f"max-age={max_age}")
        if rule.include_subdomains:
            directives.append("includeSubDomains")
        if (report_uri := pinset.report_uri_for(rule)) is not None:
            directives.append(f'report-uri="{report_uri}"')
        header = "Public-Key-Pins-Report-Only" if rule.mode is Mode.REPORT else "Public-Key-Pins"
        out.append(f"# {_senders(rule)} ({where})")
        out.append(f"{header}: {'; '.join(directives)}")
    return Converted("\n".join(out) + "\n", tuple(notices))


def _senders(rule: HostRule) -> str:
    if not rule.is_wildcard:
        below = " (includeSubDomains: and every name below it)" if rule.include_subdomains else ""
        return f"send from {rule.host}{below}"
    depth = "every name below" if rule.include_subdomains else "every name one label below"
    return f"send from {depth} {rule.base}"
