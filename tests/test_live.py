"""Tests of `pinproxy.tools.live`: what `pinproxy check --live` says about each host rule.

`rule_findings` is pure: table tests feed it real trustme chains (tests/certs.py) without a
network. `live_findings` is then run against real loopback TLS servers, reached through
`--connect-to` so the test names need no DNS.
"""

from __future__ import annotations

import contextlib
import socket
import time
from datetime import date

import trustme

from pinproxy.commands._args import ConnectTo, connect_to
from pinproxy.errors import PinproxyError
from pinproxy.loader import parse_pinset
from pinproxy.pins import CertificatePins
from pinproxy.pinset import Pinset
from pinproxy.tools.lint import Finding, Severity
from pinproxy.tools.live import LIVE_CODES, live_findings, rule_findings
from pinproxy.tools.probe import ProbeResult
from tests import certs, upstream
from tests.conftest import Serve

TODAY = date(2026, 11, 1)
BACKUP = "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="  # RFC 7469's example: no real key


def pinset_of(*rules: tuple[str, list[str]], mode: str = "enforce") -> Pinset:
    lines = ["version: 1", f"mode: {mode}", "hosts:"]
    for host, pins in rules:
        lines += [f'  - host: "{host}"', "    pins:"] + [f'      - "{pin}"' for pin in pins]
    return parse_pinset("\n".join(lines) + "\n", "pins.yaml")


def verified(chain: tuple[CertificatePins, ...]) -> ProbeResult:
    return ProbeResult(certs.HOST, ("127.0.0.1", 443), chain[:2], chain, None)


def codes(findings: list[Finding]) -> list[tuple[Severity, str]]:
    return [(f.severity, f.code) for f in findings]


def findings_for(pinset: Pinset, probed: ProbeResult | PinproxyError) -> list[Finding]:
    return rule_findings(pinset, pinset.rules[0], probed, TODAY)


# -- rule_findings: the pure part ----------------------------------------------------------------

def test_matching_pin_with_a_backup_has_no_findings() -> None:
    pki = certs.pki()
    pinset = pinset_of((certs.HOST, [str(pki.chain[1].spki), BACKUP]))
    assert findings_for(pinset, verified(pki.chain)) == []


def test_rotated_leaf_is_a_mismatch_with_a_stale_pin() -> None:
    """The rule pinned the old leaf only; the host now serves another leaf."""
    pki = certs.pki()
    old_leaf = str(pki.chain[0].spki)
    pinset = pinset_of((certs.HOST, [old_leaf]))
    found = findings_for(pinset, verified(pki.second_chain))
    assert codes(found) == [(Severity.ERROR, "live-no-pin-matches"),
                            (Severity.WARNING, "live-stale-pin")]
    mismatch, stale = found
    assert "the proxy would refuse it today" in mismatch.message
    for depth, cert in enumerate(pki.second_chain):  # the chain's pins, by depth
        assert f"{depth}: {cert.spki}" in mismatch.message
    assert old_leaf in stale.message
    assert f"check the new chain with 'pinproxy pin {certs.HOST}' before replacing" in stale.message
    assert mismatch.location == pinset.rules[0].location and mismatch.host == certs.HOST
    # twin: the same rule against the chain it was written for
    assert codes(findings_for(pinset, verified(pki.chain))) == [
        (Severity.WARNING, "live-no-backup")]


def test_report_mode_says_report_not_refuse() -> None:
    pki = certs.pki()
    pinset = pinset_of((certs.HOST, [BACKUP]), mode="report")
    [mismatch, _stale] = findings_for(pinset, verified(pki.chain))
    assert "the proxy would report it today" in mismatch.message


def test_no_backup_when_every_pin_is_in_the_live_chain() -> None:
    pki = certs.pki()
    leaf, intermediate = str(pki.chain[0].spki), str(pki.chain[1].spki)
    without = pinset_of((certs.HOST, [leaf, intermediate]))
    [finding] = findings_for(without, verified(pki.chain))
    assert (finding.severity, finding.code) == (Severity.WARNING, "live-no-backup")
    assert "pinproxy backup-key" in finding.message
    with_backup = pinset_of((certs.HOST, [leaf, intermediate, BACKUP]))
    assert findings_for(with_backup, verified(pki.chain)) == []  # twin


def test_whole_certificate_pins_count_as_seen() -> None:
    pki = certs.pki()
    pinset = pinset_of((certs.HOST, [str(pki.chain[0].certificate), BACKUP]))
    assert findings_for(pinset, verified(pki.chain)) == []
    assert codes(findings_for(pinset, verified(pki.second_chain)))[0] == (
        Severity.ERROR, "live-no-pin-matches")  # twin: another leaf certificate


def test_unverified_and_unreachable_are_errors_without_pin_advice() -> None:
    pki = certs.pki()
    pinset = pinset_of((certs.HOST, [str(pki.chain[0].spki)]))
    unverified = ProbeResult(certs.HOST, ("127.0.0.1", 443), pki.chain[:2], (),
                             "certificate at depth 1: unable to get local issuer certificate")
    [finding] = findings_for(pinset, unverified)
    assert finding.code == "live-unverified" and "unable to get local issuer" in finding.message
    [finding] = findings_for(pinset, PinproxyError("cannot connect to x:443: Connection refused"))
    assert finding.code == "live-unreachable" and "Connection refused" in finding.message
    assert finding.severity is Severity.ERROR


def test_every_code_is_documented() -> None:
    assert set(LIVE_CODES) == {"live-no-pin-matches", "live-unverified", "live-unreachable",
                               "live-stale-pin", "live-no-backup", "live-skipped-pattern"}


# -- live_findings: real servers -----------------------------------------------------------------

def test_live_findings_against_real_servers(pki: certs.TrustedPki, serve: Serve,
                                            good_leaf: trustme.LeafCert,
                                            rogue_leaf: trustme.LeafCert) -> None:
    genuine = serve(good_leaf)
    rotated = serve(pki.issue(pki.intermediate, "other.test"))  # a new leaf, same CA
    untrusted = serve(rogue_leaf)  # the rogue root is not in good_ca_file
    with socket.create_server(("127.0.0.1", 0)) as listener:
        closed = listener.getsockname()[1]
    leaf = certs.leaf_pin(good_leaf)
    pinset = pinset_of(
        ("leaf.pinned.test", [leaf, BACKUP]),                        # fine
        ("inter.pinned.test", [pki.intermediate_pin, pki.root_pin]),  # no backup
        ("root.pinned.test", [pki.rogue_root_pin]),                  # no match
        ("other.test", [leaf, BACKUP]),                              # leaf rotated
        ("*.wild.pinned.test", [pki.root_pin]),                      # skipped
        ("report.pinned.test", [leaf]),                              # unreachable
        ("cert.pinned.test", [leaf]),                                # does not verify
    )
    routes: list[ConnectTo] = [
        *(connect_to(f"{name}:443:127.0.0.1:{genuine.port}")
          for name in ("leaf.pinned.test", "inter.pinned.test", "root.pinned.test")),
        connect_to(f"other.test:443:127.0.0.1:{rotated.port}"),
        connect_to(f"report.pinned.test:443:127.0.0.1:{closed}"),
        connect_to(f"cert.pinned.test:443:127.0.0.1:{untrusted.port}"),
    ]
    found = live_findings(pinset, upstream_ca=str(pki.root_file), connect_to=routes,
                          timeout=5)
    by_host = {rule.host: [f.code for f in found if f.host == rule.host] for rule in pinset.rules}
    assert by_host == {
        "leaf.pinned.test": [],
        "inter.pinned.test": ["live-no-backup"],
        "root.pinned.test": ["live-no-pin-matches", "live-stale-pin"],
        "other.test": ["live-no-pin-matches", "live-stale-pin", "live-stale-pin"],
        "*.wild.pinned.test": ["live-skipped-pattern"],
        "report.pinned.test": ["live-unreachable"],
        "cert.pinned.test": ["live-unverified"],
    }
    lines = [f.location.line or 0 for f in found if f.location]
    assert lines == sorted(lines)  # file order
    upstream.wait_for(lambda: len(genuine.tls_sessions) == 3)
    assert {s.sni for s in genuine.tls_sessions} == {
        "leaf.pinned.test", "inter.pinned.test", "root.pinned.test"}


def test_live_findings_probe_hosts_concurrently() -> None:
    """Six hosts that never answer cost about one timeout, not six."""
    hosts = [f"h{n}.pinned.test" for n in range(6)]
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(socket.create_server(("127.0.0.1", 0)))
                     for _ in hosts]
        routes = [connect_to(f"{host}:443:127.0.0.1:{listener.getsockname()[1]}")
                  for host, listener in zip(hosts, listeners, strict=True)]
        started = time.monotonic()
        found = live_findings(pinset_of(*((h, [BACKUP]) for h in hosts)), connect_to=routes,
                              timeout=0.5)
        elapsed = time.monotonic() - started
    assert [f.code for f in found] == ["live-unreachable"] * 6
    assert all("no answer within 0.5 s" in f.message for f in found)
    assert elapsed < 1.5, elapsed
