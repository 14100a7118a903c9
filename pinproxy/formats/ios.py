"""Apple App Transport Security `NSPinnedDomains` (Info.plist, iOS 14+ / macOS 11+) <-> pins.

Apple's semantics differ from a pinset's in two ways, both reported rather than glossed over:
- `NSIncludesSubdomains` adds exactly ONE label below the domain, so it imports as an extra
  `*.domain` rule (and `domain` + `*.domain` with equal pins export back as one key).
- With both `NSPinnedLeafIdentities` and `NSPinnedCAIdentities`, Apple requires a match in
  BOTH; a pinset accepts any pin in the verified chain, so that imports as a union, with a
  warning. Exports put every pin in `NSPinnedCAIdentities`, which matches any CA of the chain:
  the closest Apple gets to "any pin passes" for the CA pins a pinset should hold.
"""

from __future__ import annotations

import plistlib
from typing import Any
from xml.sax.saxutils import escape

from pinproxy.errors import FormatError, PinproxyError, quote, shorten
from pinproxy.formats._xml import Element, parse_xml, xml_comment
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
from pinproxy.pinset import HostRule, Location, Pinset
from pinproxy.tools.render import PinLine

__all__ = ["TARGET", "parse", "render"]

TARGET = Target("iOS")
_ATS = "NSAppTransportSecurity"
_PINNED = "NSPinnedDomains"
_SUBDOMAINS = "NSIncludesSubdomains"
_LISTS = {"NSPinnedLeafIdentities": "leaf", "NSPinnedCAIdentities": "CA"}
_SPKI = "SPKI-SHA256-BASE64"


def parse(data: bytes, source: str) -> Parsed:
    """Entries for every pinned domain of an XML or binary plist (Info.plist or the ATS dict)."""
    lines: dict[str, int] = {}
    if not data.startswith(b"bplist"):
        lines = _domain_lines(parse_xml(data, source, doctype=True))
    try:
        plist = plistlib.loads(data)
    except (plistlib.InvalidFileException, ValueError, TypeError, OverflowError) as e:
        raise FormatError(f"{source}: not a valid property list: {e}") from None
    domains = _pinned_domains(plist, source)
    entries: list[Entry] = []
    notices: list[Notice] = []
    for domain, config in domains.items():
        line = lines.get(domain, 0)
        where = at(source, line)
        if not isinstance(config, dict):
            raise FormatError(f"{where}: {_PINNED} entry {quote(domain)} must be a dictionary")
        include = config.get(_SUBDOMAINS, False)
        if not isinstance(include, bool):
            raise FormatError(f"{where}: {shorten(domain)}: {_SUBDOMAINS} must be a boolean")
        unknown = sorted(set(config) - {_SUBDOMAINS, *_LISTS})
        if unknown:
            notices.append(Notice(where, f"{domain}: keys {', '.join(unknown)} are not "
                                         "understood; ignored"))
        given = [key for key in _LISTS if config.get(key)]
        pins = _identities(config, where)
        if len(given) == 2:
            notices.append(Notice(where, f"{domain} has both NSPinnedLeafIdentities and "
                                         "NSPinnedCAIdentities, which Apple requires BOTH to "
                                         "match; a pinset accepts any one pin, so the import "
                                         "accepts a leaf pin alone or a CA pin alone"))
        if not pins:
            notices.append(Notice(where, f"{domain} lists no identities: not imported",
                                  lossy=False))
            continue
        host = host_pattern(domain, where)
        entries.append(Entry(host, pins, line, notes=(f"from {where}",)))
        if include:
            entries.append(Entry(host_pattern(f"*.{host}", where), pins, line, notes=(
                f"from {where}: {_SUBDOMAINS} covers exactly one label below {host}",)))
    return Parsed(tuple(entries), tuple(notices))


def _pinned_domains(plist: Any, source: str) -> dict[str, Any]:
    ats = plist.get(_ATS, plist) if isinstance(plist, dict) else None
    domains = ats.get(_PINNED, {}) if isinstance(ats, dict) else None
    if not isinstance(domains, dict):
        raise FormatError(f"{source}: {_ATS} -> {_PINNED} must be a dictionary of domains")
    return domains


def _identities(config: dict[str, Any], where: Location) -> tuple[PinLine, ...]:
    pins: list[PinLine] = []
    for key, position in _LISTS.items():
        items = config.get(key, [])
        if not isinstance(items, list):
            raise FormatError(f"{where}: {key} must be an array of {{{_SPKI}: ...}} dictionaries")
        for item in items:
            value = item.get(_SPKI) if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise FormatError(f"{where}: every {key} item must be a dictionary with a "
                                  f"{_SPKI} string")
            try:
                pins.append(PinLine(parse_pin(f"sha256/{value.strip()}"), position))
            except PinproxyError as e:
                raise FormatError(f"{where}: {e}") from None
    return unique(pins)


def _domain_lines(root: Element) -> dict[str, int]:
    """The line of each domain key under NSPinnedDomains: plistlib does not report lines."""
    items = _dict_items(root.children[0] if root.tag == "plist" and root.children else None)
    if _ATS in items:
        items = _dict_items(items[_ATS][1])
    pinned = items[_PINNED][1] if _PINNED in items else None
    return {key: key_element.line for key, (key_element, _) in _dict_items(pinned).items()}


def _dict_items(node: Element | None) -> dict[str, tuple[Element, Element]]:
    if node is None or node.tag != "dict":
        return {}
    children = node.children
    return {key.text: (key, value) for key, value in zip(children[::2], children[1::2],
                                                         strict=False) if key.tag == "key"}


# -- export ------------------------------------------------------------------------------------

def render(pinset: Pinset) -> Converted:
    """An Info.plist holding NSAppTransportSecurity -> NSPinnedDomains, every pin a CA identity."""
    rules, notices = exportable(pinset, TARGET)
    by_host = {rule.host: rule for rule in rules}
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
           '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">',
           '<plist version="1.0">',
           xml_comment(f"Generated by pinproxy export (format ios) from {pinset.source}. "
                       f"Merge {_ATS} into the app's Info.plist. Every pin is listed as a CA "
                       "identity, which matches any CA certificate of the chain; a pin of the "
                       "leaf's key matches only in NSPinnedLeafIdentities."),
           "<dict>", f"\t<key>{_ATS}</key>", "\t<dict>", f"\t\t<key>{_PINNED}</key>", "\t\t<dict>"]
    for rule in rules:
        domain = _domain(rule, by_host, notices)
        if domain is None:
            continue
        host, include = domain
        out += [f"\t\t\t{xml_comment(str(rule.location))}",
                f"\t\t\t<key>{escape(host)}</key>", "\t\t\t<dict>",
                f"\t\t\t\t<key>{_SUBDOMAINS}</key>", f"\t\t\t\t<{str(include).lower()}/>",
                "\t\t\t\t<key>NSPinnedCAIdentities</key>", "\t\t\t\t<array>"]
        for pin in sorted(rule.pins, key=str):
            out += ["\t\t\t\t\t<dict>", f"\t\t\t\t\t\t<key>{_SPKI}</key>",
                    f"\t\t\t\t\t\t<string>{str(pin).removeprefix('sha256/')}</string>",
                    "\t\t\t\t\t</dict>"]
        out += ["\t\t\t\t</array>", "\t\t\t</dict>"]
    out += ["\t\t</dict>", "\t</dict>", "</dict>", "</plist>"]
    return Converted("\n".join(out) + "\n", tuple(notices))


def _domain(rule: HostRule, by_host: dict[str, HostRule],
            notices: list[Notice]) -> tuple[str, bool] | None:
    """The domain key and NSIncludesSubdomains for a rule, or None when another key covers it.

    `host` and `*.host` with equal pins are exactly one key with NSIncludesSubdomains.
    """
    where = rule.location
    apex = by_host.get(rule.base) if rule.is_wildcard else rule
    wildcard = by_host.get(f"*.{rule.base}")
    together = apex is not None and wildcard is not None and apex.pins_equal(wildcard)
    if rule.is_wildcard and together:
        return None  # exported with its apex rule
    if rule.is_wildcard and apex is not None:
        notices.append(Notice(where, f"{rule.host}: iOS can pin names one label below "
                                     f"{rule.base} only together with {rule.base} itself, "
                                     "which has its own rule with other pins: not exported"))
        return None
    if rule.is_wildcard:
        notices.append(Notice(where, f"{rule.host}: iOS has no wildcard; exported as "
                                     f"{rule.base} with {_SUBDOMAINS}, which also pins "
                                     f"{rule.base} itself"))
    deep = rule.include_subdomains or (together and wildcard is not None
                                       and wildcard.include_subdomains)
    if deep:
        notices.append(Notice(where, f"{rule.host}: the pinset pins names at every depth below "
                                     f"{rule.base}, but {_SUBDOMAINS} covers only one label: "
                                     "deeper names are not pinned on iOS"))
    return rule.base, rule.is_wildcard or rule.include_subdomains or together
