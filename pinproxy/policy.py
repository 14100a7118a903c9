"""The decisions: may a connection, a request or a raw tunnel go ahead? Pure and total.

Every name the connection involves (CONNECT host, upstream SNI, client SNI) is checked on its
own; the connection passes only if each covered name finds one of its rule's pins somewhere in
the verified chain (leaf, intermediate or trust anchor). Nothing here raises for any input.

Where each decision is asked for (the adapter in `pinproxy.proxy.addon` only translates):
- `decide_handshake`: in OpenSSL's verification of each upstream handshake, the pin check;
  `refuse_unverified` when OpenSSL itself rejected the chain, `refuse_unchecked` when a
  handshake completed without reaching the check (e.g. a resumed session).
- `decide_request`: each HTTP request on a connection that passed (or had no) handshake check:
  plain http://, and a Host naming another pinned host than the one checked.
- `decide_tunnel`: a raw TCP/UDP tunnel, which is plaintext when it has no TLS.
- `refuse_on_error`, `no_pinset`: deny when there is no decision to make.
- `refusal_status`: the HTTP status a refused request is answered with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum

from pinproxy.errors import HostnameError
from pinproxy.hostnames import authority_host, is_ip_literal, normalize_host
from pinproxy.learned import NOTHING_LEARNED, Learned
from pinproxy.pins import CertificatePins, Pin
from pinproxy.pinset import HostRule, Mode, OnExpiry, Pinset, Unpinned

__all__ = [
    "Action",
    "Decision",
    "Reason",
    "decide",
    "decide_handshake",
    "decide_plaintext",
    "decide_request",
    "decide_tunnel",
    "no_pinset",
    "refusal_status",
    "refuse_on_error",
    "refuse_unchecked",
    "refuse_unverified",
]


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
    UPSTREAM_TIMEOUT = "upstream-timeout"
    FIRST_USE = "learned-on-first-use"  # the adapter records the chain's pins
    LEARN_FULL = "learn-file-full"
    RULE_EXPIRED = "rule-expired"  # a rule past `expires` with on_expiry report or block


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one connection, with everything a log line, 502 page or report needs.

    `host` and `rule` belong to the name that decided: the first that blocked, else the first
    reported, else the first checked. `expired` lists the expired rules passed over on the way
    to that decision (whatever their `on_expiry`); with `Reason.RULE_EXPIRED`, `rule` is the
    expired rule and `matched` whether its pins would still have matched.
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
    pinset: Pinset, names: Iterable[str], chain: Sequence[CertificatePins], today: date,
    learned: Learned = NOTHING_LEARNED,
) -> Decision:
    """Check every distinct name against the verified chain (leaf first); the worst result wins.

    Names no rule covers count only when no name is covered: a client that CONNECTs to an IP
    address with a pinned SNI is judged by the pinned name (the chain must satisfy it, and
    OpenSSL checked the certificate against that name), not refused as "unpinned".
    """
    chain = tuple(chain)
    results = [_decide_name(pinset, name, chain, today, learned)
               for name in dict.fromkeys(names)]
    judged = [r for r in results if r.reason is not Reason.NOT_PINNED] or results
    if not judged:
        return Decision(Action.BLOCK, Reason.INVALID_HOST, "", None, chain,
                        detail="the connection names no host")
    return max(judged, key=lambda r: _SEVERITY[r.action])


def decide_plaintext(pinset: Pinset, name: str, today: date,
                     learned: Learned = NOTHING_LEARNED) -> Decision:
    """Plain `http://` cannot be pinned: refuse it for any host a live rule covers, and for a
    host `unpinned: learn` has learned (plaintext never learns anything); a host an expired
    rule covers is decided by its `on_expiry`."""
    decision = _decide_name(pinset, name, (), today, learned)
    if decision.rule is None or decision.reason is Reason.RULE_EXPIRED:
        if decision.reason is Reason.PIN_MISMATCH:  # learned under `unpinned: learn`
            return replace(decision, reason=Reason.PLAINTEXT, detail="")
        if decision.reason in (Reason.FIRST_USE, Reason.LEARN_FULL):
            return Decision(Action.ALLOW, Reason.NOT_PINNED, decision.host, None,
                            expired=decision.expired)
        return decision
    return Decision(_action(decision.rule.mode), Reason.PLAINTEXT, decision.host, decision.rule,
                    expired=decision.expired)


def decide_handshake(pinset: Pinset | None, names: Sequence[str],
                     chain: Sequence[CertificatePins], today: date,
                     learned: Learned = NOTHING_LEARNED) -> Decision:
    """The pin check of one upstream handshake whose chain OpenSSL verified; no pinset, no
    handshake. `Reason.FIRST_USE` asks the adapter to learn the chain's pins for the host."""
    if pinset is None:
        return no_pinset(names[0] if names else "")
    return decide(pinset, names, chain, today, learned)


def refuse_unverified(names: Sequence[str], chain: Sequence[CertificatePins],
                      detail: str) -> Decision:
    """OpenSSL rejected the chain (`detail` says why): refused whatever the pins say."""
    return Decision(Action.BLOCK, Reason.CHAIN_NOT_VERIFIED, names[0] if names else "", None,
                    tuple(chain), detail=detail)


def refuse_unchecked(host: str) -> Decision:
    """A handshake that completed without reaching the pin check (e.g. a resumed session)."""
    return Decision(Action.BLOCK, Reason.INTERNAL_ERROR, host, None,
                    detail="the upstream handshake completed without a pin check")


def refuse_timed_out(host: str, seconds: float) -> Decision:
    """The upstream did not accept TCP or finish its TLS handshake in time: a handshake without
    a verdict never proceeds, so the connection is refused (fail closed)."""
    return Decision(Action.BLOCK, Reason.UPSTREAM_TIMEOUT, host, None,
                    detail=f"no upstream connection and TLS handshake within {seconds:g} s")


def decide_request(pinset: Pinset | None, scheme: str, host: str, host_header: str | None,
                   checked: Iterable[str | None], today: date,
                   learned: Learned = NOTHING_LEARNED) -> Decision | None:
    """What one HTTP request may do on a connection that passed (or had no) handshake check.

    `host` is the request's target host, `host_header` its Host header (or :authority), and
    `checked` the other names its connection's handshake was checked for (upstream and client
    SNI). None means the connection's own check covers the request. Plain `http://` is refused
    for a pinned target or Host. An https request whose Host is not among the checked names is
    judged as that host on an unverified connection: a pinned (or blocked) Host gets
    `Reason.MISDIRECTED`, answered 421 so the client retries on a connection of its own, which
    is then checked for that host.
    """
    if pinset is None:
        return no_pinset(host)
    authority = authority_host(host_header) if host_header else host
    if scheme == "http":
        for name in dict.fromkeys((host, authority)):
            decision = decide_plaintext(pinset, name, today, learned)
            if decision.is_violation:
                return decision
        return None
    names = {normalized for name in (host, *checked) if name
             if (normalized := _normalized(name)) is not None}
    if _normalized(authority) in names:
        return None
    decision = decide(pinset, [authority], (), today, learned)
    if decision.reason in (Reason.PIN_MISMATCH, Reason.FIRST_USE, Reason.LEARN_FULL) or (
        decision.reason is Reason.NOT_PINNED and decision.is_violation
    ):
        return replace(decision, reason=Reason.MISDIRECTED, detail=(
            f"the request names {decision.host}, but its connection was checked for "
            f"{', '.join(sorted(names))}"))
    return decision


def decide_tunnel(pinset: Pinset | None, host: str, encrypted: bool,
                  today: date, learned: Learned = NOTHING_LEARNED) -> Decision | None:
    """A raw tunnel to `host`: None when it is TLS (its handshake was checked), else judged as
    plaintext."""
    if encrypted:
        return None
    if pinset is None:
        return no_pinset(host)
    return decide_plaintext(pinset, host, today, learned)


def no_pinset(host: str) -> Decision:
    """The decision while no pinset is loaded: deny."""
    return Decision(Action.BLOCK, Reason.INTERNAL_ERROR, host, None,
                    detail="no pinset is loaded")


def refuse_on_error(host: str, error: BaseException) -> Decision:
    """The decision when the check itself failed: deny, and say why."""
    return Decision(Action.BLOCK, Reason.INTERNAL_ERROR, host, None,
                    detail=f"{type(error).__name__}: {error}")


def refusal_status(decision: Decision) -> int:
    """The HTTP status of the answer to a refused request: 421 (Misdirected Request) tells the
    client to retry on a new connection, which is checked for the host it names; 502 for every
    other refusal, as the upstream could not be (safely) reached."""
    return 421 if decision.reason is Reason.MISDIRECTED else 502


def _normalized(name: str) -> str | None:
    try:
        return normalize_host(name)
    except HostnameError:
        return None


def _decide_name(
    pinset: Pinset, name: str, chain: tuple[CertificatePins, ...], today: date,
    learned: Learned = NOTHING_LEARNED,
) -> Decision:
    try:
        host = normalize_host(name)
    except HostnameError as e:
        return Decision(Action.BLOCK, Reason.INVALID_HOST, name, None, chain, detail=str(e))
    expired: list[HostRule] = []
    decision = None
    for rule in pinset.candidates(host):
        if rule.expired(today):
            expired.append(rule)
            continue
        if rule.learn:
            decision = _decide_learned(host, rule, chain, learned, tuple(expired))
        else:
            decision = _decide_rule(rule, host, chain, tuple(expired))
        break
    if decision is None:
        if pinset.unpinned is Unpinned.LEARN and not is_ip_literal(host):
            decision = _decide_learned(host, None, chain, learned, tuple(expired))
        else:
            action = (_action(pinset.mode) if pinset.unpinned is Unpinned.BLOCK
                      else Action.ALLOW)
            decision = Decision(action, Reason.NOT_PINNED, host, None, chain,
                                expired=tuple(expired))
    return _on_expiry(decision, expired, chain)


def _decide_rule(rule: HostRule, host: str, chain: tuple[CertificatePins, ...],
                 expired: tuple[HostRule, ...]) -> Decision:
    matched = _first_match(rule, chain)
    if matched is not None:
        return Decision(Action.ALLOW, Reason.PIN_MATCHED, host, rule, chain, matched, expired)
    return Decision(_action(rule.mode), Reason.PIN_MISMATCH, host, rule, chain,
                    expired=expired)


def _on_expiry(decision: Decision, expired: Sequence[HostRule],
               chain: tuple[CertificatePins, ...]) -> Decision:
    """What the expired rules more specific than the deciding one add to its decision.

    Each is skipped as if absent (`allow`), so `decision` stands; `report` and `block` only
    make it stricter: a decision that lets the connection through becomes a `rule-expired`
    report (`report`) or refusal (`block`, only reported under `mode: report`, as every
    violation of such a rule is). A violation of the deciding rule (or of `unpinned: block`)
    that is at least as severe stands with its own reason. The expired rule is judged whether
    or not its pins still match: it is past its date either way, and must be renewed.
    """
    lapsed = [rule for rule in expired if rule.on_expiry is not OnExpiry.ALLOW]
    if not lapsed:
        return decision
    rule = max(lapsed, key=_expiry_severity)  # the first (most specific) of the strictest
    action = _expiry_action(rule)
    if _SEVERITY[action] <= _SEVERITY[decision.action]:  # a violation as severe stands
        return decision
    matched = _first_match(rule, chain)
    still = ("" if not chain else "; its pins still match the chain" if matched
             else "; its pins do not match the chain either")
    return Decision(action, Reason.RULE_EXPIRED, decision.host, rule, chain, matched,
                    decision.expired,
                    f"the rule expired after {rule.expires} (on_expiry: {rule.on_expiry}){still}")


def _expiry_action(rule: HostRule) -> Action:
    if rule.on_expiry is OnExpiry.BLOCK:
        return _action(rule.mode)
    return Action.REPORT if rule.on_expiry is OnExpiry.REPORT else Action.ALLOW


def _expiry_severity(rule: HostRule) -> int:
    return _SEVERITY[_expiry_action(rule)]


def _decide_learned(host: str, rule: HostRule | None, chain: tuple[CertificatePins, ...],
                    learned: Learned, expired: tuple[HostRule, ...]) -> Decision:
    """Trust on first use: a learned host is enforced against its learned SPKI pins; a new one
    is let through to be learned (`FIRST_USE`), or refused once the learn file is full."""
    entry = learned.hosts.get(host)
    if entry is not None:
        pins = entry.pins
        for cert in chain:
            if cert.spki in pins:
                return Decision(Action.ALLOW, Reason.PIN_MATCHED, host, rule, chain, cert.spki,
                                expired)
        return Decision(Action.BLOCK, Reason.PIN_MISMATCH, host, rule, chain, expired=expired,
                        detail=f"learned on first use on {entry.learned_at.date()}: "
                               f"{' '.join(str(pin) for pin in pins)}")
    if learned.full:
        return Decision(Action.BLOCK, Reason.LEARN_FULL, host, rule, chain, expired=expired,
                        detail="the learn file is full: forget or promote learned hosts")
    return Decision(Action.ALLOW, Reason.FIRST_USE, host, rule, chain, expired=expired)


def _first_match(rule: HostRule, chain: tuple[CertificatePins, ...]) -> Pin | None:
    for cert in chain:
        if cert.spki in rule.pins:
            return cert.spki
        if cert.certificate in rule.pins:
            return cert.certificate
    return None


def _action(mode: Mode) -> Action:
    return Action.BLOCK if mode is Mode.ENFORCE else Action.REPORT
