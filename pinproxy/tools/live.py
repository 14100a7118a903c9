"""`pinproxy check --live`: compare each exact host rule with the host's current chain.

Lint reads the pinset alone; this connects to every exactly named host (port 443, unless a
`--connect-to` says otherwise: a rule has no port) and asks what the proxy would do with the
chain the host serves today, through `policy.decide`, so "would it pass" is decided in one place.
Wildcard rules are skipped: there is no one name to connect to.

Which pins are stale and which are backups cannot be told apart from one chain: a pin outside
the chain is exactly what a backup is (RFC 7469). So a rule that matches has its outside pins
taken as backups (and `live-no-backup` when it has none); only when nothing matches is every
pin of the rule reported as stale.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pinproxy.errors import PinproxyError
from pinproxy.pins import CertificatePins
from pinproxy.pinset import HostRule, Pinset
from pinproxy.policy import Action, Reason, decide
from pinproxy.tools.lint import Finding, Severity
from pinproxy.tools.probe import ConnectOverride, ProbeResult, probe_many
from pinproxy.tools.render import printable

__all__ = ["LIVE_CODES", "live_findings", "rule_findings"]

PORT = 443

#: Every code `live_findings` can report, with what it means (for `check --help` and the README).
LIVE_CODES = {
    "live-no-pin-matches": "no pin of an exact host rule is in the host's verified chain today",
    "live-unverified": "the host's chain does not verify, so the proxy refuses it",
    "live-unreachable": "the host could not be reached to check it",
    "live-stale-pin": "a pin of a rule that no longer matches names a key the host no longer has",
    "live-no-backup": "every pin of a rule is in the live chain: no backup survives a rotation",
    "live-skipped-pattern": "a '*.' rule names no one host to connect to, so it is not checked",
}


def live_findings(pinset: Pinset, *, upstream_ca: str | None = None,
                  connect_to: Sequence[ConnectOverride] = (), timeout: float = 10.0,
                  today: dt.date | None = None) -> list[Finding]:
    """Findings for every rule, in rule (file) order; hosts are probed concurrently.

    Raises `PinproxyError` only for a bad `upstream_ca`; an unreachable host is a finding.
    """
    day = today or dt.datetime.now(dt.UTC).date()
    exact = [rule for rule in pinset.rules if not rule.is_wildcard]
    results = dict(zip(
        (rule.host for rule in exact),
        probe_many([(rule.host, PORT) for rule in exact], ca_file=upstream_ca, timeout=timeout,
                   connect_to=connect_to),
        strict=True))
    findings: list[Finding] = []
    for rule in pinset.rules:
        if rule.is_wildcard:
            findings.append(_finding(
                rule, Severity.WARNING, "live-skipped-pattern",
                f"{rule.host}: not checked live: a '*.' rule names no one host; check a host "
                "it covers with 'pinproxy pin HOST'"))
        else:
            findings.extend(rule_findings(pinset, rule, results[rule.host], day))
    return findings


def rule_findings(pinset: Pinset, rule: HostRule, probed: ProbeResult | PinproxyError,
                  today: dt.date) -> list[Finding]:
    """What one exact rule's live probe says: pure, so it is tested without a network."""
    if isinstance(probed, PinproxyError):
        return [_finding(rule, Severity.ERROR, "live-unreachable",
                         f"{rule.host}: cannot check live: {probed}")]
    if not probed.verified:
        return [_finding(rule, Severity.ERROR, "live-unverified",
                         f"{rule.host}: the live chain does not verify ({probed.error}), so "
                         "the proxy refuses every connection to it")]
    chain = probed.verified
    seen = {pin for cert in chain for pin in (cert.spki, cert.certificate)}
    outside = sorted((pin for pin in rule.pins if pin not in seen), key=str)
    findings: list[Finding] = []
    decision = decide(pinset, [rule.host], chain, today)
    if decision.reason is Reason.PIN_MISMATCH:
        verb = "refuse" if decision.action is Action.BLOCK else "report"
        deciding = decision.rule or rule
        where = "" if deciding is rule else f" (by the rule at {deciding.location})"
        findings.append(_finding(
            rule, Severity.ERROR, "live-no-pin-matches",
            f"{rule.host}: no pin matches the live chain, so the proxy would {verb} it "
            f"today{where}; live chain: {_chain_text(chain)}"))
    if len(outside) == len(rule.pins):
        findings += [_finding(rule, Severity.WARNING, "live-stale-pin",
                              f"{rule.host}: pin {pin} is in no certificate of the live "
                              "chain: if the host rotated this key, check the new chain with "
                              f"'pinproxy pin {rule.host}' before replacing the pin")
                     for pin in outside]
    elif not outside:
        findings.append(_finding(
            rule, Severity.WARNING, "live-no-backup",
            f"{rule.host}: every pin is in the live chain, so a key rotation leaves no pin "
            "that matches: add a backup pin ('pinproxy backup-key')"))
    return findings


def _chain_text(chain: Sequence[CertificatePins]) -> str:
    return ", ".join(f"{depth}: {cert.spki} ({printable(cert.subject)})"
                     for depth, cert in enumerate(chain))


def _finding(rule: HostRule, severity: Severity, code: str, message: str) -> Finding:
    return Finding(severity, code, message, rule.location, rule.host)
