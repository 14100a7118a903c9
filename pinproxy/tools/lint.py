"""Lint findings for a pinset: what `pinproxy check` reports beyond load errors.

Pinning's worst failure is the outage after a certificate or key rotation (why browsers
withdrew HPKP), so the checks look for rules that will break, have silently stopped working, or
do not mean what they seem to: no backup pin, whole-certificate pins only, an expiry date that is
near or past, rules that overlap with different pins, patterns on a public suffix, a pinset that
refuses nothing at all, and host labels that mix scripts (an IDN homograph such as
U+0430 CYRILLIC SMALL LETTER A in `p\u0430ypal.com`).

A `Finding` is one line of `check` output; errors make `check` exit 2, warnings only with
`--strict`. Every check is per rule and uses the pinset's own O(1) indexes (`Pinset.candidates`),
so linting costs O(rules x labels) whatever the size of the pinset.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import cache

import idna
from publicsuffixlist import PublicSuffixList

from pinproxy.hostnames import is_ip_literal
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, OnExpiry, Pinset, Unpinned

__all__ = ["CODES", "EXPIRY_WARNING_DAYS", "STALE_WARNING_DAYS", "Finding", "Severity", "lint",
           "mixed_scripts", "protects_nothing"]

EXPIRY_WARNING_DAYS = 30
STALE_WARNING_DAYS = 3

#: Every code `lint` can report, with what it means; `check --help` and the README list them.
CODES = {
    "missing-backup-pin": "a rule with fewer than two pins that can match a real key",
    "certificate-pins-only": "every pin of a rule is a whole-certificate pin (cert-sha256/)",
    "expires-soon": f"a rule's last enforced day is within {EXPIRY_WARNING_DAYS} days "
                    "(--expiry-warning)",
    "expired": "a rule is past its last enforced day: its pins are no longer checked, and its "
               "on_expiry reports, refuses or allows what it covers",
    "overlapping-rules": "a name is covered by two rules with different pins",
    "redundant-rule": "a rule decides exactly as the broader rule under it would",
    "shadowed-rule": "a rule, or its include_subdomains, never applies",
    "public-suffix": "'*.' or include_subdomains on a public suffix such as co.uk",
    "protects-nothing": "no rule is enforced and unpinned hosts are allowed: nothing is refused",
    "mixed-script": "a host label mixes scripts (Latin and Cyrillic...): a look-alike name",
    "stale": "the pinset is past its 'valid_until': a proxy fetching it would refuse it",
    "stale-soon": f"the pinset's 'valid_until' is within {STALE_WARNING_DAYS} days",
    "plaintext-report-uri": "a report_uri is http:// (loopback only): reports are not "
                            "encrypted nor the collector authenticated",
}

# Well-formed digests that are no key's SPKI hash: the all-zero digest (OkHttp's docs trick to
# make a pinning failure print the real pins) and the SHA-256 of "" and "hello" (RFC 7469's
# example backup pin). A "backup" like this matches nothing, so it is no backup.
_PLACEHOLDERS = {
    bytes(32): "all-zero digest",
    hashlib.sha256(b"").digest(): 'SHA-256 of ""',
    hashlib.sha256(b"hello").digest(): 'SHA-256 of "hello"',
}


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where, how bad, a stable code (`missing-backup-pin`) and the message."""

    severity: Severity
    code: str
    message: str
    location: Location | None = None  # None: about the pinset as a whole
    host: str | None = None

    def __str__(self) -> str:
        where = str(self.location) if self.location else "-"
        return f"{where}: {self.severity.value}: {self.message} [{self.code}]"


def lint(pinset: Pinset, today: date, now: datetime | None = None,
         expiry_warning: int = EXPIRY_WARNING_DAYS) -> list[Finding]:
    """Every finding for a loaded pinset, in rule (file) order; `today` decides expiry, `now`
    (default: the start of `today`, UTC) whether the pinset is stale, `expiry_warning` how many
    days ahead an expiry is warned of."""
    findings: list[Finding] = list(_staleness(pinset, now or datetime.combine(today, time.min,
                                                                              UTC)))
    if (nothing := protects_nothing(pinset, today)) is not None:
        findings.append(Finding(Severity.WARNING, "protects-nothing", nothing,
                                Location(pinset.source)))
    if pinset.report_uri is not None and pinset.report_uri.lower().startswith("http:"):
        findings.append(Finding(Severity.WARNING, "plaintext-report-uri",
                                _plaintext_report_uri(pinset.report_uri),
                                Location(pinset.source)))
    for rule in pinset.rules:
        if rule.report_uri is not None and rule.report_uri.lower().startswith("http:"):
            findings.append(_warning(rule, "plaintext-report-uri",
                                     f"{rule.host}: {_plaintext_report_uri(rule.report_uri)}"))
        findings.extend(_backup(rule))
        findings.extend(_expiry(rule, today, expiry_warning))
        findings.extend(_overlaps(pinset, rule, today))
        findings.extend(_public_suffix(rule))
        findings.extend(_mixed_script(rule))
    return findings


def _plaintext_report_uri(url: str) -> str:
    return (f"report_uri {url!r} is http://: reports go unencrypted to whatever listens on "
            "that loopback port; use https:// unless the collector is a local agent")


def _warning(rule: HostRule, code: str, message: str) -> Finding:
    return Finding(Severity.WARNING, code, message, rule.location, rule.host)


# -- rotation safety -----------------------------------------------------------------------

def _staleness(pinset: Pinset, now: datetime) -> Iterator[Finding]:
    if pinset.valid_until is None:
        return
    until = pinset.valid_until.isoformat()
    where = Location(pinset.source)
    if now > pinset.valid_until:
        yield Finding(Severity.WARNING, "stale", f"the pinset went stale at {until} "
                      "('valid_until'): a proxy fetching it with --pinset-url refuses it; "
                      "re-sign it with a later 'valid_until' and a higher 'serial'", where)
    elif pinset.valid_until - now <= timedelta(days=STALE_WARNING_DAYS):
        yield Finding(Severity.WARNING, "stale-soon", f"the pinset goes stale at {until} "
                      "('valid_until'); publish a newer one (higher 'serial') before then",
                      where)


def _backup(rule: HostRule) -> Iterator[Finding]:
    if rule.learn:  # its pins are learned at run time; `learned promote` writes them out
        return
    fakes = sorted((pin for pin in rule.pins if pin.digest in _PLACEHOLDERS), key=str)
    real = [pin for pin in rule.pins if pin.digest not in _PLACEHOLDERS]
    if len(real) < 2:
        yield _warning(rule, "missing-backup-pin", _no_backup_message(rule, real, fakes))
    if real and all(pin.kind is PinKind.CERTIFICATE for pin in real):
        yield _warning(
            rule, "certificate-pins-only",
            f"{rule.host}: every pin is a whole-certificate pin (cert-sha256/), which changes "
            "at every renewal, even with the same key (every 90 days or less with ACME CAs); "
            "pin the SPKI (sha256/) of the issuing CA or of a key you keep")


def _no_backup_message(rule: HostRule, real: Sequence[Pin], fakes: Sequence[Pin]) -> str:
    advice = ("add a backup pin (the key of a second CA you could move to, or a key made "
              "with pinproxy backup-key)")
    named = "; ".join(f"'{pin}' ({_PLACEHOLDERS[pin.digest]}) matches no key, so it is no "
                      "backup" for pin in fakes)
    named = f"; {named}" if named else ""
    if not real:
        return f"{rule.host}: no pin can match a real key{named}; {advice}"
    return (f"{rule.host}: only one pin can match{named}; when its key changes, every "
            f"connection fails; {advice}")


_AFTER_EXPIRY = {
    OnExpiry.ALLOW: "its names fall to the next rule, or to CA checks only",
    OnExpiry.REPORT: "every connection it covers is reported as rule-expired",
    OnExpiry.BLOCK: "every connection it covers is refused as rule-expired",
}


def _expiry(rule: HostRule, today: date, warning_days: int) -> Iterator[Finding]:
    if rule.expires is None:
        return
    last_day = rule.expires.isoformat()
    after = _AFTER_EXPIRY[rule.on_expiry]
    if rule.on_expiry is OnExpiry.BLOCK and rule.mode is Mode.REPORT:
        after = "every connection it covers is reported as rule-expired (mode: report)"
    after = f"{after} (on_expiry: {rule.on_expiry})"
    if rule.expired(today):
        yield _warning(
            rule, "expired",
            f"{rule.host}: expired after {last_day}: its pins are no longer checked; {after}; "
            "extend 'expires' or remove the rule")
        return
    days = (rule.expires - today).days
    if days <= warning_days:
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        yield _warning(
            rule, "expires-soon",
            f"{rule.host}: last enforced day is {last_day} ({when}); after it the pins are no "
            f"longer checked and {after}; extend 'expires' if the pins are still right")


# -- how rules combine ---------------------------------------------------------------------

def _overlaps(pinset: Pinset, rule: HostRule, today: date) -> Iterator[Finding]:
    """Compare a rule with the rule that would decide its names without it.

    Only the next rule in precedence is compared, from the winning rule's side; that rule is
    compared with its own next one in turn, so a chain of three rules gives two findings, not
    three, and the work per rule is one or two `candidates` walks (O(labels)). Expired rules
    check no pins (`policy.decide` passes over them; their `on_expiry` can only add a report or
    a refusal): they get `expired` only.
    """
    if rule.expired(today):
        return
    fallbacks: dict[int, tuple[HostRule, list[str]]] = {}
    decided_alike = True
    for name, scope in _scopes(rule):
        deciding = [r for r in pinset.candidates(name) if not r.expired(today)]
        if deciding[0] is not rule:
            never = ("this rule's include_subdomains never applies" if name != rule.host
                     else "this rule never applies")
            yield _warning(rule, "shadowed-rule",
                           f"{rule.host}: {_are([scope])} decided by {_named(deciding[0])}, "
                           f"which takes precedence; {never}")
            continue
        fallback = deciding[1] if len(deciding) > 1 else None
        if fallback is None:
            decided_alike = False
            continue
        fallbacks.setdefault(id(fallback), (fallback, []))[1].append(scope)
        decided_alike = decided_alike and _decides_alike(rule, fallback)
    for fallback, scopes in fallbacks.values():
        if not fallback.pins_equal(rule):
            yield _warning(rule, "overlapping-rules",
                           f"{rule.host}: {_are(scopes)} also covered by {_named(fallback)}, "
                           f"with different pins; this rule takes precedence{_PRECEDENCE}")
    if fallbacks and decided_alike:
        others = " and ".join(_named(fallback) for fallback, _ in fallbacks.values())
        yield _warning(rule, "redundant-rule",
                       f"{rule.host}: {others} would decide the same names the same way, with "
                       "the same pins, mode and expiry; remove this rule or change its pins")


_PRECEDENCE = " (exact beats '*.' beats include_subdomains)"


def _scopes(rule: HostRule) -> list[tuple[str, str]]:
    """(name to look up, what it stands for) for the names a rule covers.

    A `*` label stands for any name that no exact rule names: no rule can be named `*.x`, so
    `candidates("*.x")` yields, in precedence order, the rules deciding a name one label below
    x, and `candidates("*.*.x")` those deciding a name two or more labels below x (where a
    `*.x` one-label rule no longer applies).
    """
    if not rule.is_wildcard:
        scopes = [(rule.host, rule.host)]
        if rule.include_subdomains:
            scopes.append((f"*.*.{rule.host}", f"the names below {rule.host}"))
        return scopes
    depth = "" if rule.include_subdomains else "one label "
    return [(rule.host, f"the names {depth}below {rule.base}")]


def _are(scopes: Sequence[str]) -> str:
    """`x is` or `the names below x are`: the scopes joined, with their verb."""
    plural = len(scopes) > 1 or scopes[0].startswith("the names")
    return f"{' and '.join(scopes)} {'are' if plural else 'is'}"


def _decides_alike(rule: HostRule, other: HostRule) -> bool:
    return rule.pins_equal(other) and (rule.mode, rule.expires, rule.on_expiry) == (
        other.mode, other.expires, other.on_expiry)


def _named(rule: HostRule) -> str:
    flag = " (include_subdomains)" if rule.include_subdomains else ""
    return f"{rule.host!r}{flag} at {rule.location}"


# -- a pinset that refuses nothing --------------------------------------------------------

def protects_nothing(pinset: Pinset, today: date | None = None) -> str | None:
    """The one-line warning for a pinset under which no connection is ever refused, else None.

    That is no enforced rule (none at all, or all in report mode, or, given `today`, all
    expired) while unpinned hosts are allowed, or only reported (`unpinned: block` in a
    report-mode pinset). The proxy then only adds mitmproxy's CA checks: an operator who
    meant to pin should hear so at start-up, not after an incident.
    """
    if (pinset.unpinned is Unpinned.BLOCK and pinset.mode is Mode.ENFORCE) or (
            pinset.unpinned is Unpinned.LEARN):  # a learned host's other keys are refused
        return None
    live = [rule for rule in pinset.rules if today is None or not rule.expired(today)
            or rule.on_expiry is OnExpiry.BLOCK]  # an expired rule that blocks still refuses
    if any(rule.mode is Mode.ENFORCE for rule in live):
        return None
    if not pinset.rules:
        what = "no host rules"
    elif not live:
        what = f"every rule has expired (as of {today})"
    elif len(live) < len(pinset.rules):
        what = "every rule not expired is in report mode"
    else:
        what = "every rule is in report mode"
    unpinned = ("'unpinned: allow'" if pinset.unpinned is Unpinned.ALLOW
                else "'unpinned: block' in report mode")
    return (f"{pinset.source}: {what} and {unpinned}: no connection is ever refused, the proxy "
            "enforces no pin; add enforced rules or 'unpinned: block'")


# -- look-alike names ----------------------------------------------------------------------

def _mixed_script(rule: HostRule) -> Iterator[Finding]:
    for label in rule.base.split("."):
        if (found := mixed_scripts(label)) is None:
            continue
        text, scripts = found
        spelled = f"{text!r} ({label})" if text != label else repr(label)
        yield _warning(
            rule, "mixed-script",
            f"{rule.host}: label {spelled} mixes {' and '.join(scripts)} letters, as "
            "look-alike (homograph) names do; check that this is the name you mean")


# Scripts that legitimately share a label: Japanese writes kanji with both kana, Korean hanja
# with hangul. Each is one group here, named after its first member.
_SCRIPT_GROUPS = {"CJK": "Han", "HIRAGANA": "Han", "KATAKANA": "Han",
                  "KATAKANA-HIRAGANA": "Han", "HANGUL": "Han"}


def mixed_scripts(label: str) -> tuple[str, list[str]] | None:
    """(the label in Unicode, its scripts in order of appearance) when its letters come from
    more than one script, else None.

    A letter's script is the first word of its Unicode name (`LATIN SMALL LETTER A`,
    `CYRILLIC SMALL LETTER A`): enough to tell the alphabets that homographs mix, with no
    dependency. Digits, hyphens and marks belong to no script. A label in one script only
    (`пример`) is fine; an A-label that does not decode is left to the loader.
    """
    text = label
    if label.startswith("xn--"):
        try:
            text = idna.decode(label)
        except (idna.IDNAError, UnicodeError):
            return None
    scripts: list[str] = []
    for char in text:
        if not unicodedata.category(char).startswith("L"):
            continue
        first = unicodedata.name(char, "UNKNOWN").split(" ")[0]
        script = _SCRIPT_GROUPS.get(first, first.title())
        if script not in scripts:
            scripts.append(script)
    return (text, scripts) if len(scripts) > 1 else None


# -- public suffixes -----------------------------------------------------------------------

def _public_suffix(rule: HostRule) -> Iterator[Finding]:
    if not (rule.is_wildcard or rule.include_subdomains) or is_ip_literal(rule.base):
        return
    if _is_public_suffix(rule.base):
        below = "one label below" if rule.is_wildcard and not rule.include_subdomains else "below"
        yield _warning(
            rule, "public-suffix",
            f"{rule.host}: {rule.base!r} is a public suffix: this pins every name {below} "
            f"it, owned by unrelated parties with their own CAs; pin your own domain instead "
            f"(e.g. 'example.{rule.base}' with include_subdomains)")


@cache
def _suffix_list() -> PublicSuffixList:
    """The Public Suffix List shipped inside publicsuffixlist, read from disk once.

    The package's updater (`publicsuffixlist.update`) is never run: the lint runs offline, on
    the list of the installed release. `accept_unknown=False`: a TLD the list does not know
    (`test`, `internal`) is not a suffix, although the list's default rule `*` would make
    every unknown TLD one; such a TLD is the operator's own.
    """
    return PublicSuffixList(accept_unknown=False)


@cache
def _is_public_suffix(domain: str) -> bool:
    """True when the list names `domain` itself as a public suffix (`com`, `co.uk`, `github.io`,
    and names under a wildcard rule such as `*.ck`, but not its exceptions such as `www.ck`)."""
    return _suffix_list().is_public(domain)
