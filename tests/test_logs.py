"""Tests of `pinproxy.logs` and the canonical decision line: the JSON record and the text line
carry the same fields; and end to end, a `--log-format json` proxy writes one parseable object
per line on stderr, one `decision` per checked connection."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pinproxy import logs
from pinproxy.pinset import HostRule, Location
from pinproxy.policy import Action, Decision, Reason
from pinproxy.report import decision_fields, log_line
from tests.certs import TrustedPki, leaf_pin
from tests.conftest import Serve
from tests.proxy import Proxy, curl, start_pinproxy
from tests.upstream import wait_for

RULE = HostRule(host="api.test", pins=(), location=Location("pins.yaml", 7))


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_a_json_record_has_the_stable_fields(stream: io.StringIO) -> None:
    logs.configure("info", "json", stream=stream)
    decision = Decision(Action.BLOCK, Reason.PIN_MISMATCH, "api.test", RULE, detail='a "b"')
    fields = decision_fields(decision, 443)
    logging.getLogger("pinproxy.test").warning(log_line(decision, 443, fields),
                                               extra={"event": "decision", **fields})
    logging.getLogger("mitmproxy.test").info("client connect")
    logging.getLogger("mitmproxy.test").debug("not at info")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {key: first[key] for key in (
        "level", "event", "action", "reason", "host", "port", "rule", "mode", "observed",
        "detail")} == {
        "level": "warning", "event": "decision", "action": "blocked", "reason": "pin-mismatch",
        "host": "api.test", "port": 443, "rule": "pins.yaml:7", "mode": "enforce",
        "observed": "-", "detail": 'a "b"'}
    assert first["message"] == log_line(decision, 443)
    time = dt.datetime.fromisoformat(first["time"])
    assert time.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - time).total_seconds()) < 60
    assert (second["event"], second["level"], second["message"]) == ("log", "info",
                                                                      "client connect")


def test_text_is_the_line_and_configuring_again_replaces_the_handler(
        stream: io.StringIO) -> None:
    logs.configure("warning", "text", stream=io.StringIO())
    logs.configure("warning", "text", stream=stream)
    decision = Decision(Action.ALLOW, Reason.PIN_MATCHED, "", None)
    logging.getLogger("pinproxy.test").warning(log_line(decision))
    logging.getLogger("pinproxy.test").info("below the level")
    assert stream.getvalue() == ("pinproxy action=allowed host=- port=- reason=pin-matched "
                                 "rule=- mode=- observed=-\n")


@pytest.mark.e2e
def test_json_logs_carry_one_decision_per_checked_connection(
        tmp_path: Path, confdir: Path, pki: TrustedPki, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f"""\
version: 1
hosts:
  - host: leaf.pinned.test
    pins: ["{leaf_pin(good_leaf)}"]
""")
    good, rogue = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--log-format", "json") as proxy:
        assert curl(proxy, "leaf.pinned.test", good.port).status == 200
        assert curl(proxy, "leaf.pinned.test", rogue.port).status == 502
        wait_for(lambda: len(_decisions(proxy)) >= 2)
        records = [json.loads(line) for line in proxy.output().splitlines() if line.strip()]
    assert all({"time", "level", "event", "message"} <= record.keys() for record in records)
    decisions = [r for r in records if r["event"] == "decision"]
    assert [(d["action"], d["level"], d["port"]) for d in decisions] == [
        ("allowed", "info", good.port), ("blocked", "warning", rogue.port)]
    for d in decisions:
        assert (d["host"], d["rule"]) == ("leaf.pinned.test", f"{pinset}:3")
    assert decisions[0]["reason"] == "pin-matched"
    assert decisions[1]["reason"] == "pin-mismatch"
    assert decisions[1]["observed"].startswith("0:" + leaf_pin(rogue_leaf))
    assert any("client connect" in r["message"] for r in records)  # mitmproxy's own, as JSON


def _decisions(proxy: Proxy) -> list[str]:
    return [line for line in proxy.output().splitlines() if '"event": "decision"' in line]


def test_a_huge_message_is_cut() -> None:
    """mitmproxy logs a client's bad request line whole: a megabyte must not become one line."""
    stream = io.StringIO()
    logs.configure("info", "text", stream=stream)
    logging.getLogger("mitmproxy.test").warning("Bad HTTP request line: %r", b"a" * 1_000_000)
    logging.getLogger("mitmproxy.test").warning("short %s", "line")
    lines = stream.getvalue().splitlines()
    assert len(lines[0]) < logs.MESSAGE_LIMIT + 100
    assert lines[0].endswith("...[cut: 1000026 characters]")
    assert lines[1] == "short line"
