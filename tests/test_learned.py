"""Trust on first use: the learn file (`pinproxy.learned`), the pure policy given what was
learned, the loader's `mode: learn` / `unpinned: learn`, and the proxy's `LearnState`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest

from pinproxy.errors import PinsetError
from pinproxy.learned import (
    NOTHING_LEARNED,
    Learned,
    LearnedHost,
    forget,
    merge,
    read_learned,
    render_learned,
    require_learn_file,
)
from pinproxy.loader import parse_pinset
from pinproxy.pins import CertificatePins, parse_pin
from pinproxy.pinset import HostRule, Location, Pinset, Unpinned
from pinproxy.policy import (
    Action,
    Reason,
    decide,
    decide_handshake,
    decide_plaintext,
    decide_request,
)
from pinproxy.proxy.learning import LearnState
from pinproxy.tools.render import render_loaded
from tests import certs

TODAY = dt.date(2026, 3, 14)
WHEN = dt.datetime(2026, 3, 14, 12, 0, tzinfo=dt.UTC)
HOST = certs.HOST


def good_chain() -> tuple[CertificatePins, ...]:
    return certs.pki("a").chain


def rogue_chain() -> tuple[CertificatePins, ...]:
    return certs.pki("rogue").chain


def learned_good(host: str = HOST) -> Learned:
    chain = good_chain()
    return Learned({host: LearnedHost(host, (chain[0].spki, chain[1].spki), WHEN)})


def learn_rule(host: str, **kwargs: object) -> HostRule:
    return HostRule(host=host, pins=(), location=Location("pins.yaml", 4), learn=True,
                    **kwargs)  # type: ignore[arg-type]


def pinset(*rules: HostRule, unpinned: Unpinned = Unpinned.ALLOW) -> Pinset:
    return Pinset(rules=rules, source="pins.yaml", unpinned=unpinned)


# -- the learn file -------------------------------------------------------------------------

def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "learned")
    hosts = {entry.host: entry for entry in learned_good().hosts.values()}
    hosts["b.example"] = LearnedHost("b.example", (good_chain()[0].spki,), WHEN)
    Path(path).write_bytes(render_learned(hosts))
    assert read_learned(path) == hosts


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_learned(str(tmp_path / "nothing")) == {}


PIN = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


@pytest.mark.parametrize(("text", "line", "fragment"), [
    (f"a.example 2026-01-01T00:00:00Z {PIN}\na.example 2026-01-01T00:00:00Z {PIN}\n", 2,
     "learned twice"),
    ("# comment\na.example 2026-01-01T00:00:00Z\n", 2, "expected 'HOST LEARNED_AT PIN...'"),
    (f"a.example yesterday {PIN}\n", 1, "is not a timestamp"),
    (f"a.example 2026-01-01T00:00:00 {PIN}\n", 1, "has no time zone"),
    ("a.example 2026-01-01T00:00:00Z sha256/nope\n", 1, "sha256/nope"),
    (f"a.example 2026-01-01T00:00:00Z cert-{PIN}\n", 1, "an SPKI pin"),
    (f"-bad-.example 2026-01-01T00:00:00Z {PIN}\n", 1, "-bad-.example"),
])
def test_corrupt_file_is_an_error_with_its_line(tmp_path: Path, text: str, line: int,
                                                fragment: str) -> None:
    path = tmp_path / "learned"
    path.write_text(text)
    with pytest.raises(PinsetError) as raised:
        read_learned(str(path))
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert fragment in str(raised.value)


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(PinsetError, match="cannot read learn file"):
        read_learned(str(tmp_path / "dir"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(PinsetError, match="not UTF-8"):
        read_learned(str(tmp_path / "binary"))


def test_merge_keeps_what_the_file_has_and_adds_the_rest(tmp_path: Path) -> None:
    path = str(tmp_path / "learned")
    first = learned_good().hosts[HOST]
    merge(path, {HOST: first})
    other = LearnedHost(HOST, (rogue_chain()[0].spki,), WHEN)  # a second process's verdict
    new = LearnedHost("b.example", (rogue_chain()[0].spki,), WHEN)
    assert merge(path, {HOST: other, "b.example": new}) == {HOST: first, "b.example": new}
    assert read_learned(path) == {HOST: first, "b.example": new}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # atomic


def test_forget(tmp_path: Path) -> None:
    path = str(tmp_path / "learned")
    merge(path, dict(learned_good().hosts))
    assert forget(path, HOST) is True
    assert forget(path, HOST) is False
    assert read_learned(path) == {}


def test_merge_never_overwrites_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "learned"
    path.write_text("garbage\n")
    with pytest.raises(PinsetError):
        merge(str(path), dict(learned_good().hosts))
    assert path.read_text() == "garbage\n"


# -- the policy -----------------------------------------------------------------------------

def test_first_use_allows_and_asks_to_learn() -> None:
    decision = decide(pinset(learn_rule(HOST)), [HOST], good_chain(), TODAY)
    assert (decision.action, decision.reason) == (Action.ALLOW, Reason.FIRST_USE)


def test_learned_host_is_enforced() -> None:
    ps = pinset(learn_rule(HOST))
    allowed = decide(ps, [HOST], good_chain(), TODAY, learned_good())
    assert (allowed.action, allowed.reason) == (Action.ALLOW, Reason.PIN_MATCHED)
    refused = decide(ps, [HOST], rogue_chain(), TODAY, learned_good())
    assert (refused.action, refused.reason) == (Action.BLOCK, Reason.PIN_MISMATCH)


def test_wildcard_learn_rule_learns_each_exact_name() -> None:
    ps = pinset(learn_rule("*.example.org"))
    learned = learned_good("a.example.org")
    assert decide(ps, ["a.example.org"], rogue_chain(), TODAY, learned).action is Action.BLOCK
    other = decide(ps, ["b.example.org"], rogue_chain(), TODAY, learned)
    assert (other.reason, other.host) == (Reason.FIRST_USE, "b.example.org")


def test_full_learn_file_refuses_a_new_host_but_enforces_the_learned() -> None:
    ps = pinset(unpinned=Unpinned.LEARN)
    full = Learned(learned_good().hosts, full=True)
    assert decide(ps, ["new.example"], good_chain(), TODAY, full).reason is Reason.LEARN_FULL
    assert decide(ps, ["new.example"], good_chain(), TODAY, full).action is Action.BLOCK
    assert decide(ps, [HOST], good_chain(), TODAY, full).action is Action.ALLOW


def test_unpinned_learn_learns_names_not_ip_addresses() -> None:
    ps = pinset(unpinned=Unpinned.LEARN)
    assert decide(ps, ["192.0.2.1"], good_chain(), TODAY).reason is Reason.NOT_PINNED
    named = decide(ps, [HOST, "192.0.2.1"], good_chain(), TODAY)
    assert (named.reason, named.host) == (Reason.FIRST_USE, HOST)
    assert decide(ps, [HOST], rogue_chain(), TODAY, learned_good()).action is Action.BLOCK


def test_a_rule_beats_unpinned_learn() -> None:
    pin = good_chain()[0].spki
    ps = pinset(HostRule(HOST, (pin,), Location("pins.yaml", 3)), unpinned=Unpinned.LEARN)
    assert decide(ps, [HOST], good_chain(), TODAY).reason is Reason.PIN_MATCHED


def test_plaintext_and_misdirected_requests_never_learn() -> None:
    rule_set = pinset(learn_rule(HOST))
    assert decide_plaintext(rule_set, HOST, TODAY).action is Action.BLOCK  # a pinned host
    free = pinset(unpinned=Unpinned.LEARN)
    assert decide_plaintext(free, "new.example", TODAY).action is Action.ALLOW
    assert decide_plaintext(free, HOST, TODAY, learned_good()).reason is Reason.PLAINTEXT
    # a Host header naming an unlearned host on another host's connection: retry (421)
    misdirected = decide_request(free, "https", "other.example", HOST, ["other.example"], TODAY)
    assert misdirected is not None and misdirected.reason is Reason.MISDIRECTED


def test_handshake_without_learning_state_sees_nothing_learned() -> None:
    decision = decide_handshake(pinset(learn_rule(HOST)), [HOST], good_chain(), TODAY,
                                NOTHING_LEARNED)
    assert decision.reason is Reason.FIRST_USE


# -- the loader -----------------------------------------------------------------------------

def test_loader_reads_learn_rules_and_unpinned_learn() -> None:
    loaded = parse_pinset("version: 1\nunpinned: learn\nhosts:\n  - host: '*.example.org'\n"
                          "    mode: learn\n")
    assert loaded.unpinned is Unpinned.LEARN
    assert loaded.rules[0].learn and loaded.rules[0].pins == ()
    again = parse_pinset(render_loaded(loaded))  # written back the same
    assert (again.unpinned, again.rules[0].host, again.rules[0].learn) == (
        Unpinned.LEARN, "*.example.org", True)


@pytest.mark.parametrize(("text", "fragment"), [
    (f"version: 1\nhosts:\n  - host: a.example\n    mode: learn\n    pins: ['{PIN}']\n",
     "5: a.example has 'mode: learn', which learns its pins on first use: remove 'pins'"),
    ("version: 1\nhosts:\n  - host: a.example\n", "3: a host rule is missing the key 'pins'"),
    ("version: 1\nmode: learn\nhosts: []\n", "2: 'mode' must be 'enforce' or 'report'"),
])
def test_loader_refuses(text: str, fragment: str) -> None:
    with pytest.raises(PinsetError) as raised:
        parse_pinset(text, "pins.yaml")
    assert fragment in str(raised.value)


def test_learning_pinset_needs_a_learn_file() -> None:
    loaded = parse_pinset("version: 1\nhosts:\n  - host: a.example\n    mode: learn\n",
                          "pins.yaml")
    assert require_learn_file(loaded, "learned") is loaded
    with pytest.raises(PinsetError, match=r"^pins.yaml:3: .*give --learn-file PATH"):
        require_learn_file(loaded, None)
    free = parse_pinset("version: 1\nunpinned: learn\nhosts: []\n", "pins.yaml")
    with pytest.raises(PinsetError, match=r"^pins.yaml: .*--learn-file"):
        require_learn_file(free, None)
    plain = parse_pinset(f"version: 1\nhosts:\n  - host: a.example\n    pins: ['{PIN}']\n")
    assert require_learn_file(plain, None) is plain


# -- the proxy's state ------------------------------------------------------------------------

def test_learn_state_learns_once_and_writes_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "learned")

    async def scenario() -> LearnState:
        state = LearnState(path)
        ps = pinset(learn_rule(HOST))
        first = decide(ps, [HOST], good_chain(), TODAY, state.view())
        state.learn(first)
        # the second first connection, decided after the first verdict: checked against it
        second = decide(ps, [HOST], rogue_chain(), TODAY, state.view())
        assert second.action is Action.BLOCK
        assert state._writing is not None
        await state._writing
        return state

    state = asyncio.run(scenario())
    chain = good_chain()
    assert read_learned(path)[HOST].pins == (chain[0].spki, chain[1].spki)
    assert LearnState(path).hosts == state.hosts  # survives a restart


def test_learn_state_cap(tmp_path: Path) -> None:
    path = tmp_path / "learned"
    path.write_bytes(render_learned(dict(learned_good().hosts)))
    assert LearnState(str(path), limit=1).view().full
    assert not LearnState(str(path), limit=2).view().full


def test_learn_state_reread_forgets_and_keeps_on_corruption(tmp_path: Path) -> None:
    path = tmp_path / "learned"
    path.write_bytes(render_learned(dict(learned_good().hosts)))
    state = LearnState(str(path))
    forget(str(path), HOST)
    asyncio.run(state.reread())
    assert state.hosts == {}
    path.write_bytes(render_learned(dict(learned_good().hosts)))
    asyncio.run(state.reread())
    path.write_text("garbage\n")
    asyncio.run(state.reread())  # logged; what was learned stays in force
    assert HOST in state.hosts


def test_learn_state_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "learned"
    path.write_text("garbage\n")
    with pytest.raises(PinsetError, match=f"^{path}:1: "):
        LearnState(str(path))


def test_learn_needs_a_chain(tmp_path: Path) -> None:
    state = LearnState(str(tmp_path / "learned"))
    empty = decide(pinset(learn_rule(HOST)), [HOST], (), TODAY)
    with pytest.raises(RuntimeError, match="no verified chain"):
        state.learn(empty)
    assert not os.path.exists(tmp_path / "learned")


def test_pin_spelling_in_file_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "learned"
    path.write_text(f"A.Example. 2026-01-01T00:00:00+00:00 pin-sha256=\"{PIN[7:]}\"\n")
    assert read_learned(str(path)) == {"a.example": LearnedHost(
        "a.example", (parse_pin(PIN),), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))}


def test_check_lints_learning_pinsets_without_false_alarms() -> None:
    from pinproxy.tools.lint import lint

    free = parse_pinset("version: 1\nunpinned: learn\nhosts: []\n", "pins.yaml")
    assert lint(free, TODAY) == []
    rules = parse_pinset("version: 1\nhosts:\n  - host: a.example\n    mode: learn\n")
    assert lint(rules, TODAY) == []


def test_learning_metrics(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("pinproxy_hosts_learned_total") or 0.0

    async def scenario() -> None:
        state = LearnState(str(tmp_path / "learned"))
        state.learn(decide(pinset(learn_rule(HOST)), [HOST], good_chain(), TODAY))
        assert state._writing is not None
        await state._writing

    asyncio.run(scenario())
    assert REGISTRY.get_sample_value("pinproxy_hosts_learned_total") == before + 1
    assert REGISTRY.get_sample_value("pinproxy_learned_hosts") == 1


def test_a_worker_sees_what_another_learned_before_learning_itself(tmp_path: Path) -> None:
    path = str(tmp_path / "learned")
    ps = pinset(learn_rule(HOST))

    async def scenario() -> None:
        first, second = LearnState(path), LearnState(path)  # two --workers processes
        first.learn(decide(ps, [HOST], good_chain(), TODAY, first.view()))
        assert first._writing is not None
        await first._writing
        # the second worker's first connection to the host: stale view, so it re-reads
        assert decide(ps, [HOST], rogue_chain(), TODAY, second.view()).reason is \
            Reason.FIRST_USE
        assert second.refresh_if_changed() is True
        assert decide(ps, [HOST], rogue_chain(), TODAY, second.view()).action is Action.BLOCK
        assert second.refresh_if_changed() is False  # unchanged: a stat, no read

    asyncio.run(scenario())


# -- pinproxy learned -----------------------------------------------------------------------

def test_cli_list_forget_promote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pinproxy.cli import main
    from pinproxy.loader import load_pinset

    path = tmp_path / "learned"
    merge(str(path), dict(learned_good().hosts))
    assert main(["learned", "list", "--learn-file", str(path)]) == 0
    chain = good_chain()
    assert capsys.readouterr().out == (
        f"{HOST}  2026-03-14T12:00:00Z  {chain[0].spki} {chain[1].spki}\n")
    out = tmp_path / "promoted.yaml"
    assert main(["learned", "promote", "-o", str(out), "--learn-file", str(path)]) == 0
    promoted = load_pinset(out)
    assert [(r.host, r.pins, r.learn) for r in promoted.rules] == [
        (HOST, (chain[0].spki, chain[1].spki), False)]
    assert main(["learned", "promote", "-o", str(out), "--learn-file", str(path)]) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert main(["learned", "forget", HOST.upper(), "--learn-file", str(path)]) == 0
    assert read_learned(str(path)) == {}
    assert main(["learned", "forget", HOST, "--learn-file", str(path)]) == 2
    assert f"{path}: '{HOST}' is not learned" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["learned", "list"], ["learned", "forget", "a.example"],
                                  ["learned", "promote", "-o", "-"]])
def test_cli_needs_a_learn_file(argv: list[str], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pinproxy.cli import main

    monkeypatch.delenv("PINPROXY_LEARN_FILE", raising=False)
    assert main(argv) == 2
    assert "give --learn-file PATH (or PINPROXY_LEARN_FILE)" in capsys.readouterr().err
    monkeypatch.setenv("PINPROXY_LEARN_FILE", str(tmp_path / "missing"))
    assert main(argv) == 2
    assert "no such learn file" in capsys.readouterr().err
    (tmp_path / "missing").write_text("bad line\n")
    assert main(argv) == 2
    assert f"{tmp_path / 'missing'}:1: " in capsys.readouterr().err
