"""Tests of `pinproxy.policy`: the allow / report / block decision for real certificate chains.

Chains are built from trustme certificates: a root CA, a child CA (`create_child_ca`) and a
leaf, plus an unrelated CA that issues for the same host (a mis-issuing CA). Every allowing
case has a blocking twin that differs only in the chain, the rule or the date.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import pytest

from pinproxy.pins import CertificatePins, Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.policy import (
    Action,
    Decision,
    Reason,
    decide,
    decide_plaintext,
    refuse_on_error,
)
from tests import certs

TODAY = date(2026, 3, 14)
HOST = certs.HOST  # api.example
BACKUP = Pin(PinKind.SPKI, hashlib.sha256(b"hello").digest())  # matches no key


def good_chain() -> tuple[CertificatePins, ...]:
    return certs.pki("a").chain


def rogue_chain() -> tuple[CertificatePins, ...]:
    """Another CA's chain for the same host name: what a mis-issuing CA would serve."""
    return certs.pki("rogue").chain


def rule(host: str, pins: set[Pin], line: int = 3, **kwargs: object) -> HostRule:
    return HostRule(host=host, pins=tuple(pins), location=Location("pins.yaml", line),
                    **kwargs)  # type: ignore[arg-type]


def pinset(*rules: HostRule, mode: Mode = Mode.ENFORCE,
           unpinned: Unpinned = Unpinned.ALLOW) -> Pinset:
    return Pinset(rules=rules, source="pins.yaml", mode=mode, unpinned=unpinned)


# -- which certificate of the chain is pinned ----------------------------------------------

POSITIONS = {
    "leaf-spki": lambda chain: chain[0].spki,
    "intermediate-spki": lambda chain: chain[1].spki,
    "root-spki": lambda chain: chain[2].spki,
    "leaf-certificate": lambda chain: chain[0].certificate,
    "root-certificate": lambda chain: chain[2].certificate,
}


@pytest.mark.parametrize("position", POSITIONS)
def test_a_pin_anywhere_in_the_verified_chain_allows(position: str) -> None:
    pinned = POSITIONS[position](good_chain())
    host_rule = rule(HOST, {pinned, BACKUP})
    decision = decide(pinset(host_rule), [HOST], good_chain(), TODAY)
    assert decision.action is Action.ALLOW and decision.proceeds and not decision.is_violation
    assert decision.reason is Reason.PIN_MATCHED
    assert decision.matched == pinned
    assert decision.rule is host_rule and decision.host == HOST
    assert decision.chain == good_chain()


@pytest.mark.parametrize("position", POSITIONS)
def test_the_same_rule_blocks_a_mis_issued_chain(position: str) -> None:
    host_rule = rule(HOST, {POSITIONS[position](good_chain()), BACKUP})
    decision = decide(pinset(host_rule), [HOST], rogue_chain(), TODAY)
    assert decision.action is Action.BLOCK and not decision.proceeds and decision.is_violation
    assert decision.reason is Reason.PIN_MISMATCH
    assert decision.matched is None
    assert decision.rule is host_rule and decision.host == HOST
    assert decision.chain == rogue_chain()


def test_a_whole_certificate_pin_allows_only_that_certificate() -> None:
    chain = good_chain()
    reissued = certs.pki("a").second_chain  # same CA, same host, another certificate
    host_rule = rule(HOST, {chain[0].certificate})
    assert decide(pinset(host_rule), [HOST], chain, TODAY).action is Action.ALLOW
    blocked = decide(pinset(host_rule), [HOST], reissued, TODAY)
    assert (blocked.action, blocked.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)


def test_pin_kinds_never_cross() -> None:
    # An SPKI pin whose digest is the certificate hash (and the converse) matches nothing.
    chain = good_chain()
    for pin in (Pin(PinKind.SPKI, chain[0].certificate.digest),
                Pin(PinKind.CERTIFICATE, chain[0].spki.digest)):
        decision = decide(pinset(rule(HOST, {pin})), [HOST], chain, TODAY)
        assert decision.reason is Reason.PIN_MISMATCH


def test_names_are_normalised_before_lookup() -> None:
    host_rule = rule(HOST, {good_chain()[2].spki})
    for name in ("API.Example.", "api.example", " api.example "):
        decision = decide(pinset(host_rule), [name], rogue_chain(), TODAY)
        assert (decision.action, decision.host) == (Action.BLOCK, HOST)


def test_wildcard_and_subdomain_rules_apply_through_decide() -> None:
    root = good_chain()[2].spki
    rules = pinset(rule("*.example", {root}), rule("corp.example", {root},
                                                   include_subdomains=True))
    for name in ("api.example", "a.b.corp.example"):
        assert decide(rules, [name], good_chain(), TODAY).action is Action.ALLOW
        assert decide(rules, [name], rogue_chain(), TODAY).action is Action.BLOCK
    # twin: a name no rule covers passes on CA validation alone
    unpinned = decide(rules, ["a.b.example"], rogue_chain(), TODAY)
    assert (unpinned.action, unpinned.reason) == (Action.ALLOW, Reason.NOT_PINNED)


# -- report mode ---------------------------------------------------------------------------

def test_report_mode_rule_reports_a_mismatch_and_lets_it_through() -> None:
    host_rule = rule(HOST, {good_chain()[2].spki}, mode=Mode.REPORT)
    decision = decide(pinset(host_rule), [HOST], rogue_chain(), TODAY)
    assert (decision.action, decision.reason) == (Action.REPORT, Reason.PIN_MISMATCH)
    assert decision.proceeds and decision.is_violation
    # twin: a matching chain is a plain allow, no violation
    ok = decide(pinset(host_rule), [HOST], good_chain(), TODAY)
    assert (ok.action, ok.is_violation) == (Action.ALLOW, False)


def test_an_enforce_rule_in_a_report_mode_pinset_still_blocks() -> None:
    host_rule = rule(HOST, {good_chain()[2].spki}, mode=Mode.ENFORCE)
    decision = decide(pinset(host_rule, mode=Mode.REPORT), [HOST], rogue_chain(), TODAY)
    assert decision.action is Action.BLOCK


# -- expiry --------------------------------------------------------------------------------

@pytest.mark.parametrize(("expires", "action"), [
    (TODAY + timedelta(days=1), Action.BLOCK),
    (TODAY, Action.BLOCK),                      # the expiry date is the last enforced day
    (TODAY - timedelta(days=1), Action.ALLOW),  # from the next day on, the rule is skipped
], ids=["tomorrow", "today", "yesterday"])
def test_expires_is_the_last_enforced_day(expires: date, action: Action) -> None:
    host_rule = rule(HOST, {good_chain()[2].spki}, expires=expires)
    decision = decide(pinset(host_rule), [HOST], rogue_chain(), TODAY)
    assert decision.action is action
    assert decision.expired == (() if action is Action.BLOCK else (host_rule,))


def test_an_expired_rule_falls_through_to_a_less_specific_live_rule() -> None:
    old = rule(HOST, {BACKUP}, line=3, expires=TODAY - timedelta(days=1))
    parent = rule("example", {good_chain()[2].spki}, line=7, include_subdomains=True)
    allowed = decide(pinset(old, parent), [HOST], good_chain(), TODAY)
    assert (allowed.action, allowed.rule, allowed.expired) == (Action.ALLOW, parent, (old,))
    # twin: the live parent rule still blocks a mis-issued chain
    blocked = decide(pinset(old, parent), [HOST], rogue_chain(), TODAY)
    assert (blocked.action, blocked.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)
    assert (blocked.rule, blocked.expired) == (parent, (old,))


@pytest.mark.parametrize(("unpinned", "action"), [
    (Unpinned.BLOCK, Action.BLOCK),
    (Unpinned.ALLOW, Action.ALLOW),
])
def test_an_expired_rule_leaves_the_host_to_the_unpinned_policy(unpinned: Unpinned,
                                                                 action: Action) -> None:
    old = rule(HOST, {good_chain()[2].spki}, expires=TODAY - timedelta(days=30))
    decision = decide(pinset(old, unpinned=unpinned), [HOST], good_chain(), TODAY)
    assert (decision.action, decision.reason) == (action, Reason.NOT_PINNED)
    assert decision.rule is None and decision.expired == (old,)


# -- unpinned hosts ------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "unpinned", "action"), [
    (Mode.ENFORCE, Unpinned.ALLOW, Action.ALLOW),
    (Mode.ENFORCE, Unpinned.BLOCK, Action.BLOCK),
    (Mode.REPORT, Unpinned.ALLOW, Action.ALLOW),
    (Mode.REPORT, Unpinned.BLOCK, Action.REPORT),
])
def test_unpinned_hosts(mode: Mode, unpinned: Unpinned, action: Action) -> None:
    rules = pinset(rule(HOST, {good_chain()[2].spki}), mode=mode, unpinned=unpinned)
    decision = decide(rules, ["other.example"], good_chain(), TODAY)
    assert (decision.action, decision.reason, decision.rule) == (action, Reason.NOT_PINNED, None)
    assert decision.host == "other.example"


# -- several names -------------------------------------------------------------------------

@pytest.mark.parametrize("names", [
    [HOST, "other.example"],
    ["other.example", HOST],
    ["10.1.2.3", "other.example", HOST],
    [HOST, "API.example", "other.example"],
], ids=["pinned-first", "pinned-last", "ip-connect-host", "duplicates"])
def test_one_pinned_name_that_fails_blocks_the_connection(names: list[str]) -> None:
    host_rule = rule(HOST, {good_chain()[2].spki})
    blocked = decide(pinset(host_rule), names, rogue_chain(), TODAY)
    assert (blocked.action, blocked.reason, blocked.host) == (Action.BLOCK, Reason.PIN_MISMATCH,
                                                              HOST)
    assert blocked.rule is host_rule
    # twin: the pinned chain passes for the same names
    allowed = decide(pinset(host_rule), names, good_chain(), TODAY)
    assert allowed.action is Action.ALLOW


def test_two_pinned_names_must_both_be_satisfied() -> None:
    good_root, rogue_root = good_chain()[2].spki, rogue_chain()[2].spki
    rules = pinset(rule(HOST, {good_root}, line=3), rule("cdn.example", {rogue_root}, line=6))
    decision = decide(rules, [HOST, "cdn.example"], good_chain(), TODAY)
    assert (decision.action, decision.host, decision.rule) == (Action.BLOCK, "cdn.example",
                                                               rules.rules[1])
    both = pinset(rule(HOST, {good_root}), rule("cdn.example", {good_root, rogue_root}))
    assert decide(both, [HOST, "cdn.example"], good_chain(), TODAY).action is Action.ALLOW


def test_a_block_outranks_a_report_and_the_first_report_is_kept() -> None:
    root = good_chain()[2].spki
    rules = pinset(rule("r1.example", {root}, mode=Mode.REPORT),
                   rule("r2.example", {root}, mode=Mode.REPORT),
                   rule("b.example", {root}))
    reported = decide(rules, ["r1.example", "r2.example"], rogue_chain(), TODAY)
    assert (reported.action, reported.host) == (Action.REPORT, "r1.example")
    blocked = decide(rules, ["r1.example", "b.example", "r2.example"], rogue_chain(), TODAY)
    assert (blocked.action, blocked.host) == (Action.BLOCK, "b.example")


# -- no decision possible: deny ------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "exa mple.com", "-bad.example", "a..b", "x" * 300, "[::1",
                                  "evil.example\r\nX-Injected: 1"])
def test_an_invalid_host_is_blocked(name: str) -> None:
    decision = decide(pinset(unpinned=Unpinned.ALLOW), [name], good_chain(), TODAY)
    assert (decision.action, decision.reason) == (Action.BLOCK, Reason.INVALID_HOST)
    assert decision.rule is None and decision.detail
    # even when every other name is fine
    mixed = decide(pinset(), ["ok.example", name], good_chain(), TODAY)
    assert mixed.action is Action.BLOCK


def test_no_name_at_all_is_blocked() -> None:
    decision = decide(pinset(), [], good_chain(), TODAY)
    assert (decision.action, decision.reason) == (Action.BLOCK, Reason.INVALID_HOST)
    assert decide(pinset(), iter(()), (), TODAY).action is Action.BLOCK
    assert decide(pinset(), ["ok.example"], good_chain(), TODAY).action is Action.ALLOW  # twin


def test_an_empty_chain_for_a_pinned_host_is_blocked() -> None:
    rules = pinset(rule(HOST, {good_chain()[2].spki}))
    decision = decide(rules, [HOST], (), TODAY)
    assert (decision.action, decision.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)
    # twin: an unpinned host under unpinned: allow does not need pins
    assert decide(rules, ["other.example"], (), TODAY).action is Action.ALLOW


def test_refuse_on_error_denies_and_says_why() -> None:
    decision = refuse_on_error(HOST, RuntimeError("boom"))
    assert (decision.action, decision.reason, decision.host) == (Action.BLOCK,
                                                                 Reason.INTERNAL_ERROR, HOST)
    assert decision.detail == "RuntimeError: boom"
    assert not decision.proceeds


def test_decide_accepts_any_iterable_and_sequence() -> None:
    rules = pinset(rule(HOST, {good_chain()[2].spki}))
    decision = decide(rules, (n for n in [HOST]), list(good_chain()), TODAY)
    assert decision.action is Action.ALLOW
    assert isinstance(decision.chain, tuple)


# -- plain http:// -------------------------------------------------------------------------

def test_plaintext_to_a_pinned_host_is_refused() -> None:
    host_rule = rule(HOST, {good_chain()[2].spki})
    decision = decide_plaintext(pinset(host_rule), "API.example", TODAY)
    assert (decision.action, decision.reason, decision.host) == (Action.BLOCK, Reason.PLAINTEXT,
                                                                 HOST)
    assert decision.rule is host_rule


@pytest.mark.parametrize(("rules", "name", "expected"), [
    (pinset(rule(HOST, {BACKUP})), "other.example", (Action.ALLOW, Reason.NOT_PINNED)),
    (pinset(rule(HOST, {BACKUP}), unpinned=Unpinned.BLOCK), "other.example",
     (Action.BLOCK, Reason.NOT_PINNED)),
    (pinset(rule(HOST, {BACKUP}, mode=Mode.REPORT)), HOST, (Action.REPORT, Reason.PLAINTEXT)),
    (pinset(rule(HOST, {BACKUP}, expires=TODAY - timedelta(days=1))), HOST,
     (Action.ALLOW, Reason.NOT_PINNED)),
    (pinset(rule("example", {BACKUP}, include_subdomains=True)), HOST,
     (Action.BLOCK, Reason.PLAINTEXT)),
    (pinset(), "bad host", (Action.BLOCK, Reason.INVALID_HOST)),
], ids=["unpinned-allow", "unpinned-block", "report-rule", "expired-rule", "parent-rule",
        "invalid-host"])
def test_decide_plaintext(rules: Pinset, name: str, expected: tuple[Action, Reason]) -> None:
    decision = decide_plaintext(rules, name, TODAY)
    assert (decision.action, decision.reason) == expected


def test_decision_is_immutable() -> None:
    decision = decide(pinset(), ["ok.example"], (), TODAY)
    with pytest.raises(AttributeError):
        decision.action = Action.BLOCK  # type: ignore[misc]
    assert isinstance(decision, Decision)
