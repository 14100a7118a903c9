"""Tests of `on_expiry` (allow | report | block): loader, schema, policy, lint, check, render.

The policy rule: an expired rule never weakens what `allow` (skip it) decides; `report` turns a
decision that lets the connection through into a `rule-expired` report, `block` into a
`rule-expired` refusal (reported only under `mode: report`); a violation of the next rule at
least as severe keeps its own reason.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import pytest

from pinproxy.formats import export_pinset
from pinproxy.loader import load_pinset, parse_pinset
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, OnExpiry, Pinset, Unpinned
from pinproxy.policy import Action, Decision, Reason, decide, decide_plaintext, decide_request
from pinproxy.tools.lint import lint
from pinproxy.tools.render import render_loaded
from tests import certs
from tests.proxy import run_pinproxy
from tests.test_json_schema import loader_accepts, schema_accepts
from tests.test_loader import assert_problems, write

TODAY = date(2026, 3, 14)
YESTERDAY = TODAY - timedelta(days=1)
HOST = certs.HOST  # api.example
BACKUP = Pin(PinKind.SPKI, hashlib.sha256(b"hello").digest())  # matches no key
P = "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


def chain() -> tuple:  # type: ignore[type-arg]
    return certs.pki("a").chain


def rogue() -> tuple:  # type: ignore[type-arg]
    return certs.pki("rogue").chain


def rule(host: str, pins: tuple[Pin, ...], line: int = 3, **kwargs: object) -> HostRule:
    return HostRule(host=host, pins=pins, location=Location("pins.yaml", line),
                    **kwargs)  # type: ignore[arg-type]


def expired(on_expiry: OnExpiry, host: str = HOST, mode: Mode = Mode.ENFORCE,
            pins: tuple[Pin, ...] | None = None, line: int = 3) -> HostRule:
    return rule(host, pins or (chain()[2].spki,), line, expires=YESTERDAY, mode=mode,
                on_expiry=on_expiry)


def pinset(*rules: HostRule, unpinned: Unpinned = Unpinned.ALLOW) -> Pinset:
    return Pinset(rules=rules, source="pins.yaml", unpinned=unpinned)


# -- the loader ----------------------------------------------------------------------------

def test_on_expiry_is_read_at_the_top_and_per_rule_and_defaults_to_report(
        tmp_path: Path) -> None:
    loaded = load_pinset(write(tmp_path, f"""
        version: 1
        hosts:
          - host: a.example
            pins: ["{P}"]
          - host: b.example
            on_expiry: block
            pins: ["{P}"]
    """))
    assert loaded.on_expiry is OnExpiry.REPORT
    assert [r.on_expiry for r in loaded.rules] == [OnExpiry.REPORT, OnExpiry.BLOCK]
    inherited = load_pinset(write(tmp_path, f"""
        version: 1
        hosts:
          - host: a.example
            pins: ["{P}"]
          - host: b.example
            on_expiry: report
            pins: ["{P}"]
        on_expiry: allow
    """, "inherit.yaml"))  # written after the rules: a streamed rule learns it afterwards
    assert inherited.on_expiry is OnExpiry.ALLOW
    assert [r.on_expiry for r in inherited.rules] == [OnExpiry.ALLOW, OnExpiry.REPORT]


@pytest.mark.parametrize(("where", "value", "line", "message"), [
    ("top", "never", 2, "'on_expiry' must be 'allow' or 'report' or 'block', not 'never'"),
    ("top", "Block", 2, "'on_expiry' must be 'allow' or 'report' or 'block', not 'Block'"),
    ("top", "true", 2, "'on_expiry' must be one of 'allow' or 'report' or 'block', not the "
                       "YAML boolean 'true'"),
    ("rule", "off", 5, "'on_expiry' must be one of 'allow' or 'report' or 'block', not the "
                       "YAML boolean 'off'"),
    ("rule", "[block]", 5, "'on_expiry' must be one of 'allow' or 'report' or 'block', not a "
                           "list"),
    ("rule", "warn", 5, "'on_expiry' must be 'allow' or 'report' or 'block', not 'warn'"),
])
def test_a_bad_on_expiry_is_a_problem_at_its_line(tmp_path: Path, where: str, value: str,
                                                  line: int, message: str) -> None:
    top = f"on_expiry: {value}" if where == "top" else "mode: enforce"
    rule_line = f"on_expiry: {value}" if where == "rule" else "mode: enforce"
    text = f"""
        version: 1
        {top}
        hosts:
          - host: a.example
            {rule_line}
            pins: ["{P}"]
    """
    assert_problems(write(tmp_path, text), [(line, message)])
    # twin: the same file with a good value loads
    good = text.replace(f"on_expiry: {value}", "on_expiry: block")
    assert load_pinset(write(tmp_path, good, "good.yaml")).rules[0].on_expiry is OnExpiry.BLOCK


@pytest.mark.parametrize(("text", "accepted"), [
    ("version: 1\non_expiry: block\nhosts: []\n", True),
    (f"version: 1\nhosts:\n  - host: a.example\n    on_expiry: allow\n    pins: ['{P}']\n", True),
    ("version: 1\non_expiry: warn\nhosts: []\n", False),
    (f"version: 1\nhosts:\n  - host: a.example\n    on_expiry: 1\n    pins: ['{P}']\n", False),
])
def test_schema_and_loader_agree_on_on_expiry(text: str, accepted: bool, tmp_path: Path) -> None:
    assert loader_accepts(text, tmp_path) is accepted
    assert schema_accepts(text) is accepted


def test_render_writes_on_expiry_back_only_where_it_differs() -> None:
    text = (f"version: 1\non_expiry: block\nhosts:\n  - host: a.example\n    pins: ['{P}']\n"
            f"  - host: b.example\n    on_expiry: allow\n    pins: ['{P}']\n")
    loaded = parse_pinset(text, "t.yaml")
    out = render_loaded(loaded)
    assert "on_expiry: block\n" in out and out.count("on_expiry:") == 2
    again = parse_pinset(out, "t.yaml")
    assert again.on_expiry is OnExpiry.BLOCK
    assert [r.on_expiry for r in again.rules] == [OnExpiry.BLOCK, OnExpiry.ALLOW]
    # twin: the default writes nothing, so older pinsets render as before
    plain = render_loaded(parse_pinset(f"version: 1\nhosts:\n  - host: a.example\n"
                                       f"    pins: ['{P}']\n", "t.yaml"))
    assert "on_expiry" not in plain


@pytest.mark.parametrize("on_expiry", ["report", "block"])
def test_android_export_notes_that_android_fails_open_after_expiration(on_expiry: str) -> None:
    text = (f"version: 1\non_expiry: {on_expiry}\nhosts:\n  - host: a.example\n"
            f"    expires: 2027-06-29\n    pins: ['{P}', '{chain()[1].spki}']\n")
    exported = export_pinset(parse_pinset(text, "t.yaml"), "android")
    assert [str(n) for n in exported.notices] == [
        f"t.yaml:4: note: a.example: after 2027-06-29 Android stops pinning silently; the "
        f"pinset's on_expiry: {on_expiry} cannot be expressed"]
    assert not exported.lossy
    # twin: on_expiry: allow is what Android does
    allowed = export_pinset(parse_pinset(text.replace(on_expiry, "allow", 1), "t.yaml"),
                            "android")
    assert allowed.notices == ()


# -- the policy: one expired rule ----------------------------------------------------------

@pytest.mark.parametrize(("on_expiry", "mode", "action"), [
    (OnExpiry.ALLOW, Mode.ENFORCE, Action.ALLOW),
    (OnExpiry.ALLOW, Mode.REPORT, Action.ALLOW),
    (OnExpiry.REPORT, Mode.ENFORCE, Action.REPORT),
    (OnExpiry.REPORT, Mode.REPORT, Action.REPORT),
    (OnExpiry.BLOCK, Mode.ENFORCE, Action.BLOCK),
    (OnExpiry.BLOCK, Mode.REPORT, Action.REPORT),  # a report-mode rule never refuses
])
@pytest.mark.parametrize("matches", [True, False], ids=["pins-match", "pins-mismatch"])
def test_an_expired_rule_does_what_its_on_expiry_says(on_expiry: OnExpiry, mode: Mode,
                                                      action: Action, matches: bool) -> None:
    old = expired(on_expiry, mode=mode)
    served = chain() if matches else rogue()
    decision = decide(pinset(old), [HOST], served, TODAY)
    if action is Action.ALLOW:
        assert decision == Decision(Action.ALLOW, Reason.NOT_PINNED, HOST, None, served,
                                    expired=(old,))
        return
    still = ("its pins still match the chain" if matches
             else "its pins do not match the chain either")
    assert decision == Decision(
        action, Reason.RULE_EXPIRED, HOST, old, served, chain()[2].spki if matches else None,
        (old,), f"the rule expired after {YESTERDAY} (on_expiry: {on_expiry}); {still}")
    assert decision.is_violation and decision.proceeds is (action is Action.REPORT)


def test_an_expired_rule_is_enforced_up_to_its_last_day() -> None:
    old = expired(OnExpiry.BLOCK)
    on_last_day = decide(pinset(old), [HOST], chain(), YESTERDAY)
    assert (on_last_day.action, on_last_day.reason) == (Action.ALLOW, Reason.PIN_MATCHED)
    assert decide(pinset(old), [HOST], chain(), TODAY).reason is Reason.RULE_EXPIRED


# -- the policy: several rules --------------------------------------------------------------

WILDCARD_LINE = 9


def wildcard(pins: tuple[Pin, ...], mode: Mode = Mode.ENFORCE) -> HostRule:
    return rule("*.example", pins, WILDCARD_LINE, mode=mode)


@pytest.mark.parametrize(("on_expiry", "served", "live_mode", "expected"), [
    # the live wildcard passes: the expired exact rule's on_expiry decides
    (OnExpiry.ALLOW, "good", Mode.ENFORCE, (Action.ALLOW, Reason.PIN_MATCHED, "wildcard")),
    (OnExpiry.REPORT, "good", Mode.ENFORCE, (Action.REPORT, Reason.RULE_EXPIRED, "exact")),
    (OnExpiry.BLOCK, "good", Mode.ENFORCE, (Action.BLOCK, Reason.RULE_EXPIRED, "exact")),
    # the live wildcard refuses: never weaker than allow, and its own reason stands
    (OnExpiry.ALLOW, "rogue", Mode.ENFORCE, (Action.BLOCK, Reason.PIN_MISMATCH, "wildcard")),
    (OnExpiry.REPORT, "rogue", Mode.ENFORCE, (Action.BLOCK, Reason.PIN_MISMATCH, "wildcard")),
    (OnExpiry.BLOCK, "rogue", Mode.ENFORCE, (Action.BLOCK, Reason.PIN_MISMATCH, "wildcard")),
    # the live wildcard reports: as severe as a report, stricter than that only with block
    (OnExpiry.REPORT, "rogue", Mode.REPORT, (Action.REPORT, Reason.PIN_MISMATCH, "wildcard")),
    (OnExpiry.BLOCK, "rogue", Mode.REPORT, (Action.BLOCK, Reason.RULE_EXPIRED, "exact")),
])
def test_an_expired_exact_rule_over_a_live_wildcard(on_expiry: OnExpiry, served: str,
                                                    live_mode: Mode,
                                                    expected: tuple[Action, Reason, str]) -> None:
    old = expired(on_expiry)
    live = wildcard((chain()[2].spki,), live_mode)
    decision = decide(pinset(old, live), [HOST], chain() if served == "good" else rogue(),
                      TODAY)
    action, reason, which = expected
    assert (decision.action, decision.reason) == (action, reason)
    assert decision.rule == (old if which == "exact" else live)
    assert decision.expired == (old,)


def test_an_expired_rule_less_specific_than_the_live_one_changes_nothing() -> None:
    live = rule(HOST, (chain()[2].spki,))
    old = expired(OnExpiry.BLOCK, host="*.example", line=WILDCARD_LINE)
    decision = decide(pinset(live, old), [HOST], chain(), TODAY)
    assert (decision.action, decision.reason, decision.rule) == (Action.ALLOW,
                                                                 Reason.PIN_MATCHED, live)
    # twin: a name only the expired wildcard covers is refused
    other = decide(pinset(live, old), ["www.example"], chain(), TODAY)
    assert (other.action, other.reason, other.rule) == (Action.BLOCK, Reason.RULE_EXPIRED, old)


def test_the_strictest_of_two_expired_rules_wins() -> None:
    exact = expired(OnExpiry.REPORT)
    below = expired(OnExpiry.BLOCK, host="*.example", line=WILDCARD_LINE)
    decision = decide(pinset(exact, below), [HOST], chain(), TODAY)
    assert (decision.action, decision.reason, decision.rule) == (Action.BLOCK,
                                                                 Reason.RULE_EXPIRED, below)
    assert decision.expired == (exact, below)


@pytest.mark.parametrize(("on_expiry", "action", "reason"), [
    (OnExpiry.ALLOW, Action.BLOCK, Reason.NOT_PINNED),
    (OnExpiry.REPORT, Action.BLOCK, Reason.NOT_PINNED),
    (OnExpiry.BLOCK, Action.BLOCK, Reason.NOT_PINNED),
])
def test_under_unpinned_block_an_expired_rule_leaves_the_host_blocked(
        on_expiry: OnExpiry, action: Action, reason: Reason) -> None:
    decision = decide(pinset(expired(on_expiry), unpinned=Unpinned.BLOCK), [HOST], chain(),
                      TODAY)
    assert (decision.action, decision.reason) == (action, reason)


def test_a_name_an_expired_rule_covers_is_judged_beside_an_unpinned_one() -> None:
    """A CONNECT to an IP address with the expired host as SNI: the covered name decides."""
    decision = decide(pinset(expired(OnExpiry.REPORT)), ["192.0.2.1", HOST], chain(), TODAY)
    assert (decision.action, decision.reason, decision.host) == (Action.REPORT,
                                                                 Reason.RULE_EXPIRED, HOST)


@pytest.mark.parametrize(("on_expiry", "expected"), [
    (OnExpiry.ALLOW, (Action.ALLOW, Reason.NOT_PINNED)),
    (OnExpiry.REPORT, (Action.REPORT, Reason.RULE_EXPIRED)),
    (OnExpiry.BLOCK, (Action.BLOCK, Reason.RULE_EXPIRED)),
])
def test_plaintext_to_a_host_of_an_expired_rule(on_expiry: OnExpiry,
                                                expected: tuple[Action, Reason]) -> None:
    decision = decide_plaintext(pinset(expired(on_expiry)), HOST, TODAY)
    assert (decision.action, decision.reason) == expected
    request = decide_request(pinset(expired(on_expiry)), "http", HOST, None, (), TODAY)
    seen = (request.action, request.reason) if request is not None else None
    assert seen == (None if on_expiry is OnExpiry.ALLOW else expected)


def test_plaintext_under_an_expired_rule_with_a_live_wildcard_is_refused_by_the_wildcard() -> None:
    old = expired(OnExpiry.REPORT)
    live = wildcard((chain()[2].spki,))
    decision = decide_plaintext(pinset(old, live), HOST, TODAY)
    assert (decision.action, decision.reason, decision.rule) == (Action.BLOCK, Reason.PLAINTEXT,
                                                                 live)


# -- lint and check ------------------------------------------------------------------------

@pytest.mark.parametrize(("on_expiry", "says"), [
    (OnExpiry.ALLOW, "its names fall to the next rule, or to CA checks only (on_expiry: allow)"),
    (OnExpiry.REPORT, "every connection it covers is reported as rule-expired "
                      "(on_expiry: report)"),
    (OnExpiry.BLOCK, "every connection it covers is refused as rule-expired (on_expiry: block)"),
])
def test_lint_says_what_an_expiry_will_do(on_expiry: OnExpiry, says: str) -> None:
    soon = rule(HOST, (chain()[2].spki, chain()[1].spki), expires=TODAY + timedelta(days=5),
                on_expiry=on_expiry)
    [finding] = [f for f in lint(pinset(soon), TODAY) if f.code == "expires-soon"]
    assert says in finding.message
    gone = rule(HOST, (chain()[2].spki, chain()[1].spki), expires=YESTERDAY, on_expiry=on_expiry)
    [finding] = [f for f in lint(pinset(gone), TODAY) if f.code == "expired"]
    assert says in finding.message


def test_an_expired_rule_that_blocks_still_protects() -> None:
    pins = (chain()[2].spki, chain()[1].spki)
    codes = [f.code for f in lint(pinset(expired(OnExpiry.BLOCK, pins=pins)), TODAY)]
    assert codes == ["expired"]
    # twin: one that reports no longer refuses anything
    codes = [f.code for f in lint(pinset(expired(OnExpiry.REPORT, pins=pins)), TODAY)]
    assert codes == ["protects-nothing", "expired"]


@pytest.mark.parametrize(("days", "warned"), [(10, True), (60, False), (30, True), (31, False)])
def test_lint_warns_within_the_days_asked_for(days: int, warned: bool) -> None:
    soon = rule(HOST, (chain()[2].spki, chain()[1].spki), expires=TODAY + timedelta(days=days))
    codes = [f.code for f in lint(pinset(soon), TODAY, expiry_warning=30)]
    assert codes == (["expires-soon"] if warned else [])


def test_check_expiry_warning_days(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        version: 1
        on_expiry: block
        hosts:
          - host: a.example
            expires: 2026-03-24
            pins: ["{chain()[2].spki}", "{chain()[1].spki}"]
    """)
    near = run_pinproxy("check", str(path), "--today", "2026-03-14", "--expiry-warning", "5",
                        "--strict")
    assert near.returncode == 0, near.stdout
    assert near.stdout.endswith("on_expiry block\n")
    far = run_pinproxy("check", str(path), "--today", "2026-03-14", "--expiry-warning", "10",
                       "--strict")
    assert far.returncode == 1
    assert "[expires-soon]" in far.stdout and "(on_expiry: block)" in far.stdout
    bad = run_pinproxy("check", str(path), "--expiry-warning", "-3")
    assert bad.returncode == 2 and "'-3' is not a number of days" in bad.stderr
