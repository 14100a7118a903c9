"""Tests of `pinproxy.policy`: the allow / report / block decision for real certificate chains.

Chains are built from trustme certificates: a root CA, a child CA (`create_child_ca`) and a
leaf, plus an unrelated CA that issues for the same host (a mis-issuing CA). Every allowing
case has a blocking twin that differs only in the chain, the rule or the date.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import pytest

from pinproxy.hostnames import authority_host
from pinproxy.pins import CertificatePins, Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, OnExpiry, Pinset, Unpinned
from pinproxy.policy import (
    Action,
    Decision,
    Reason,
    decide,
    decide_handshake,
    decide_plaintext,
    decide_request,
    decide_tunnel,
    no_pinset,
    refusal_status,
    refuse_on_error,
    refuse_timed_out,
    refuse_unchecked,
    refuse_unverified,
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
    host_rule = rule(HOST, {good_chain()[2].spki}, expires=expires, on_expiry=OnExpiry.ALLOW)
    decision = decide(pinset(host_rule), [HOST], rogue_chain(), TODAY)
    assert decision.action is action
    assert decision.expired == (() if action is Action.BLOCK else (host_rule,))


def test_an_expired_rule_falls_through_to_a_less_specific_live_rule() -> None:
    old = rule(HOST, {BACKUP}, line=3, expires=TODAY - timedelta(days=1), on_expiry=OnExpiry.ALLOW)
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
    old = rule(HOST, {good_chain()[2].spki}, expires=TODAY - timedelta(days=30),
               on_expiry=OnExpiry.ALLOW)
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
    (pinset(rule(HOST, {BACKUP}, expires=TODAY - timedelta(days=1),
             on_expiry=OnExpiry.ALLOW)), HOST,
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


# -- the handshake: no pinset, OpenSSL's verdict, no verdict at all -------------------------

def test_decide_handshake_checks_the_chain_and_refuses_without_a_pinset() -> None:
    rules = pinset(rule(HOST, {good_chain()[2].spki}))
    allowed = decide_handshake(rules, [HOST, "10.0.0.1"], good_chain(), TODAY)
    assert (allowed.action, allowed.reason, allowed.chain) == (Action.ALLOW, Reason.PIN_MATCHED,
                                                               good_chain())
    blocked = decide_handshake(rules, [HOST, "10.0.0.1"], rogue_chain(), TODAY)
    assert (blocked.action, blocked.host, blocked.chain) == (Action.BLOCK, HOST, rogue_chain())
    # no pinset loaded: the good chain is refused too, naming the first host
    unloaded = decide_handshake(None, [HOST, "10.0.0.1"], good_chain(), TODAY)
    assert (unloaded.action, unloaded.reason, unloaded.host) == (Action.BLOCK,
                                                                 Reason.INTERNAL_ERROR, HOST)
    assert unloaded.detail == "no pinset is loaded" and unloaded == no_pinset(HOST)
    assert decide_handshake(None, [], (), TODAY).host == ""


def test_refuse_unverified_keeps_the_chain_and_openssls_reason() -> None:
    decision = refuse_unverified([HOST, "10.0.0.1"], list(good_chain()), "hostname mismatch")
    assert (decision.action, decision.reason, decision.host) == (
        Action.BLOCK, Reason.CHAIN_NOT_VERIFIED, HOST)
    assert decision.chain == good_chain() and decision.detail == "hostname mismatch"
    assert refuse_unverified([], (), "x").host == ""


def test_refuse_unchecked_denies_a_handshake_without_a_verdict() -> None:
    decision = refuse_unchecked(HOST)
    assert (decision.action, decision.reason, decision.host) == (Action.BLOCK,
                                                                 Reason.INTERNAL_ERROR, HOST)
    assert decision.detail == "the upstream handshake completed without a pin check"


@pytest.mark.parametrize(("seconds", "shown"), [(10.0, "10 s"), (0.5, "0.5 s"), (1.25, "1.25 s")])
def test_refuse_timed_out_denies_an_upstream_without_a_verdict(seconds: float,
                                                                shown: str) -> None:
    decision = refuse_timed_out(HOST, seconds)
    assert (decision.action, decision.reason, decision.host, decision.rule, decision.chain) == (
        Action.BLOCK, Reason.UPSTREAM_TIMEOUT, HOST, None, ())
    assert not decision.proceeds
    assert decision.detail == f"no upstream connection and TLS handshake within {shown}"
    assert refusal_status(decision) == 502


# -- a request on a connection that passed (or had no) check --------------------------------

ROOT = good_chain()[2].spki
EXPIRED = rule(HOST, {ROOT}, line=3, expires=TODAY - timedelta(days=1), on_expiry=OnExpiry.ALLOW)
PINNED = pinset(rule(HOST, {ROOT}), rule("cdn.example", {ROOT}, line=6))


@pytest.mark.parametrize(("scheme", "host", "host_header", "checked", "expected"), [
    # https, Host among the names the handshake was checked for: the check covers it
    ("https", HOST, None, (HOST, HOST), None),
    ("https", HOST, "API.Example.:443", (HOST, None), None),
    ("https", "10.0.0.1", HOST, (HOST, None), None),          # pinned SNI, IP CONNECT host
    ("https", "10.0.0.1", "[::1]:443", ("::1", None), None),
    # twins: Host names another host than the connection was checked for
    ("https", "unpinned.example", HOST, ("unpinned.example", None),
     (Action.BLOCK, Reason.MISDIRECTED, HOST, 421)),
    ("https", HOST, "cdn.example", (HOST, HOST), (Action.BLOCK, Reason.MISDIRECTED,
                                                  "cdn.example", 421)),
    ("https", HOST, "other.example", (HOST, HOST), (Action.ALLOW, Reason.NOT_PINNED,
                                                    "other.example", 502)),
    ("https", HOST, "bad host", (HOST, HOST), (Action.BLOCK, Reason.INVALID_HOST, "bad host",
                                               502)),
    # plain http:// to a pinned target or Host, and its unpinned twin
    ("http", HOST, None, (None, None), (Action.BLOCK, Reason.PLAINTEXT, HOST, 502)),
    ("http", "other.example", "api.example:80", (None, None),
     (Action.BLOCK, Reason.PLAINTEXT, HOST, 502)),
    ("http", "other.example", None, (None, None), None),
    ("http", "other.example", "other.example:8080", (None, None), None),
], ids=["same-host", "same-host-spelled-otherwise", "sni-covers-ip", "ipv6-host-header",
        "pinned-host-on-unpinned-connection", "other-pinned-host", "unpinned-host",
        "invalid-host-header", "http-pinned", "http-pinned-host-header", "http-unpinned",
        "http-unpinned-host-header"])
def test_decide_request(scheme: str, host: str, host_header: str | None,
                        checked: tuple[str | None, str | None],
                        expected: tuple[Action, Reason, str, int] | None) -> None:
    decision = decide_request(PINNED, scheme, host, host_header, checked, TODAY)
    if expected is None:
        assert decision is None
        return
    assert decision is not None
    assert (decision.action, decision.reason, decision.host,
            refusal_status(decision)) == expected
    assert decision.chain == ()  # a request proves nothing about a chain


def test_a_misdirected_refusal_names_the_rule_and_the_checked_names() -> None:
    decision = decide_request(PINNED, "https", "Unpinned.example", HOST,
                              ("unpinned.example", "bad host"), TODAY)
    assert decision is not None and decision.rule is PINNED.rules[0]
    assert decision.detail == ("the request names api.example, but its connection was checked "
                               "for unpinned.example")
    # a name that does not normalise checks nothing, so it cannot cover a Host either
    invalid = decide_request(PINNED, "https", "unpinned.example", "bad host",
                             ("bad host", None), TODAY)
    assert invalid is not None and invalid.reason is Reason.INVALID_HOST


@pytest.mark.parametrize(("unpinned", "mode", "expected"), [
    (Unpinned.BLOCK, Mode.ENFORCE, (Action.BLOCK, Reason.MISDIRECTED)),
    (Unpinned.BLOCK, Mode.REPORT, (Action.REPORT, Reason.MISDIRECTED)),
    (Unpinned.ALLOW, Mode.ENFORCE, (Action.ALLOW, Reason.NOT_PINNED)),
])
def test_a_blocked_unpinned_host_header_is_misdirected(unpinned: Unpinned, mode: Mode,
                                                       expected: tuple[Action, Reason]) -> None:
    rules = pinset(rule(HOST, {ROOT}), unpinned=unpinned, mode=mode)
    decision = decide_request(rules, "https", HOST, "other.example", (HOST, None), TODAY)
    assert decision is not None and (decision.action, decision.reason) == expected


def test_a_request_decision_carries_the_expired_rules() -> None:
    parent = rule("example", {ROOT}, line=7, include_subdomains=True)
    rules = pinset(EXPIRED, parent)
    misdirected = decide_request(rules, "https", "other.test", HOST, (None, None), TODAY)
    assert misdirected is not None and misdirected.reason is Reason.MISDIRECTED
    assert (misdirected.rule, misdirected.expired) == (parent, (EXPIRED,))
    plaintext = decide_request(rules, "http", HOST, None, (None, None), TODAY)
    assert plaintext is not None and (plaintext.rule, plaintext.expired) == (parent, (EXPIRED,))
    # twin: with only the expired rule, plain http:// to the host passes
    assert decide_request(pinset(EXPIRED), "http", HOST, None, (None, None), TODAY) is None


def test_a_request_without_a_pinset_is_refused() -> None:
    for scheme in ("http", "https"):
        decision = decide_request(None, scheme, HOST, HOST, (HOST, HOST), TODAY)
        assert decision == no_pinset(HOST) and refusal_status(decision) == 502
    assert decide_request(pinset(), "https", HOST, HOST, (HOST, HOST), TODAY) is None  # twin


def test_a_report_mode_plaintext_request_is_reported_not_refused() -> None:
    rules = pinset(rule(HOST, {ROOT}, mode=Mode.REPORT))
    decision = decide_request(rules, "http", HOST, None, (None, None), TODAY)
    assert decision is not None and decision.action is Action.REPORT and decision.proceeds


# -- a raw tunnel ---------------------------------------------------------------------------

@pytest.mark.parametrize(("rules", "host", "encrypted", "expected"), [
    (PINNED, HOST, True, None),                                 # its handshake was checked
    (PINNED, HOST, False, (Action.BLOCK, Reason.PLAINTEXT)),
    (PINNED, "other.example", False, (Action.ALLOW, Reason.NOT_PINNED)),
    (pinset(EXPIRED), HOST, False, (Action.ALLOW, Reason.NOT_PINNED)),
    (pinset(unpinned=Unpinned.BLOCK), "other.example", False, (Action.BLOCK,
                                                                Reason.NOT_PINNED)),
    (None, HOST, True, None),
    (None, HOST, False, (Action.BLOCK, Reason.INTERNAL_ERROR)),
    (PINNED, "", False, (Action.BLOCK, Reason.INVALID_HOST)),
], ids=["tls", "plaintext-pinned", "plaintext-unpinned", "plaintext-expired",
        "plaintext-unpinned-block", "no-pinset-tls", "no-pinset-plaintext", "no-host"])
def test_decide_tunnel(rules: Pinset | None, host: str, encrypted: bool,
                       expected: tuple[Action, Reason] | None) -> None:
    decision = decide_tunnel(rules, host, encrypted, TODAY)
    if expected is None:
        assert decision is None
        return
    assert decision is not None and (decision.action, decision.reason) == expected


def test_a_plaintext_tunnel_carries_the_rule_and_expired_rules() -> None:
    parent = rule("example", {ROOT}, line=7, include_subdomains=True)
    decision = decide_tunnel(pinset(EXPIRED, parent), HOST, False, TODAY)
    assert decision is not None
    assert (decision.host, decision.rule, decision.expired) == (HOST, parent, (EXPIRED,))


# -- the status of a refused request --------------------------------------------------------

@pytest.mark.parametrize(("reason", "status"), [
    (Reason.MISDIRECTED, 421),
    *((reason, 502) for reason in Reason if reason is not Reason.MISDIRECTED),
])
def test_refusal_status(reason: Reason, status: int) -> None:
    assert refusal_status(Decision(Action.BLOCK, reason, HOST, None)) == status


@pytest.mark.parametrize(("authority", "host"), [
    ("api.example", "api.example"),
    ("api.example:8443", "api.example"),
    ("[::1]:443", "::1"),
    ("[::1]", "::1"),
    ("[::1]]:443", "::1"),  # the host ends at the first "]": the rest is never part of it
    ("::1", ":"),  # an unbracketed IPv6 Host is malformed: its last group reads as a port
    ("api.example:", "api.example:"),  # no port digits: left for the name check to refuse
    (":443", ":443"),
])
def test_authority_host(authority: str, host: str) -> None:
    assert authority_host(authority) == host


# -- a refusal keeps its evidence: chain, host and expired rules ----------------------------
# The 502 page and the report record show what the Decision carries; a refusal that lost its
# chain or its host would still refuse, so only these field-by-field checks notice.

@pytest.mark.parametrize(("mode", "action"), [(Mode.ENFORCE, Action.BLOCK),
                                              (Mode.REPORT, Action.REPORT)])
def test_an_unpinned_refusal_keeps_chain_host_and_expired_rules(mode: Mode,
                                                                action: Action) -> None:
    old = rule("other.example", {BACKUP}, expires=TODAY - timedelta(days=1),
               on_expiry=OnExpiry.ALLOW)
    rules = pinset(old, mode=mode, unpinned=Unpinned.BLOCK)
    decision = decide(rules, ["Other.Example."], good_chain(), TODAY)
    assert decision == Decision(action, Reason.NOT_PINNED, "other.example", None, good_chain(),
                                None, (old,))
    # twin: under unpinned: allow the same evidence comes with an allow
    allowed = decide(pinset(old), ["Other.Example."], good_chain(), TODAY)
    assert allowed == Decision(Action.ALLOW, Reason.NOT_PINNED, "other.example", None,
                               good_chain(), None, (old,))


def test_an_invalid_host_refusal_keeps_the_name_and_the_chain() -> None:
    decision = decide(pinset(), ["bad host"], good_chain(), TODAY)
    assert decision == Decision(Action.BLOCK, Reason.INVALID_HOST, "bad host", None, good_chain(),
                                detail="host 'bad host' is not a valid host name or IP address")


def test_a_connection_naming_no_host_keeps_the_chain() -> None:
    decision = decide(pinset(), [], good_chain(), TODAY)
    assert decision == Decision(Action.BLOCK, Reason.INVALID_HOST, "", None, good_chain(),
                                detail="the connection names no host")


@pytest.mark.parametrize(("mode", "action"), [(Mode.ENFORCE, Action.BLOCK),
                                              (Mode.REPORT, Action.REPORT)])
def test_a_plaintext_refusal_keeps_host_rule_and_expired_rules(mode: Mode,
                                                               action: Action) -> None:
    old = rule(HOST, {BACKUP}, expires=TODAY - timedelta(days=1), on_expiry=OnExpiry.ALLOW)
    parent = rule("example", {BACKUP}, line=6, include_subdomains=True, mode=mode)
    decision = decide_plaintext(pinset(old, parent), "API.example", TODAY)
    assert decision == Decision(action, Reason.PLAINTEXT, HOST, parent, (), None, (old,))
    # twin: without the live parent rule the expired one leaves the host unpinned, allowed
    assert decide_plaintext(pinset(old), "API.example", TODAY) == Decision(
        Action.ALLOW, Reason.NOT_PINNED, HOST, None, (), None, (old,))


# -- survivors of `make mutation` (docs/testing.md) ----------------------------------------

def test_decide_handshake_judges_expiry_on_the_day_given() -> None:
    old = rule(HOST, {BACKUP}, expires=TODAY - timedelta(days=1), on_expiry=OnExpiry.ALLOW)
    lapsed = decide_handshake(pinset(old), [HOST], rogue_chain(), TODAY)
    assert (lapsed.action, lapsed.reason, lapsed.expired) == (Action.ALLOW, Reason.NOT_PINNED,
                                                              (old,))
    # twin: on its last day the same rule still refuses
    last_day = decide_handshake(pinset(old), [HOST], rogue_chain(), TODAY - timedelta(days=1))
    assert (last_day.action, last_day.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)


def test_a_misdirected_refusal_lists_every_checked_name_comma_separated() -> None:
    decision = decide_request(PINNED, "https", "b.example", HOST, ("a.example", "B.example."),
                              TODAY)
    assert decision is not None and decision.reason is Reason.MISDIRECTED
    assert decision.detail == ("the request names api.example, but its connection was checked "
                               "for a.example, b.example")


def test_a_plaintext_tunnel_without_a_pinset_names_its_host() -> None:
    assert decide_tunnel(None, HOST, False, TODAY) == no_pinset(HOST)
