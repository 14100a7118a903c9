"""The immutable pinset: host rules and their O(1) lookup.

A host is covered by at most one rule: an exact rule beats a `*.` wildcard (exactly one label,
never the apex), which beats an `include_subdomains` rule (every name below; the nearest base
wins). Lookup cost depends on the number of labels in the name, never on the size of the pinset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from pinproxy.hostnames import is_ip_literal, parent_domains
from pinproxy.pins import Pin

__all__ = ["DEFAULT_REPORT_DEDUPE", "HostRule", "Location", "Mode", "OnExpiry", "Pinset",
           "Unpinned"]


class Mode(StrEnum):
    """What a failed check does: refuse the connection, or let it through and report."""

    ENFORCE = "enforce"
    REPORT = "report"


class Unpinned(StrEnum):
    """What happens to a host that no rule covers."""

    ALLOW = "allow"
    BLOCK = "block"
    LEARN = "learn"  # trust on first use, for every host (pinproxy.learned)


class OnExpiry(StrEnum):
    """What a rule past its `expires` date does to the connections it covers.

    allow: nothing (the rule is skipped, the fail-open of other pinning systems); report: they
    go through, each one reported; block: they are refused. Never weaker than allow: a name
    an expired rule covers is still decided by the next rule, or by `unpinned`.
    """

    ALLOW = "allow"
    REPORT = "report"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Location:
    """Where a rule or a problem was written, for every message that names it.

    `line` is None for what concerns a file as a whole (it cannot be read, a binary plist);
    `str()` is then just the path. Every rule has a line.
    """

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class HostRule:
    """The pins one host pattern must satisfy.

    `host` is normalised; a wildcard is spelled `*.example.com`. `pins` are distinct, in the
    order written (a tuple: a 100 000-rule pinset would spend 16 MB more on frozensets).
    `expires` is the last day (UTC) on which the rule is enforced; `on_expiry` what it does
    after that day. `report_uri` is the collector of this rule's violation reports (None: the
    pinset's). A `learn` rule (`mode: learn`, trust on first use) has no pins: each host it
    covers is enforced against the pins learned from its first verified chain
    (`pinproxy.learned`); its `mode` is ENFORCE.
    """

    host: str
    pins: tuple[Pin, ...]
    location: Location
    include_subdomains: bool = False
    mode: Mode = Mode.ENFORCE
    expires: date | None = None
    report_uri: str | None = None
    learn: bool = False
    on_expiry: OnExpiry = OnExpiry.REPORT

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")

    @property
    def base(self) -> str:
        """The name the pattern hangs from: `example.com` for `*.example.com`."""
        return self.host.removeprefix("*.")

    def pins_equal(self, other: HostRule) -> bool:
        """Whether both rules accept exactly the same pins, whatever their order."""
        return set(self.pins) == set(other.pins)

    def expired(self, today: date) -> bool:
        return self.expires is not None and today > self.expires


DEFAULT_REPORT_DEDUPE = 86400.0  # seconds a report is not sent again: TrustKit's 24 hours


@dataclass(frozen=True, slots=True)
class Pinset:
    """Every host rule of one pinset file, indexed for lookup at construction.

    `serial` and `valid_until` matter for a signed remote pinset: a fetched pinset with a lower
    serial is a rollback, one past `valid_until` a replay (both refused).
    `report_uri` is where violation reports are POSTed (a rule may name its own);
    `report_dedupe` how many seconds the same violation is not POSTed again.
    """

    rules: tuple[HostRule, ...]
    source: str
    mode: Mode = Mode.ENFORCE
    unpinned: Unpinned = Unpinned.ALLOW
    serial: int | None = None
    valid_until: datetime | None = None  # timezone-aware
    report_uri: str | None = None
    report_dedupe: float = DEFAULT_REPORT_DEDUPE
    files: tuple[str, ...] = field(default=(), compare=False)  # read for `file:` pins: watched
    on_expiry: OnExpiry = OnExpiry.REPORT  # of rules that do not set their own
    _exact: dict[str, HostRule] = field(init=False, repr=False, compare=False)
    _one_label: dict[str, HostRule] = field(init=False, repr=False, compare=False)
    _apex_and_below: dict[str, HostRule] = field(init=False, repr=False, compare=False)
    _strictly_below: dict[str, HostRule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, HostRule] = {}
        one_label: dict[str, HostRule] = {}
        apex_and_below: dict[str, HostRule] = {}
        strictly_below: dict[str, HostRule] = {}
        for rule in self.rules:
            if not rule.is_wildcard:
                exact[rule.host] = rule
                if rule.include_subdomains:
                    apex_and_below[rule.host] = rule
            elif rule.include_subdomains:
                strictly_below[rule.base] = rule
            else:
                one_label[rule.base] = rule
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_one_label", one_label)
        object.__setattr__(self, "_apex_and_below", apex_and_below)
        object.__setattr__(self, "_strictly_below", strictly_below)

    @property
    def pin_count(self) -> int:
        return sum(len(rule.pins) for rule in self.rules)

    def candidates(self, host: str) -> Iterator[HostRule]:
        """Rules covering a normalised host, most specific first."""
        if not host:
            return
        if rule := self._exact.get(host):
            yield rule
        if (host[-1].isdigit() or ":" in host) and is_ip_literal(host):
            return  # an IP address has no parent domains
        parents = parent_domains(host)
        if parents and (rule := self._one_label.get(parents[0])):
            yield rule
        for parent in parents:
            if rule := self._strictly_below.get(parent):
                yield rule
            if rule := self._apex_and_below.get(parent):
                yield rule

    def report_uri_for(self, rule: HostRule | None) -> str | None:
        """The collector of a violation decided by `rule` (None: no rule covered the host)."""
        return rule.report_uri if rule is not None and rule.report_uri else self.report_uri

    def covers(self, host: str) -> bool:
        """True when some rule, expired or not, names this host."""
        return next(self.candidates(host), None) is not None
