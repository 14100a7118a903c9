"""Prometheus metrics of the proxy, on prometheus-client's default registry.

Pure: no mitmproxy here, so the `--workers` supervisor can import it to serve the workers'
metrics. Recording is on the hot path (the verify callback and the connection hooks), so every
labelled child is bound once and kept in a dict keyed by the enum or rule it stands for.

With `--workers N` each worker writes its values to `PROMETHEUS_MULTIPROC_DIR` (set by the
supervisor before the worker starts) and `exposition()` there merges the files:

- counters and the histogram are summed over the workers (`pinproxy_pinset_loads_total` counts
  one load per worker: N workers reading one file count N);
- `pinproxy_client_connections` is summed over the live workers (`livesum`);
- the pinset gauges, the load timestamp and both expiry timestamps take the value a worker
  wrote last (`mostrecent`): every worker loads the same file. A rule dropped by a reload keeps
  its last expiry series in multiprocess mode (prometheus-client cannot remove a series from
  another process's file) until the workers restart.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pinproxy.pinset import HostRule, Pinset
from pinproxy.policy import Action, Decision, Reason

__all__ = [
    "NO_RULE",
    "TIMEOUT_KINDS",
    "exposition",
    "record_client_connected",
    "record_client_disconnected",
    "record_connection_rejected",
    "record_decision",
    "record_fetch",
    "record_learned_hosts",
    "record_load_failed",
    "record_loaded",
    "record_proxy_auth_refused",
    "record_report",
    "record_report_write_error",
    "record_signed_pinset",
    "record_stale",
    "record_stale_connection",
    "record_timeout",
    "record_upstream_leaf",
    "rule_label",
]

NO_RULE = "-"  # the rule label of a host no rule covers

CHECKS = Counter("pinproxy_checks", "Decisions taken: each upstream handshake check and each "
                 "request-level or tunnel refusal.", ["action", "reason"])
VIOLATIONS = Counter("pinproxy_violations", "Pin violations (reported or blocked), by the rule's "
                     "host pattern as written in the pinset ('-' when no rule covers the host).",
                     ["rule", "action"])
CHECK_DURATION = Histogram(
    "pinproxy_check_duration_seconds", "Time of the pin decision of one upstream handshake.",
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1))
PINSET_RULES = Gauge("pinproxy_pinset_rules", "Host rules in the pinset in force.",
                     multiprocess_mode="mostrecent")
PINSET_PINS = Gauge("pinproxy_pinset_pins", "Pins in the pinset in force.",
                    multiprocess_mode="mostrecent")
PINSET_LOADS = Counter("pinproxy_pinset_loads", "Pinset loads, by result (ok|failed).",
                       ["result"])
PINSET_LAST_LOAD = Gauge("pinproxy_pinset_last_load_timestamp_seconds",
                         "When the pinset in force was loaded (Unix time).",
                         multiprocess_mode="mostrecent")
RULE_EXPIRY = Gauge("pinproxy_rule_expiry_timestamp_seconds",
                    "When a rule with 'expires' stops being enforced (Unix time, end of that day"
                    " UTC).", ["rule"], multiprocess_mode="mostrecent")
LEAF_EXPIRY = Gauge("pinproxy_upstream_leaf_expiry_timestamp_seconds",
                    "notAfter of the upstream leaf certificate last served for a rule (Unix "
                    "time).", ["rule"], multiprocess_mode="mostrecent")
CLIENT_CONNECTIONS = Gauge("pinproxy_client_connections", "Open client connections.",
                           multiprocess_mode="livesum")
REPORT_WRITE_ERRORS = Counter("pinproxy_report_write_errors",
                              "Violation records the report log could not write.")
PROXY_AUTH_REFUSALS = Counter(
    "pinproxy_proxy_auth_refusals", "Requests answered 407, by why: missing (no or malformed "
    "credentials), wrong, busy (refused unchecked: too many bcrypt checks waiting).", ["why"])

PINSET_FETCHES = Counter(
    "pinproxy_pinset_fetches", "Fetches of the signed remote pinset (--pinset-url), by result: "
    "accepted, unchanged, fetch-error, bad-signature, invalid, rollback, same-serial, stale.",
    ["result"])
PINSET_SERIAL = Gauge("pinproxy_pinset_serial", "The 'serial' of the signed pinset in force.",
                      multiprocess_mode="mostrecent")
PINSET_VALID_UNTIL = Gauge(
    "pinproxy_pinset_valid_until_timestamp_seconds", "The 'valid_until' of the signed pinset in "
    "force (Unix time): alert well before it passes.", multiprocess_mode="mostrecent")

PINSET_STALE = Gauge("pinproxy_pinset_stale", "1 while the signed pinset in force is past its "
                     "valid_until and no newer one could be fetched (--on-stale applies).",
                     multiprocess_mode="mostrecent")
PINSET_WENT_STALE = Counter("pinproxy_pinset_went_stale",
                            "Times the signed pinset in force went stale.")
STALE_CONNECTIONS = Counter("pinproxy_stale_pinset_connections",
                            "Upstream connections made while the signed pinset in force was stale.")
REPORTS = Counter(
    "pinproxy_reports", "Violation reports for a report_uri collector, by result: sent, failed "
    "(refused, or still failing after the retries), dropped (the queue was full), deduplicated "
    "(the same violation was reported within report_dedupe).", ["result"])
TIMEOUTS = Counter("pinproxy_timeouts", "Connections closed or refused by a deadline, by kind "
                   "(client-idle|request-head|refused-tunnel|upstream).", ["kind"])
CONNECTIONS_REJECTED = Counter("pinproxy_connections_rejected",
                               "Client connections refused because --max-connections were open.")

# The `kind` label of TIMEOUTS: a fixed set, so a label never comes from input.
TIMEOUT_KINDS = ("client-idle", "request-head", "refused-tunnel", "upstream")
HOSTS_LEARNED = Counter("pinproxy_hosts_learned",
                        "Hosts learned on first use (trust on first use, --learn-file).")
LEARNED_HOSTS = Gauge("pinproxy_learned_hosts", "Learned hosts in force (the learn file's hosts "
                      "as this process last read or wrote it).", multiprocess_mode="mostrecent")

_CHECKS = {(a, r): CHECKS.labels(a.value, r.value) for a in Action for r in Reason}
_TIMEOUTS = {kind: TIMEOUTS.labels(kind) for kind in TIMEOUT_KINDS}
_LOADS_OK = PINSET_LOADS.labels("ok")
_LOADS_FAILED = PINSET_LOADS.labels("failed")
_expiring: set[str] = set()  # rule labels with a RULE_EXPIRY series


def rule_label(rule: HostRule | None) -> str:
    """The `rule` label: the host pattern as written, bounded by the pinset (never client input)."""
    return rule.host if rule is not None else NO_RULE


def record_decision(decision: Decision) -> None:
    _CHECKS[decision.action, decision.reason].inc()
    if decision.action is not Action.ALLOW:
        VIOLATIONS.labels(rule_label(decision.rule), decision.action.value).inc()


def record_upstream_leaf(rule: HostRule | None, not_after: dt.datetime) -> None:
    LEAF_EXPIRY.labels(rule_label(rule)).set(not_after.timestamp())


def record_loaded(pinset: Pinset, now: dt.datetime | None = None) -> None:
    """A pinset was put in force: its sizes, the time, and the expiry of each rule that has one
    (series of rules no longer in the pinset are removed)."""
    _LOADS_OK.inc()
    PINSET_RULES.set(len(pinset.rules))
    PINSET_PINS.set(pinset.pin_count)
    PINSET_LAST_LOAD.set((now or dt.datetime.now(dt.UTC)).timestamp())
    expiring = _rule_expiries(pinset.rules)
    for gone in _expiring - expiring.keys():
        RULE_EXPIRY.remove(gone)
    for label, when in expiring.items():
        RULE_EXPIRY.labels(label).set(when)
    _expiring.clear()
    _expiring.update(expiring)


def _rule_expiries(rules: Iterable[HostRule]) -> dict[str, float]:
    return {rule.host: dt.datetime.combine(rule.expires, dt.time(23, 59, 59), dt.UTC).timestamp()
            for rule in rules if rule.expires is not None}


def record_fetch(result: str) -> None:
    """One fetch of the signed pinset; `result` is a `pinproxy.remote.Outcome` value."""
    PINSET_FETCHES.labels(result).inc()


def record_signed_pinset(serial: int | None, valid_until: dt.datetime | None) -> None:
    """A signed pinset was put in force: its serial and valid_until (-1 when it has none)."""
    PINSET_SERIAL.set(serial if serial is not None else -1)
    PINSET_VALID_UNTIL.set(valid_until.timestamp() if valid_until is not None else -1)


def record_stale(stale: bool) -> None:
    PINSET_STALE.set(1 if stale else 0)
    if stale:
        PINSET_WENT_STALE.inc()


def record_stale_connection() -> None:
    STALE_CONNECTIONS.inc()


def record_learned_hosts(count: int, learned_one: bool = False) -> None:
    """The learned hosts in force, and whether this change learned a new one."""
    if learned_one:
        HOSTS_LEARNED.inc()
    LEARNED_HOSTS.set(count)


def record_load_failed() -> None:
    _LOADS_FAILED.inc()


def record_client_connected() -> None:
    CLIENT_CONNECTIONS.inc()


def record_client_disconnected() -> None:
    CLIENT_CONNECTIONS.dec()


def record_report_write_error() -> None:
    REPORT_WRITE_ERRORS.inc()


_AUTH_REFUSALS = {why: PROXY_AUTH_REFUSALS.labels(why) for why in ("missing", "wrong", "busy")}


def record_proxy_auth_refused(why: str) -> None:
    _AUTH_REFUSALS[why].inc()


_REPORTS = {result: REPORTS.labels(result)
            for result in ("sent", "failed", "dropped", "deduplicated")}


def record_report(result: str) -> None:
    _REPORTS[result].inc()
def record_timeout(kind: str) -> None:
    """One connection ended by the deadline `kind`, one of TIMEOUT_KINDS (KeyError otherwise)."""
    _TIMEOUTS[kind].inc()


def record_connection_rejected() -> None:
    CONNECTIONS_REJECTED.inc()


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type: merged from every worker's files when
    `PROMETHEUS_MULTIPROC_DIR` is set (the `--workers` supervisor), else this process's."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
