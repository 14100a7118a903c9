"""The decision: may a connection whose verified chain is known go ahead? Pure and total.

Every name the connection involves (CONNECT host, upstream SNI, client SNI) is checked on its
own; the connection passes only if each covered name finds one of its rule's pins somewhere in
the verified chain (leaf, intermediate or trust anchor). Nothing here raises for any input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from pinproxy.errors import HostnameError
from pinproxy.hostnames import normalize_host
from pinproxy.pins import CertificatePins, Pin
from pinproxy.pinset import HostRule, Mode, Pinset, Unpinned

__all__ = ["Action", "Decision", "Reason", "decide", "decide_plaintext", "refuse_on_error"]


class Action(StrEnum):
    ALLOW = "allowed"
    REPORT = "reported"  # a violation that report mode lets through
    BLOCK = "blocked"


class Reason(StrEnum):
    PIN_MATCHED = "pin-matched"
    NOT_PINNED = "host-not-pinned"
    PIN_MISMATCH = "pin-mismatch"
    PLAINTEXT = "plaintext-to-pinned-host"
    MISDIRECTED = "host-not-checked-on-this-connection"
    CHAIN_NOT_VERIFIED = "chain-not-verified"
    INVALID_HOST = "invalid-host"
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one connection, with everything a log line, 502 page or report needs.

    `host` and `rule` belong to the name that decided: the first that blocked, else the first
    reported, else the first checked. `expired` lists rules skipped because they had expired.
    """

    action: Action
    reason: Reason
    host: str
    rule: HostRule | None
    chain: tuple[CertificatePins, ...] = ()
    matched: Pin | None = None
    expired: tuple[HostRule, ...] = ()
    detail: str = ""

    @property
    def proceeds(self) -> bool:
        """True when the connection goes ahead: allowed, or a violation that report mode lets
        through. Not the same as `action is Action.ALLOW`."""
        return self.action is not Action.BLOCK

    @property
    def is_violation(self) -> bool:
        return self.action is not Action.ALLOW


_SEVERITY = {Action.ALLOW: 0, Action.REPORT: 1, Action.BLOCK: 2}


def decide(
    pinset: Pinset, names: Iterable[str], chain: Sequence[CertificatePins], today: date
) -> Decision:
    """Check every distinct name against the verified chain (leaf first); the worst result wins.

    Names no rule covers count only when no name is covered: a client that CONNECTs to an IP
    address with a pinned SNI is judged by the pinned name (the chain must satisfy it, and
    OpenSSL checked the certificate against that name), not refused as "unpinned".
    """
    chain = tuple(chain)
    results = [_decide_name(pinset, name, chain, today) for name in dict.fromkeys(names)]
    judged = [r for r in results if r.reason is not Reason.NOT_PINNED] or results
    if not judged:
        return Decision(Action.BLOCK, Reason.INVALID_HOST, "", None, chain,
                        detail="the connection names no host")
    return max(judged, key=lambda r: _SEVERITY[r.action])


def decide_plaintext(pinset: Pinset, name: str, today: date) -> Decision:
    """Plain `http://` cannot be pinned: refuse it for any host a live rule covers."""
    decision = _decide_name(pinset, name, (), today)
    if decision.rule is None:
        return decision
    return Decision(_action(decision.rule.mode), Reason.PLAINTEXT, decision.host, decision.rule,
                    expired=decision.expired)


def refuse_on_error(host: str, error: BaseException) -> Decision:
    """The decision when the check itself failed: deny, and say why."""
    return Decision(Action.BLOCK, Reason.INTERNAL_ERROR, host, None,
                    detail=f"{type(error).__name__}: {error}")


def _decide_name(
    pinset: Pinset, name: str, chain: tuple[CertificatePins, ...], today: date
) -> Decision:
    try:
        host = normalize_host(name)
    except HostnameError as e:
        return Decision(Action.BLOCK, Reason.INVALID_HOST, name, None, chain, detail=str(e))
    expired: list[HostRule] = []
    for rule in pinset.candidates(host):
        if rule.expired(today):
            expired.append(rule)
            continue
        matched = _first_match(rule, chain)
        if matched is not None:
            return Decision(Action.ALLOW, Reason.PIN_MATCHED, host, rule, chain, matched,
                            tuple(expired))
        return Decision(_action(rule.mode), Reason.PIN_MISMATCH, host, rule, chain,
                        expired=tuple(expired))
    if pinset.unpinned is Unpinned.BLOCK:
        return Decision(_action(pinset.mode), Reason.NOT_PINNED, host, None, chain,
                        expired=tuple(expired))
    return Decision(Action.ALLOW, Reason.NOT_PINNED, host, None, chain, expired=tuple(expired))


def _first_match(rule: HostRule, chain: tuple[CertificatePins, ...]) -> Pin | None:
    for cert in chain:
        if cert.spki in rule.pins:
            return cert.spki
        if cert.certificate in rule.pins:
            return cert.certificate
    return None


def _action(mode: Mode) -> Action:
    return Action.BLOCK if mode is Mode.ENFORCE else Action.REPORT
