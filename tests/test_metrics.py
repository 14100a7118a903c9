"""Tests of `pinproxy.metrics` (recording into the default registry, read back through the
exposition), `pinproxy.report.pinset_summary` (what /pinset shows) and `Readiness`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pinproxy import metrics
from pinproxy.admin import Readiness
from pinproxy.errors import PinproxyError
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.policy import Action, Decision, Reason
from pinproxy.reloading import CurrentPinset, file_sha256
from pinproxy.report import pinset_summary

PIN_A = Pin(PinKind.SPKI, hashlib.sha256(b"a").digest())
PIN_B = Pin(PinKind.SPKI, hashlib.sha256(b"b").digest())
LOADED = dt.datetime(2026, 3, 14, 12, 30, 5, tzinfo=dt.UTC)


def rule(host: str, line: int, **kwargs: object) -> HostRule:
    return HostRule(host=host, pins=(PIN_A, PIN_B), location=Location("pins.yaml", line),
                    **kwargs)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


@pytest.mark.parametrize(("action", "reason", "rule_label", "violation"), [
    (Action.ALLOW, Reason.PIN_MATCHED, "api.test", False),
    (Action.BLOCK, Reason.PIN_MISMATCH, "api.test", True),
    (Action.REPORT, Reason.PIN_MISMATCH, "api.test", True),
    (Action.BLOCK, Reason.NOT_PINNED, "-", True),
])
def test_a_decision_is_counted_once_and_a_violation_by_its_rule(
        action: Action, reason: Reason, rule_label: str, violation: bool) -> None:
    host_rule = rule("api.test", 3) if rule_label != "-" else None
    decision = Decision(action, reason, "api.test", host_rule)
    checks = ("pinproxy_checks_total", {"action": action.value, "reason": reason.value})
    violations = ("pinproxy_violations_total", {"rule": rule_label, "action": action.value})
    before = sample(checks[0], **checks[1]), sample(violations[0], **violations[1])
    metrics.record_decision(decision)
    after = sample(checks[0], **checks[1]), sample(violations[0], **violations[1])
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1 if violation else 0)


def test_a_load_sets_the_gauges_and_replaces_the_rule_expiries() -> None:
    first = Pinset(rules=(rule("old.test", 3, expires=dt.date(2030, 1, 2)),
                          rule("*.keep.test", 6, expires=dt.date(2031, 5, 6)),
                          rule("none.test", 9)), source="pins.yaml")
    loads = sample("pinproxy_pinset_loads_total", result="ok")
    metrics.record_loaded(first, LOADED)
    assert sample("pinproxy_pinset_loads_total", result="ok") == loads + 1
    assert sample("pinproxy_pinset_rules") == 3
    assert sample("pinproxy_pinset_pins") == first.pin_count
    assert sample("pinproxy_pinset_last_load_timestamp_seconds") == LOADED.timestamp()
    assert sample("pinproxy_rule_expiry_timestamp_seconds", rule="old.test") == dt.datetime(
        2030, 1, 2, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert sample("pinproxy_rule_expiry_timestamp_seconds", rule="none.test") == 0

    metrics.record_loaded(Pinset(rules=first.rules[1:], source="pins.yaml"), LOADED)
    assert sample("pinproxy_rule_expiry_timestamp_seconds", rule="old.test") == 0  # gone
    assert sample("pinproxy_rule_expiry_timestamp_seconds", rule="*.keep.test") > 0
    assert sample("pinproxy_pinset_rules") == 2


def test_connections_failures_and_leaf_expiry_are_recorded() -> None:
    open_now = sample("pinproxy_client_connections")
    metrics.record_client_connected()
    metrics.record_client_connected()
    metrics.record_client_disconnected()
    assert sample("pinproxy_client_connections") == open_now + 1
    metrics.record_client_disconnected()
    failed = sample("pinproxy_pinset_loads_total", result="failed")
    metrics.record_load_failed()
    assert sample("pinproxy_pinset_loads_total", result="failed") == failed + 1
    errors = sample("pinproxy_report_write_errors_total")
    metrics.record_report_write_error()
    assert sample("pinproxy_report_write_errors_total") == errors + 1
    metrics.record_upstream_leaf(None, LOADED)
    assert sample("pinproxy_upstream_leaf_expiry_timestamp_seconds", rule="-") == (
        LOADED.timestamp())


@pytest.mark.parametrize("kind", metrics.TIMEOUT_KINDS)
def test_a_timeout_is_counted_by_its_kind_only(kind: str) -> None:
    before = {k: sample("pinproxy_timeouts_total", kind=k) for k in metrics.TIMEOUT_KINDS}
    metrics.record_timeout(kind)
    after = {k: sample("pinproxy_timeouts_total", kind=k) for k in metrics.TIMEOUT_KINDS}
    assert after == {k: v + (k == kind) for k, v in before.items()}


def test_an_unknown_timeout_kind_is_no_label() -> None:
    with pytest.raises(KeyError):
        metrics.record_timeout("client-sent-a-label")
    assert sample("pinproxy_timeouts_total", kind="client-sent-a-label") == 0.0


def test_a_rejected_connection_is_counted() -> None:
    rejected = sample("pinproxy_connections_rejected_total")
    metrics.record_connection_rejected()
    assert sample("pinproxy_connections_rejected_total") == rejected + 1


def test_current_pinset_tells_of_failures_and_keeps_the_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text("version: 1\nhosts: []\n")
    failures: list[Exception] = []
    current = CurrentPinset(on_failure=failures.append)
    assert current.load(str(path))
    assert current.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(
        str(path))
    assert current.loaded_at is not None and current.loaded_at.tzinfo is dt.UTC
    path.write_text("version: 1\nhosts: [oops\n")
    with pytest.raises(PinproxyError):
        current.load(str(path))
    assert len(failures) == 1
    assert file_sha256(str(tmp_path / "missing.yaml")) is None


def test_pinset_summary_shows_rules_as_written() -> None:
    pinset = Pinset(rules=(rule("*.api.test", 4, mode=Mode.REPORT, expires=dt.date(2030, 1, 2)),
                           rule("plain.test", 8, include_subdomains=True)),
                    source="pins.yaml", mode=Mode.ENFORCE, unpinned=Unpinned.BLOCK)
    summary = pinset_summary(pinset, "/etc/pins.yaml", "ab" * 32,
                             LOADED.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert summary == {
        "source": "/etc/pins.yaml",
        "sha256": "ab" * 32,
        "loaded_at": "2026-03-14T12:30:05+00:00",
        "mode": "enforce",
        "unpinned": "block",
        "on_expiry": "report",
        "pin_count": pinset.pin_count,
        "serial": None,
        "valid_until": None,
        "rules": [
            {"host": "*.api.test", "include_subdomains": False, "mode": "report",
             "pins": [str(PIN_A), str(PIN_B)], "expires": "2030-01-02", "on_expiry": "report",
             "location": "pins.yaml:4"},
            {"host": "plain.test", "include_subdomains": True, "mode": "enforce",
             "pins": [str(PIN_A), str(PIN_B)], "expires": None, "on_expiry": "report",
             "location": "pins.yaml:8"},
        ],
    }
    assert pinset_summary(pinset, None, None, None)["source"] == "pins.yaml"
    signed = dataclasses.replace(pinset, serial=3,
                                 valid_until=dt.datetime(2030, 1, 2, 3, tzinfo=dt.UTC))
    assert {key: pinset_summary(signed, None, None, None)[key]
            for key in ("serial", "valid_until")} == {
        "serial": 3, "valid_until": "2030-01-02T03:00:00+00:00"}


def test_readiness_needs_a_pinset_and_the_listener_and_not_draining() -> None:
    readiness = Readiness()
    assert readiness.not_ready() == "no valid pinset loaded"
    readiness.pinset_loaded = True
    assert readiness.not_ready() == "the proxy port is not accepting connections yet"
    readiness.listening = True
    assert readiness.not_ready() is None
    readiness.draining = True
    assert readiness.not_ready() == "draining: shutting down"
