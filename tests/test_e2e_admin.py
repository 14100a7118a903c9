"""End to end: the admin endpoint of a real `pinproxy run`: /metrics counts exactly the traffic
sent, /pinset shows the file in force, /readyz and /healthz answer, and the admin and proxy
ports never stand in for each other."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki, leaf_pin
from tests.conftest import Serve
from tests.proxy import Proxy, curl, curl_plain, run_pinproxy, start_pinproxy
from tests.upstream import wait_for

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proxy: Proxy) -> Samples:
    response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def pinset_text(pki: TrustedPki, good_leaf: trustme.LeafCert, extra: str = "") -> str:
    return f"""\
version: 1
mode: enforce
unpinned: block
hosts:
  - host: leaf.pinned.test
    pins: ["{leaf_pin(good_leaf)}"]
  - host: report.pinned.test
    mode: report
    expires: 2099-12-31
    pins: ["{pki.root_pin}"]
{extra}"""


@pytest.fixture
def pinset(tmp_path: Path, pki: TrustedPki, good_leaf: trustme.LeafCert) -> Path:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki, good_leaf))
    return path


@pytest.fixture
def proxy(pinset: Path, confdir: Path, pki: TrustedPki) -> Iterator[Proxy]:
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as running:
        yield running


def test_metrics_count_exactly_the_traffic_sent(proxy: Proxy, serve: Serve, pki: TrustedPki,
                                                 good_leaf: trustme.LeafCert,
                                                 rogue_leaf: trustme.LeafCert) -> None:
    good, rogue = serve(good_leaf), serve(rogue_leaf)
    unpinned = serve(pki.issue(pki.intermediate, "nobody.test"))
    before = scrape(proxy)
    for _ in range(3):
        assert curl(proxy, "leaf.pinned.test", good.port).status == 200
    for _ in range(2):
        assert curl(proxy, "leaf.pinned.test", rogue.port).status == 502
    assert curl(proxy, "report.pinned.test", rogue.port).status == 200
    assert curl(proxy, "nobody.test", unpinned.port).status == 502
    assert curl_plain(proxy, "http://leaf.pinned.test/").status == 502  # a request-level refusal
    wait_for(lambda: value(scrape(proxy), "pinproxy_client_connections") == 0)
    after = scrape(proxy)

    def checks(action: str, reason: str) -> float:
        return delta(before, after, "pinproxy_checks_total", action=action, reason=reason)

    assert checks("allowed", "pin-matched") == 3
    assert checks("blocked", "pin-mismatch") == 2
    assert checks("reported", "pin-mismatch") == 1
    assert checks("blocked", "host-not-pinned") == 1
    assert checks("blocked", "plaintext-to-pinned-host") == 1
    assert sum(v for (name, _), v in after.items() if name == "pinproxy_checks_total") - sum(
        v for (name, _), v in before.items() if name == "pinproxy_checks_total") == 8

    def violations(rule: str, action: str) -> float:
        return delta(before, after, "pinproxy_violations_total", rule=rule, action=action)

    assert violations("leaf.pinned.test", "blocked") == 3  # two mismatches, one plaintext
    assert violations("report.pinned.test", "reported") == 1
    assert violations("-", "blocked") == 1
    assert violations("leaf.pinned.test", "allowed") == 0  # allowed is never a violation
    assert delta(before, after, "pinproxy_check_duration_seconds_count") == 7  # handshakes
    assert value(after, "pinproxy_client_connections") == 0

    leaf = x509.load_pem_x509_certificate(good_leaf.cert_chain_pems[0].bytes())
    rogue_cert = x509.load_pem_x509_certificate(rogue_leaf.cert_chain_pems[0].bytes())
    assert value(after, "pinproxy_upstream_leaf_expiry_timestamp_seconds",
                 rule="leaf.pinned.test") in {leaf.not_valid_after_utc.timestamp(),
                                              rogue_cert.not_valid_after_utc.timestamp()}
    assert value(after, "pinproxy_upstream_leaf_expiry_timestamp_seconds",
                 rule="report.pinned.test") == rogue_cert.not_valid_after_utc.timestamp()
    assert value(after, "pinproxy_rule_expiry_timestamp_seconds", rule="report.pinned.test") == (
        dt.datetime(2099, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())
    assert ("pinproxy_rule_expiry_timestamp_seconds",
            frozenset({("rule", "leaf.pinned.test")})) not in after  # no expires, no series
    assert value(after, "pinproxy_pinset_rules") == 2
    assert value(after, "pinproxy_pinset_pins") == 2
    assert value(after, "pinproxy_report_write_errors_total") == 0


def test_the_leaf_expiry_is_the_last_leaf_served(proxy: Proxy, serve: Serve,
                                                 good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    assert curl(proxy, "leaf.pinned.test", server.port).status == 200
    leaf = x509.load_pem_x509_certificate(good_leaf.cert_chain_pems[0].bytes())
    assert value(scrape(proxy), "pinproxy_upstream_leaf_expiry_timestamp_seconds",
                 rule="leaf.pinned.test") == leaf.not_valid_after_utc.timestamp()


def test_reloads_are_counted_and_shown(proxy: Proxy, pinset: Path, pki: TrustedPki,
                                       good_leaf: trustme.LeafCert) -> None:
    first = scrape(proxy)
    assert value(first, "pinproxy_pinset_loads_total", result="ok") == 1
    assert value(first, "pinproxy_pinset_loads_total", result="failed") == 0
    loaded_at = value(first, "pinproxy_pinset_last_load_timestamp_seconds")
    assert abs(loaded_at - dt.datetime.now(dt.UTC).timestamp()) < 120

    pinset.write_text("version: 1\nhosts: [oops\n")
    proxy.reload()
    wait_for(lambda: value(scrape(proxy), "pinproxy_pinset_loads_total", result="failed") == 1)
    assert value(scrape(proxy), "pinproxy_pinset_rules") == 2  # the old pinset stays

    pinset.write_text(pinset_text(pki, good_leaf).replace(
        "    expires: 2099-12-31\n", "") + f"""\
  - host: "*.later.test"
    expires: 2098-01-02
    pins: ["{pki.root_pin}"]
""")
    proxy.reload()
    wait_for(lambda: value(scrape(proxy), "pinproxy_pinset_loads_total", result="ok") == 2)
    after = scrape(proxy)
    assert value(after, "pinproxy_pinset_rules") == 3
    assert value(after, "pinproxy_rule_expiry_timestamp_seconds", rule="*.later.test") == (
        dt.datetime(2098, 1, 2, 23, 59, 59, tzinfo=dt.UTC).timestamp())
    assert not any(name == "pinproxy_rule_expiry_timestamp_seconds"
                   and ("rule", "report.pinned.test") in labels for name, labels in after)
    shown = httpx.get(f"{proxy.admin_url}/pinset", timeout=5).json()
    assert shown["sha256"] == hashlib.sha256(pinset.read_bytes()).hexdigest()
    assert [rule["host"] for rule in shown["rules"]] == [
        "leaf.pinned.test", "report.pinned.test", "*.later.test"]


def test_pinset_shows_the_file_in_force(proxy: Proxy, pinset: Path,
                                        good_leaf: trustme.LeafCert) -> None:
    response = httpx.get(f"{proxy.admin_url}/pinset", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    shown = response.json()
    assert shown["source"] == str(pinset)
    assert shown["sha256"] == hashlib.sha256(pinset.read_bytes()).hexdigest()
    assert (shown["mode"], shown["unpinned"], shown["pin_count"]) == ("enforce", "block", 2)
    loaded_at = dt.datetime.fromisoformat(shown["loaded_at"])
    assert loaded_at.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - loaded_at).total_seconds()) < 120
    assert shown["rules"][0] == {
        "host": "leaf.pinned.test", "include_subdomains": False, "mode": "enforce",
        "pins": [leaf_pin(good_leaf)], "expires": None, "on_expiry": "report",
        "location": f"{pinset}:5"}
    assert shown["rules"][1]["expires"] == "2099-12-31"
    assert shown["rules"][1]["mode"] == "report"


def test_health_and_readiness_answer_once_serving(proxy: Proxy) -> None:
    assert httpx.get(f"{proxy.admin_url}/healthz", timeout=5).status_code == 200
    ready = httpx.get(f"{proxy.admin_url}/readyz", timeout=5)
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert f"admin on http://127.0.0.1:{proxy.admin_port}" in proxy.output()


def test_the_admin_port_never_proxies_and_the_proxy_port_never_serves_metrics(
        proxy: Proxy, serve: Serve, good_leaf: trustme.LeafCert) -> None:
    server = serve(good_leaf)
    assert proxy.admin_port is not None
    with socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{server.port}\r\n\r\n".encode())
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.") and " 200 " not in answer.splitlines()[0]
    assert server.connections_accepted == 0
    on_proxy_port = httpx.get(f"{proxy.url}/metrics", timeout=5)
    assert on_proxy_port.status_code != 200
    assert "pinproxy_checks_total" not in on_proxy_port.text


def test_admin_off_opens_no_admin_port(pinset: Path, confdir: Path, pki: TrustedPki) -> None:
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--admin-listen", "off") as running:
        assert running.admin_port is None
        assert "admin on" not in running.output()


def test_an_admin_port_in_use_refuses_to_start(pinset: Path, confdir: Path,
                                               pki: TrustedPki) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_pinproxy("run", "--pinset", str(pinset), "--listen-port", "0",
                            "--confdir", str(confdir), "--upstream-ca", str(pki.ca_bundle),
                            "--admin-listen", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"cannot listen on admin address 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
