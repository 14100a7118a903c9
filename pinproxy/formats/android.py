"""Android Network Security Config (`res/xml/network_security_config.xml`) <-> pins.

Read as Android reads it (AOSP `XmlConfigSource`): a nested `<domain-config>` inherits the
`<pin-set>` and `<trust-anchors>` of its parent; `includeSubdomains="true"` covers every depth,
like our `include_subdomains`; what Android rejects (a duplicate domain, a second pin-set, a
digest other than SHA-256) is an error here too. Android stops enforcing a pin-set at the
*start* of its `expiration` day, while a pinset's `expires` is the last day enforced, so
`expires` = `expiration` - 1 day, in both directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from xml.sax.saxutils import escape, quoteattr

from pinproxy.errors import FormatError, PinproxyError
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
from pinproxy.pinset import HostRule, OnExpiry, Pinset
from pinproxy.tools.render import PinLine

__all__ = ["TARGET", "parse", "render"]

TARGET = Target("Android", expiry=True)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class _PinSet:
    pins: tuple[PinLine, ...]
    expires: date | None
    note: str


@dataclass(frozen=True, slots=True)
class _Inherited:
    """What a domain-config passes down: its pin-set, and trust anchors that override pins."""

    pin_set: _PinSet | None = None
    overriding: tuple[Element, ...] = ()


def parse(data: bytes, source: str) -> Parsed:
    """Entries for every domain that has pins, own or inherited; debug-overrides are left out."""
    return _Reader(source).read(parse_xml(data, source))


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.entries: list[Entry] = []
        self.notices: list[Notice] = []
        self.seen: dict[str, int] = {}

    def error(self, element: Element, message: str) -> FormatError:
        return FormatError(f"{at(self.source, element.line)}: {message}")

    def warn(self, element: Element, message: str, lossy: bool = True) -> None:
        self.notices.append(Notice(at(self.source, element.line), message, lossy))

    def read(self, root: Element) -> Parsed:
        if root.tag != "network-security-config":
            raise self.error(root, f"the root element is <{root.tag}>, not "
                                   "<network-security-config>: not an Android network "
                                   "security config")
        base = [child for child in root.children if child.tag == "base-config"]
        inherited = self.config(base[0], _Inherited(), "base-config") if base else _Inherited()
        for child in root.children:
            match child.tag:
                case "base-config" if child is not base[0]:
                    raise self.error(child, "only one <base-config> is allowed")
                case "base-config":
                    pass
                case "domain-config":
                    self.config(child, inherited, "domain-config")
                case "debug-overrides":
                    self.warn(child, "<debug-overrides> apply only to debuggable builds, where "
                                     "they usually bypass pins; ignored")
                case _:
                    self.unknown(child)
        return Parsed(tuple(self.entries), tuple(self.notices))

    def config(self, element: Element, parent: _Inherited, kind: str) -> _Inherited:
        pin_sets = [c for c in element.children if c.tag == "pin-set"]
        anchors = [c for c in element.children if c.tag == "trust-anchors"]
        for group in (pin_sets, anchors):
            if len(group) > 1:
                raise self.error(group[1], f"a <{kind}> may have only one <{group[1].tag}>")
        if kind == "base-config":
            for child in element.children:
                if child.tag in ("pin-set", "domain", "domain-config"):
                    raise self.error(child, f"<{child.tag}> is not allowed in <base-config> "
                                            "(Android rejects it)")
        own = _Inherited(
            pin_set=self.pin_set(pin_sets[0]) if pin_sets else parent.pin_set,
            overriding=(tuple(c for c in anchors[0].children if c.tag == "certificates"
                              and c.attrs.get("overridePins", "false").lower() == "true")
                        if anchors else parent.overriding),
        )
        domains = [c for c in element.children if c.tag == "domain"]
        if kind == "domain-config" and not domains:
            raise self.error(element, "<domain-config> has no <domain> (Android rejects it)")
        for domain in domains:
            self.domain(domain, own)
        for child in element.children:
            if child.tag == "domain-config":
                self.config(child, own, "domain-config")
            elif child.tag not in ("domain", "pin-set", "trust-anchors"):
                self.unknown(child)
        return own

    def domain(self, element: Element, config: _Inherited) -> None:
        if element.children:
            raise self.error(element, "<domain> must hold only a host name")
        name = element.text.lower()
        if name in self.seen:
            raise self.error(element, f"domain {name!r} is already given at line "
                                      f"{self.seen[name]} (Android rejects duplicates)")
        self.seen[name] = element.line
        host = host_pattern(name, at(self.source, element.line))
        include = self.boolean(element, "includeSubdomains")
        pin_set = config.pin_set
        if pin_set is None or not pin_set.pins:
            self.warn(element, f"{host} has no pins (its domain-config sets other things "
                               "only): not imported", lossy=False)
            return
        for certificates in config.overriding:
            self.warn(certificates, f"overridePins=\"true\" on <certificates src="
                                    f"{quoteattr(certificates.attrs.get('src', ''))}>: Android "
                                    f"skips the pins of {host} for chains anchored there; "
                                    "pinproxy enforces them for every chain")
        notes = (f"from {at(self.source, element.line)}",) + ((pin_set.note,) if pin_set.note
                                                               else ())
        self.entries.append(Entry(host, pin_set.pins, element.line, include_subdomains=include,
                                  expires=pin_set.expires, notes=notes))

    def pin_set(self, element: Element) -> _PinSet:
        expiration = element.attrs.get("expiration")
        expires, note = None, ""
        if expiration is not None:
            try:
                if not _DATE.fullmatch(expiration):
                    raise ValueError(expiration)
                expires = date.fromisoformat(expiration) - _ONE_DAY
            except ValueError:
                raise self.error(element, f"pin-set expiration {expiration!r} is not a date "
                                          "written yyyy-MM-dd") from None
            note = (f"Android pin-set expiration={expiration}: Android stops at the start of "
                    f"that day, so the last day enforced is {expires}")
        pins: list[PinLine] = []
        for child in element.children:
            if child.tag != "pin":
                self.unknown(child)
                continue
            digest = child.attrs.get("digest")
            if digest != "SHA-256":
                raise self.error(child, f"pin digest {digest!r} is not supported: Android "
                                        "accepts only digest=\"SHA-256\"")
            try:
                pins.append(PinLine(parse_pin(f"sha256/{child.text}")))
            except PinproxyError as e:
                raise self.error(child, str(e)) from None
        return _PinSet(unique(pins), expires, note)

    def boolean(self, element: Element, name: str) -> bool:
        value = element.attrs.get(name, "false")
        if value.lower() not in ("true", "false"):
            raise self.error(element, f"{name}={value!r} must be \"true\" or \"false\"")
        return value.lower() == "true"

    def unknown(self, element: Element) -> None:
        self.warn(element, f"<{element.tag}> is not understood here; ignored")


# -- export ------------------------------------------------------------------------------------

def render(pinset: Pinset) -> Converted:
    """One `<domain-config>` per rule; `*.` rules widen to includeSubdomains, which is reported."""
    rules, notices = exportable(pinset, TARGET)
    exact = {rule.host for rule in rules if not rule.is_wildcard}
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           xml_comment(f"Generated by pinproxy export (format android) from {pinset.source}. "
                       "Save it as res/xml/network_security_config.xml and reference it from "
                       "the manifest: <application android:networkSecurityConfig="
                       "\"@xml/network_security_config\">."),
           "<network-security-config>"]
    for rule in rules:
        domain = _domain(rule, exact, notices)
        if domain is None:
            continue
        host, include = domain
        out.append(f"    {xml_comment(str(rule.location))}")
        out.append("    <domain-config>")
        out.append(f'        <domain includeSubdomains="{str(include).lower()}">'
                   f"{escape(host)}</domain>")
        if rule.expires is None:
            out.append("        <pin-set>")
        else:
            kept = f"enforced through {rule.expires} (pinset expires)"
            if rule.on_expiry is not OnExpiry.ALLOW:
                notices.append(Notice(rule.location, f"{rule.host}: after {rule.expires} "
                                      "Android stops pinning silently; the pinset's "
                                      f"on_expiry: {rule.on_expiry} cannot be expressed",
                                      lossy=False))
            out.append(f"        {xml_comment(kept)}")
            out.append(f'        <pin-set expiration="{rule.expires + _ONE_DAY}">')
        out.extend(f'            <pin digest="SHA-256">{pin.base64}</pin>'
                   for pin in sorted(rule.pins, key=str))
        out.extend(["        </pin-set>", "    </domain-config>"])
    out.append("</network-security-config>")
    return Converted("\n".join(out) + "\n", tuple(notices))


def _domain(rule: HostRule, exact: set[str], notices: list[Notice]) -> tuple[str, bool] | None:
    """The `<domain>` for a rule; Android has no one-label (`*.`) or below-only pattern."""
    if not rule.is_wildcard:
        return rule.host, rule.include_subdomains
    where = rule.location
    if rule.base in exact:
        notices.append(Notice(where, f"{rule.host}: Android has no pattern for names below "
                                     f"{rule.base} alone, and {rule.base} has its own rule: "
                                     "not exported"))
        return None
    deeper = "" if rule.include_subdomains else " and names more than one label below it"
    notices.append(Notice(where, f"{rule.host}: Android has no one-label wildcard; exported as "
                                 f"{rule.base} with includeSubdomains=\"true\", which also pins "
                                 f"{rule.base} itself{deeper}"))
    return rule.base, True
