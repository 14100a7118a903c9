"""Pinset YAML -> validated `Pinset`, with every problem reported as `path:line: message`.

PyYAML's `safe_load` keeps the last of two duplicate keys and reads `off` as False: either would
silently weaken a pinset. So this walks a YAML tree itself (`_yamltree`, built from libyaml's
events), checks every key and type, and collects all problems before failing, so one run of
`pinproxy check` shows them all.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import yaml

from pinproxy._yamltree import Alias, Mapping, Node, Scalar, Sequence, parse_documents
from pinproxy.errors import PinproxyError, PinsetError, Problem, quote
from pinproxy.files import open_regular, read_regular
from pinproxy.hostnames import parse_host_pattern
from pinproxy.pins import Pin, parse_pin, read_pem_or_der
from pinproxy.pinset import (
    DEFAULT_REPORT_DEDUPE,
    HostRule,
    Location,
    Mode,
    OnExpiry,
    Pinset,
    Unpinned,
)
from pinproxy.reporting import parse_report_uri

__all__ = ["MAX_SERIAL", "format_duration", "load_pinset", "parse_day", "parse_duration",
           "parse_pinset", "parse_valid_until"]

SUPPORTED_VERSIONS = (1,)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # fromisoformat alone also takes 20271231, 2027-W52
_TIMESTAMP_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?"
                             r"(?:[Zz]|[+-]\d{2}:\d{2})")
_TOP_KEYS = {"version", "mode", "unpinned", "hosts", "serial", "valid_until", "report_uri",
             "report_dedupe", "on_expiry"}
MAX_SERIAL = 2**63 - 1
_RULE_KEYS = {"host", "pins", "include_subdomains", "expires", "mode", "report_uri", "on_expiry"}
_LEARN = "learn"  # a rule's `mode: learn`: trust on first use (pinproxy.learned)
_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DEDUPE = 366 * 86400
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_TYPE_NAMES = {_STR: "a string", _INT: "a number", _BOOL: "a boolean", _TIMESTAMP: "a date",
               "tag:yaml.org,2002:float": "a number", "tag:yaml.org,2002:null": "empty"}


def parse_day(text: str) -> dt.date:
    """A day written YYYY-MM-DD, and nothing else `date.fromisoformat` would take; ValueError."""
    if not _DATE.fullmatch(text):
        raise ValueError(f"{quote(text)} is not a date written YYYY-MM-DD")
    return dt.date.fromisoformat(text)


def parse_valid_until(text: str) -> dt.datetime:
    """`valid_until`: an ISO 8601 timestamp with a time zone, or a date (valid to its end, UTC);
    ValueError otherwise."""
    if _DATE.fullmatch(text):
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time.max, dt.UTC)
    if not _TIMESTAMP_TEXT.fullmatch(text):
        raise ValueError(text)
    when = dt.datetime.fromisoformat(text.upper())
    if when.tzinfo is None:
        raise ValueError(text)
    return when


def parse_duration(text: str) -> int:
    """Seconds written as a whole number with an optional unit: `90`, `90s`, `30m`, `24h`,
    `7d`; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 24h, 30m, 90s or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest `parse_duration` spelling of a whole number of seconds (`24h`, `90s`)."""
    whole = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def load_pinset(path: str | Path, allow_files: bool = True) -> Pinset:
    """Read and validate a pinset file; raise `PinsetError` listing every problem.
    `allow_files=False` refuses `file:` pins (a signed pinset: the signature would not cover
    the files)."""
    name = str(path)
    try:
        with open_regular(path) as stream:  # libyaml reads it in chunks: no copy of a big file
            return parse_pinset(stream, name, base_dir=Path(path).parent,
                                allow_files=allow_files)
    except OSError as e:
        raise PinsetError([Problem(Location(name),
                                   f"cannot read pinset: {e.strerror or e}")]) from None


def parse_pinset(text: str | bytes | BinaryIO, source: str = "<pinset>",
                 base_dir: Path | None = None, allow_files: bool = True) -> Pinset:
    """Validate pinset YAML (text, UTF-8 bytes or a binary file); `base_dir` resolves `file:`
    pins (default: the working directory)."""
    return _Parser(source, base_dir or Path(), allow_files).parse(text)


class _Parser:
    def __init__(self, source: str, base_dir: Path, allow_files: bool = True) -> None:
        self.source = source
        self.base_dir = base_dir
        self.allow_files = allow_files
        self.problems: list[tuple[int, str]] = []
        self.pins: dict[Pin, Pin] = {}  # one object per distinct pin, shared by every rule
        self.rules: list[HostRule] = []
        self.first_line: dict[str, int] = {}  # host -> line of its rule, to report a second
        self.inheriting: list[int] = []  # rules without `mode:`; they take the pinset's
        self.files: dict[str, None] = {}  # files read for `file:` pins, in order
        self.inheriting_expiry: list[int] = []  # rules without `on_expiry:`, likewise

    def problem(self, node: Node | int, message: str) -> None:
        self.problems.append((node if isinstance(node, int) else node.line, message))

    def parse(self, text: str | bytes | BinaryIO) -> Pinset:
        root = self._compose(text)
        pinset = self._pinset(root) if root is not None else None
        if self.problems or pinset is None:
            ordered = sorted(self.problems, key=lambda p: p[0])
            raise PinsetError(Problem(Location(self.source, line), message)
                              for line, message in ordered)
        return pinset

    def _compose(self, text: str | bytes | BinaryIO) -> Node | None:
        try:
            documents = parse_documents(text, stream_key="hosts", on_item=self._add_rule)
        except yaml.reader.ReaderError as e:  # libyaml's own words name a character code
            line = _line_of_byte(text, e.position)
            raise PinsetError([Problem(Location(self.source, line), "cannot read pinset: it is"
                                       f" not UTF-8 text ({e.reason})")]) from None
        except yaml.MarkedYAMLError as e:
            self.problems.clear()  # rules read before the syntax error are beside the point
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            self.problem(line, f"not valid YAML: {e.problem or e.context}")
            return None
        except yaml.YAMLError as e:
            self.problems.clear()
            self.problem(1, f"not valid YAML: {e}")
            return None
        if not documents:
            self.problem(1, "the pinset is empty: it needs 'version: 1' and a 'hosts:' list")
            return None
        if len(documents) > 1:
            self.problems.clear()
            self.problem(documents[1].line, "a pinset is one YAML document, and a second one "
                                            "starts here; remove it and its '---'")
            return None
        return documents[0].root

    # -- the shape of the file -------------------------------------------------------------

    def _pinset(self, root: Node) -> Pinset | None:
        fields = self._mapping(root, "the pinset", _TOP_KEYS, required=("version", "hosts"))
        if fields is None:
            return None
        version = fields.get("version")
        text = self._scalar(version, _INT, "'version'") if version is not None else None
        if version is not None and text is not None and (
            not text.isdigit() or int(text) not in SUPPORTED_VERSIONS
        ):
            self.problem(version, f"unsupported pinset version {quote(text)}: "
                                  "this pinproxy reads version 1")
        mode = self._choice(fields.get("mode"), "'mode'", Mode, Mode.ENFORCE)
        unpinned = self._choice(fields.get("unpinned"), "'unpinned'", Unpinned, Unpinned.ALLOW)
        on_expiry = self._choice(fields.get("on_expiry"), "'on_expiry'", OnExpiry,
                                 OnExpiry.REPORT)
        serial = self._serial(fields["serial"]) if "serial" in fields else None
        valid_until = (self._valid_until(fields["valid_until"]) if "valid_until" in fields
                       else None)
        rules = self._rules(fields.get("hosts"), mode or Mode.ENFORCE,
                            on_expiry or OnExpiry.REPORT)
        report_uri = self._report_uri(fields["report_uri"]) if "report_uri" in fields else None
        dedupe = (self._dedupe(fields["report_dedupe"]) if "report_dedupe" in fields
                  else DEFAULT_REPORT_DEDUPE)
        if mode is None or unpinned is None or on_expiry is None or rules is None \
                or dedupe is None:
            return None
        if ("serial" in fields and serial is None) or (
                "valid_until" in fields and valid_until is None):
            return None
        if "report_uri" in fields and report_uri is None:
            return None
        return Pinset(rules=tuple(rules), source=self.source, mode=mode, unpinned=unpinned,
                      serial=serial, valid_until=valid_until, report_uri=report_uri,
                      report_dedupe=dedupe, files=tuple(self.files), on_expiry=on_expiry)

    def _rules(self, node: Node | None, default_mode: Mode,
               default_on_expiry: OnExpiry) -> list[HostRule] | None:
        if node is None:
            return None
        if not isinstance(node, Sequence):
            self.problem(node, f"'hosts' must be a list of host rules, not {_kind(node)}")
            return None
        for item in node.items:  # empty when the rules were streamed in as they were read
            self._add_rule(item)
        if default_mode is not Mode.ENFORCE:
            for index in self.inheriting:
                self.rules[index] = replace(self.rules[index], mode=default_mode)
        if default_on_expiry is not OnExpiry.REPORT:
            for index in self.inheriting_expiry:
                self.rules[index] = replace(self.rules[index], on_expiry=default_on_expiry)
        return self.rules

    def _add_rule(self, node: Node) -> None:
        found = self._rule(node)
        if found is None:
            return
        rule, inherits_mode, inherits_expiry = found
        if rule.host in self.first_line:
            self.problem(node, f"host {quote(rule.host)} has a second rule; "
                               f"the first is at line {self.first_line[rule.host]}")
            return
        self.first_line[rule.host] = node.line
        if inherits_mode:
            self.inheriting.append(len(self.rules))
        if inherits_expiry:
            self.inheriting_expiry.append(len(self.rules))
        self.rules.append(rule)

    def _rule(self, node: Node) -> tuple[HostRule, bool, bool] | None:
        """A rule, and whether it takes the pinset's mode and on_expiry (not known yet while
        streaming)."""
        fields = self._mapping(node, "a host rule", _RULE_KEYS, required=("host",))
        if fields is None:
            return None
        mode_node = fields.get("mode")  # `mode: learn` (trust on first use) takes no pins
        learn = (isinstance(mode_node, Scalar) and mode_node.tag == _STR
                 and mode_node.value == _LEARN)
        if not learn and "pins" not in fields:
            self.problem(node, "a host rule is missing the key 'pins'")
            return None
        include = fields.get("include_subdomains")
        include_subdomains = (
            self._boolean(include, "'include_subdomains'") if include is not None else False
        )
        host = self._host(fields.get("host"), bool(include_subdomains))
        if learn and "pins" in fields:
            self.problem(fields["pins"], f"{host or 'this host'} has 'mode: learn', which "
                         "learns its pins on first use: remove 'pins' (or make the rule "
                         "'mode: enforce')")
            return None
        pins = () if learn else self._pins(fields.get("pins"), host or "this host")
        expires = self._date(fields["expires"]) if "expires" in fields else None
        mode = (Mode.ENFORCE if learn else
                self._choice(fields.get("mode"), "'mode'", Mode, Mode.ENFORCE))
        on_expiry = self._choice(fields.get("on_expiry"), "'on_expiry'", OnExpiry,
                                 OnExpiry.REPORT)
        report_uri = self._report_uri(fields["report_uri"]) if "report_uri" in fields else None
        if host is None or pins is None or include_subdomains is None or mode is None \
                or on_expiry is None:
            return None
        if ("expires" in fields and expires is None) or (
                "report_uri" in fields and report_uri is None):
            return None
        rule = HostRule(host=host, pins=pins, location=Location(self.source, node.line),
                        include_subdomains=include_subdomains, mode=mode, expires=expires,
                        report_uri=report_uri, learn=learn, on_expiry=on_expiry)
        return rule, "mode" not in fields, "on_expiry" not in fields

    # -- values ----------------------------------------------------------------------------

    def _host(self, node: Node | None, include_subdomains: bool) -> str | None:
        text = self._scalar(node, _STR, "'host'") if node is not None else None
        if text is None or node is None:
            return None
        try:
            return parse_host_pattern(text, include_subdomains)
        except PinproxyError as e:
            self.problem(node, str(e))
            return None

    def _pins(self, node: Node | None, host: str) -> tuple[Pin, ...] | None:
        if node is None:
            return None
        if not isinstance(node, Sequence):
            self.problem(node, f"'pins' must be a list of pins, not {_kind(node)}")
            return None
        if not node.items:
            self.problem(node, f"{host} has an empty 'pins' list, which would pin nothing; "
                               "list at least one pin (and a backup)")
            return None
        pins: list[Pin] = []
        ok = True
        for item in node.items:
            text = self._scalar(item, _STR, "a pin")
            found = self._pin_or_file(item, text) if text is not None else None
            if found is None:
                ok = False
            else:
                pins.extend(found)
        return tuple(dict.fromkeys(pins)) if ok else None

    def _pin_or_file(self, node: Node, text: str) -> list[Pin] | None:
        try:
            if text.startswith("file:"):
                if not self.allow_files:
                    self.problem(node, "'file:' pins are not allowed in a signed pinset (the "
                                       "signature would not cover the file); write the pins")
                    return None
                path = self.base_dir / text.removeprefix("file:").strip()
                self.files[str(path)] = None
                try:
                    data = read_regular(path)
                except OSError as e:
                    self.problem(node, f"pin file {quote(str(path))}: {e.strerror or e}")
                    return None
                return [self.pins.setdefault(item.spki, item.spki)
                        for item in read_pem_or_der(data, str(path))]
            pin = parse_pin(text)
            return [self.pins.setdefault(pin, pin)]
        except PinproxyError as e:
            self.problem(node, str(e))
            return None

    def _serial(self, node: Node) -> int | None:
        if isinstance(node, Scalar) and node.tag == _INT and node.value.isascii() \
                and node.value.isdigit() and int(node.value) <= MAX_SERIAL:
            return int(node.value)
        if not self._refuse_alias(node):
            shown = node.value if isinstance(node, Scalar) else _kind(node)
            self.problem(node, f"'serial' must be a whole number from 0 to {MAX_SERIAL}, "
                               f"not {shown!r}")
        return None

    def _valid_until(self, node: Node) -> dt.datetime | None:
        if isinstance(node, Scalar) and node.tag in (_TIMESTAMP, _STR):
            try:
                return parse_valid_until(node.value)
            except ValueError:
                pass
        if not self._refuse_alias(node):
            shown = node.value if isinstance(node, Scalar) else _kind(node)
            self.problem(node, "'valid_until' must be a timestamp with a time zone "
                               f"(2027-01-31T12:00:00Z) or a date (YYYY-MM-DD), not {shown!r}")
        return None

    def _date(self, node: Node) -> dt.date | None:
        if isinstance(node, Scalar) and node.tag in (_TIMESTAMP, _STR):
            try:
                return parse_day(node.value)
            except ValueError:
                pass
        if not self._refuse_alias(node):
            shown = node.value if isinstance(node, Scalar) else _kind(node)
            self.problem(node, f"'expires' must be a date written YYYY-MM-DD, not {quote(shown)}")
        return None

    def _report_uri(self, node: Node) -> str | None:
        text = self._scalar(node, _STR, "'report_uri'", hint="an https:// URL")
        if text is None:
            return None
        try:
            parse_report_uri(text)
        except ValueError as e:
            self.problem(node, f"'report_uri' {text[:200]!r} {e}")
            return None
        return text

    def _dedupe(self, node: Node) -> float | None:
        if isinstance(node, Scalar) and node.tag in (_INT, _STR):
            try:
                seconds = parse_duration(node.value)
            except ValueError:
                pass
            else:
                if seconds <= _MAX_DEDUPE:
                    return float(seconds)
        if not self._refuse_alias(node):
            shown = node.value if isinstance(node, Scalar) else _kind(node)
            self.problem(node, f"'report_dedupe' must be a duration such as 24h, 30m, 90s or "
                               f"7d (seconds when no unit; at most 366d), not {shown!r}")
        return None

    def _boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, Scalar) and node.tag == _BOOL and node.value.lower() in (
            "true", "false"
        ):
            return node.value.lower() == "true"
        if not self._refuse_alias(node):
            shown = node.value if isinstance(node, Scalar) else _kind(node)
            self.problem(node, f"{what} must be true or false, not {quote(shown)}")
        return None

    def _choice[E: (Mode, Unpinned, OnExpiry)](
        self, node: Node | None, what: str, choices: type[E], default: E
    ) -> E | None:
        if node is None:
            return default
        allowed = " or ".join(repr(c.value) for c in choices)
        text = self._scalar(node, _STR, what, hint=f"one of {allowed}")
        if text is None:
            return None
        try:
            return choices(text)
        except ValueError:
            self.problem(node, f"{what} must be {allowed}, not {quote(text)}")
            return None

    # -- structure helpers -----------------------------------------------------------------

    def _mapping(
        self, node: Node, what: str, keys: set[str], required: tuple[str, ...]
    ) -> dict[str, Node] | None:
        if not isinstance(node, Mapping):
            if not self._refuse_alias(node):
                self.problem(node, f"{what} must be a mapping of keys, not {_kind(node)}")
            return None
        fields: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        items = node.items  # key, value, key, value, …
        for index in range(0, len(items), 2):
            key_node, value_node = items[index], items[index + 1]
            key = key_node.value if isinstance(key_node, Scalar) else None
            if not isinstance(key_node, Scalar) or key is None or key_node.tag != _STR:
                shown = quote(key) if key is not None else None
                self.problem(key_node, f"{what} has a key that is not a name: {shown}")
            elif key in key_lines:
                self.problem(key_node, f"duplicate key {quote(key)} in {what} "
                                       f"(first at line {key_lines[key]})")
            elif key not in keys:
                self.problem(key_node, f"unknown key {quote(key)} in {what}; "
                                       f"expected {', '.join(sorted(keys))}")
            else:
                fields[key] = value_node
            if key is not None:
                key_lines.setdefault(key, key_node.line)
        for key in required:
            if key not in key_lines:
                self.problem(node, f"{what} is missing the key {key!r}")
        return fields

    def _scalar(self, node: Node, tag: str, what: str, hint: str = "") -> str | None:
        if isinstance(node, Scalar):
            found = node.tag
            if found == tag:
                return node.value
            if found in (_BOOL, _INT) and tag == _STR:
                self.problem(node, f"{what} must be {hint or _TYPE_NAMES[tag]}, not the YAML "
                                   f"{_TYPE_NAMES[found][2:]} {quote(node.value)}; quote it if you "
                                   "mean the text")
                return None
        if not self._refuse_alias(node):
            self.problem(node, f"{what} must be {hint or _TYPE_NAMES[tag]}, not {_kind(node)}")
        return None

    def _refuse_alias(self, node: Node) -> bool:
        """Aliases make shared subtrees that are easy to misread (and to bomb): refused."""
        if isinstance(node, Alias):
            self.problem(node, "YAML anchors and aliases are not supported in a pinset")
            return True
        return False


def _line_of_byte(text: str | bytes | BinaryIO, offset: int) -> int:
    if isinstance(text, str):
        return 1  # a str is Unicode already: libyaml saw no bad byte in it
    if not isinstance(text, bytes):
        text.seek(0)
        text = text.read(offset)
    return text.count(b"\n", 0, offset) + 1


def _kind(node: Node | None) -> str:
    if isinstance(node, Mapping):
        return "a mapping"
    if isinstance(node, Sequence):
        return "a list"
    if isinstance(node, Scalar):
        described = _TYPE_NAMES.get(node.tag, "a value")
        return f"{described} {quote(node.value)}" if node.value else "an empty value"
    if isinstance(node, Alias):
        return "a YAML alias"
    return "nothing"
