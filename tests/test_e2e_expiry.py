"""End to end: `on_expiry` with a real `pinproxy run`, real loopback TLS servers and curl.

Every rule here expired on 2020-01-01 and its pins match the genuine chain served: what
happens is the rule's `on_expiry` alone. allow: passes unreported; report (the default): passes,
and each connection is logged, written to the report log and counted; block: refused with the
502 page, the upstream gets zero bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import Proxy, curl, report_records, run_pinproxy, start_pinproxy
from tests.test_e2e_admin import delta, scrape
from tests.test_e2e_enforce import assert_untouched
from tests.upstream import wait_for

pytestmark = pytest.mark.e2e

NAMES = ("allow.expiry.test", "report.expiry.test", "block.expiry.test", "inherit.expiry.test")
CHECKS = "pinproxy_checks_total"
VIOLATIONS = "pinproxy_violations_total"


@pytest.fixture(scope="module")
def leaf(pki: TrustedPki) -> trustme.LeafCert:
    """The genuine certificate of every name: the pinned root's chain."""
    return pki.issue(pki.intermediate, *NAMES)


def expired_rule(host: str, pin: str, on_expiry: str | None) -> str:
    line = f"    on_expiry: {on_expiry}\n" if on_expiry else ""
    return f'  - host: {host}\n    expires: 2020-01-01\n{line}    pins: ["{pin}"]\n'


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki,
          confdir: Path) -> Iterator[Proxy]:
    """The pinset's default (report), with per-rule allow and block."""
    folder = tmp_path_factory.mktemp("expiry")
    pinset = folder / "pins.yaml"
    pinset.write_text("version: 1\nhosts:\n"
                      + expired_rule("allow.expiry.test", pki.root_pin, "allow")
                      + expired_rule("report.expiry.test", pki.root_pin, None)
                      + expired_rule("block.expiry.test", pki.root_pin, "block"))
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=folder / "violations.jsonl") as running:
        yield running


def records_for(proxy: Proxy, host: str) -> list[dict[str, object]]:
    return [r for r in report_records(proxy) if r["hostname"] == host]


def test_allow_passes_unreported_and_says_so_once(proxy: Proxy, serve: Serve,
                                                  leaf: trustme.LeafCert) -> None:
    server = serve(leaf)
    before = scrape(proxy)
    for _ in range(2):
        result = curl(proxy, "allow.expiry.test", server.port, "/a")
        assert result.status == 200, result
    assert [r.path for r in server.requests] == ["/a", "/a"]
    proxy.wait_for_output(r"rule for allow.expiry.test at \S+:\d+ expired on 2020-01-01 and "
                          r"is not enforced \(on_expiry: allow\)\n")
    assert proxy.output().count("rule for allow.expiry.test") == 1
    after = scrape(proxy)
    assert delta(before, after, CHECKS, action="allowed", reason="host-not-pinned") == 2
    assert delta(before, after, VIOLATIONS, rule="allow.expiry.test", action="reported") == 0
    assert records_for(proxy, "allow.expiry.test") == []


def test_report_passes_and_reports_every_connection(proxy: Proxy, serve: Serve,
                                                    leaf: trustme.LeafCert) -> None:
    server = serve(leaf)
    before = scrape(proxy)
    for _ in range(2):
        result = curl(proxy, "report.expiry.test", server.port, "/r")
        assert result.status == 200, result
    assert [r.path for r in server.requests] == ["/r", "/r"]
    wait_for(lambda: len(records_for(proxy, "report.expiry.test")) >= 2)
    records = records_for(proxy, "report.expiry.test")
    assert len(records) == 2
    assert all((r["action"], r["reason"], r["mode"], r["port"]) ==
               ("reported", "rule-expired", "enforce", server.port) for r in records)
    assert records[0]["effective-expiration-date"] == "2020-01-01T23:59:59+00:00"
    proxy.wait_for_output(r"action=reported host=report.expiry.test port=\d+ "
                          r"reason=rule-expired rule=\S+:\d+ mode=enforce .*"
                          r"detail=\"the rule expired after 2020-01-01 \(on_expiry: report\); "
                          r"its pins still match the chain\"")
    proxy.wait_for_output(r"rule for report.expiry.test at \S+:\d+ expired on 2020-01-01 and "
                          r"is not enforced \(on_expiry: report\): every connection it covers "
                          r"is reported")
    after = scrape(proxy)
    assert delta(before, after, CHECKS, action="reported", reason="rule-expired") == 2
    assert delta(before, after, VIOLATIONS, rule="report.expiry.test", action="reported") == 2


def test_block_refuses_with_the_page_and_the_upstream_gets_nothing(
        proxy: Proxy, serve: Serve, leaf: trustme.LeafCert) -> None:
    server = serve(leaf)
    before = scrape(proxy)
    result = curl(proxy, "block.expiry.test", server.port, "/b", "--include")
    assert result.status == 502, result
    assert "x-pinproxy-reason: rule-expired" in result.body.lower()  # HTTP/2: lower case
    assert "reason: rule-expired: the host's rule is past its 'expires' date" in result.body
    assert "detail: the rule expired after 2020-01-01 (on_expiry: block)" in result.body
    assert_untouched(server)
    [record] = wait_for(lambda: records_for(proxy, "block.expiry.test"))
    assert (record["action"], record["reason"]) == ("blocked", "rule-expired")
    proxy.wait_for_output(r"action=blocked host=block.expiry.test port=\d+ reason=rule-expired")
    after = scrape(proxy)
    assert delta(before, after, CHECKS, action="blocked", reason="rule-expired") == 1
    assert delta(before, after, VIOLATIONS, rule="block.expiry.test", action="blocked") == 1


@pytest.fixture(scope="module")
def blocking_proxy(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki,
                   confdir: Path) -> Iterator[Proxy]:
    """`on_expiry: block` at the top; one rule inherits it, one overrides it with allow."""
    folder = tmp_path_factory.mktemp("expiry-block")
    pinset = folder / "pins.yaml"
    pinset.write_text("version: 1\non_expiry: block\nhosts:\n"
                      + expired_rule("inherit.expiry.test", pki.root_pin, None)
                      + expired_rule("allow.expiry.test", pki.root_pin, "allow"))
    with start_pinproxy(pinset, confdir, pki.ca_bundle,
                        report_log=folder / "violations.jsonl") as running:
        yield running


def test_a_rule_inherits_the_pinsets_on_expiry(blocking_proxy: Proxy, serve: Serve,
                                               leaf: trustme.LeafCert) -> None:
    server = serve(leaf)
    result = curl(blocking_proxy, "inherit.expiry.test", server.port, "/i", "--include")
    assert result.status == 502 and "x-pinproxy-reason: rule-expired" in result.body.lower()
    assert_untouched(server)


def test_a_rule_overrides_the_pinsets_on_expiry(blocking_proxy: Proxy, serve: Serve,
                                                leaf: trustme.LeafCert) -> None:
    server = serve(leaf)
    result = curl(blocking_proxy, "allow.expiry.test", server.port, "/o")
    assert result.status == 200, result
    assert [r.path for r in server.requests] == ["/o"]
    assert records_for(blocking_proxy, "allow.expiry.test") == []


@pytest.mark.parametrize(("days", "warned"), [(10, True), (60, False)])
def test_check_warns_of_a_rule_expiring_within_the_days_asked_for(
        tmp_path: Path, pki: TrustedPki, days: int, warned: bool) -> None:
    last_day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f"version: 1\nhosts:\n  - host: a.expiry.test\n    expires: {last_day}\n"
                      f'    pins: ["{pki.root_pin}", "{pki.intermediate_pin}"]\n')
    done = run_pinproxy("check", str(pinset), "--expiry-warning", "30", "--strict")
    assert done.returncode == (1 if warned else 0), done.stdout + done.stderr
    assert ("[expires-soon]" in done.stdout) is warned
    assert "on_expiry report" in done.stdout or warned
