"""Tests of `pinproxy.report`: the log line, the client's refusal page, the RFC 7469 record.

The three must show the same facts: host, reason, the rule's file:line, and the pins of the
verified chain by position (0 = leaf). Decisions come from `decide` on real trustme chains.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import multiprocessing
import os
import shlex
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pinproxy.files import PartialWriteError
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.policy import Action, Decision, Reason, decide, decide_plaintext, refuse_on_error
from pinproxy.report import ReportLog, log_line, refusal_page, violation_record
from tests import certs

TODAY = dt.date(2026, 3, 14)
NOW = dt.datetime(2026, 3, 14, 12, 30, 5, tzinfo=dt.UTC)
HOST = certs.HOST
BACKUP = Pin(PinKind.SPKI, hashlib.sha256(b"hello").digest())
HELLO = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="

RFC7469_FIELDS = {
    "date-time", "hostname", "port", "effective-expiration-date", "include-subdomains",
    "noted-hostname", "served-certificate-chain", "validated-certificate-chain", "known-pins",
}


def pinned_rule(**kwargs: object) -> HostRule:
    root = certs.pki("a").chain[2]
    return HostRule(host=HOST, pins=(root.spki, BACKUP),
                    location=Location("conf/pins.yaml", 12), **kwargs)  # type: ignore[arg-type]


def blocked(rule: HostRule | None = None) -> Decision:
    """A mis-issued chain for a pinned host: blocked (or reported, for a report-mode rule)."""
    rule = rule or pinned_rule()
    pinset = Pinset(rules=(rule,), source="conf/pins.yaml")
    return decide(pinset, [HOST], certs.pki("rogue").chain, TODAY)


def allowed() -> Decision:
    pinset = Pinset(rules=(pinned_rule(),), source="conf/pins.yaml")
    return decide(pinset, [HOST], certs.pki("a").chain, TODAY)


def fields_of(line: str) -> dict[str, str]:
    """`key=value` fields; a value with blanks must be quoted (JSON), as `detail=` is."""
    prefix, *pairs = shlex.split(line)
    assert prefix == "pinproxy"
    result = dict(pair.split("=", 1) for pair in pairs)
    assert len(result) == len(pairs)  # no key twice
    return result


# -- log_line ------------------------------------------------------------------------------

def test_log_line_of_a_refusal() -> None:
    decision = blocked()
    line = log_line(decision, 443)
    assert "\n" not in line and "\r" not in line
    chain = certs.pki("rogue").chain
    assert fields_of(line) == {
        "action": "blocked",
        "host": HOST,
        "port": "443",
        "reason": "pin-mismatch",
        "rule": "conf/pins.yaml:12",
        "mode": "enforce",
        "observed": ",".join(f"{depth}:{cert.spki}" for depth, cert in enumerate(chain)),
    }
    assert fields_of(line)["observed"].startswith(f"0:{chain[0].spki},1:{chain[1].spki},2:")


def test_log_line_of_an_allow_names_the_rule_and_the_good_chain() -> None:
    fields = fields_of(log_line(allowed(), 443))
    assert (fields["action"], fields["reason"], fields["rule"]) == ("allowed", "pin-matched",
                                                                    "conf/pins.yaml:12")
    assert fields["observed"].split(",")[2] == f"2:{certs.pki('a').chain[2].spki}"


def test_log_line_without_rule_port_or_chain_uses_dashes() -> None:
    decision = decide(Pinset(rules=(), source="p", unpinned=Unpinned.BLOCK), ["x.example"], (),
                      TODAY)
    fields = fields_of(log_line(decision))
    assert (fields["port"], fields["rule"], fields["mode"], fields["observed"]) == (
        "-", "-", "-", "-")
    assert fields["reason"] == "host-not-pinned"


def test_log_line_of_a_report_mode_rule() -> None:
    fields = fields_of(log_line(blocked(pinned_rule(mode=Mode.REPORT)), 8443))
    assert (fields["action"], fields["mode"], fields["port"]) == ("reported", "report", "8443")


def test_log_line_quotes_the_detail() -> None:
    line = log_line(refuse_on_error(HOST, RuntimeError('bad "thing"\nhere')), 443)
    assert "\n" not in line
    detail = line.split(" detail=", 1)[1]
    assert json.loads(detail) == 'RuntimeError: bad "thing"\nhere'


@pytest.mark.parametrize("name", ["evil.example\nforged=1", "a\n.example", "two words",
                                  "x rule=conf/other.yaml:1"])
def test_log_line_stays_one_line_of_stable_fields_for_any_host(name: str) -> None:
    # An invalid host reaches the log as it was received (SNI, CONNECT target, Host header).
    decision = decide(Pinset(rules=(), source="p"), [name], (), TODAY)
    line = log_line(decision, 443)
    assert "\n" not in line
    fields = fields_of(line)
    assert set(fields) <= {"action", "host", "port", "reason", "rule", "mode", "observed",
                           "detail"}
    assert fields["rule"] == "-"


# -- refusal_page --------------------------------------------------------------------------

def test_refusal_page_names_host_reason_rule_and_every_pin() -> None:
    decision = blocked()
    page = refusal_page(decision)
    chain = certs.pki("rogue").chain
    assert page.startswith(f"pinproxy refused the connection to {HOST}\n")
    assert "reason: pin-mismatch: no certificate of the verified chain has a pinned key" in page
    assert f"rule: {HOST} at conf/pins.yaml:12" in page
    for pin in decision.rule.pins if decision.rule else ():
        assert f"  {pin}\n" in page
    for depth, cert in enumerate(chain):
        assert f"  {depth}: {cert.spki}  {cert.subject}\n" in page
        assert f"     {cert.certificate}\n" in page
    # pinned pins come before the chain, and the chain is in leaf-first order
    assert page.index("pinned:") < page.index("verified chain (0 = leaf):")
    assert page.index(f"0: {chain[0].spki}") < page.index(f"2: {chain[2].spki}")
    # twin: the pinned root of the good chain is listed as pinned, not as observed
    assert f"{certs.pki('a').chain[2].spki}  " not in page


def test_refusal_page_without_rule_or_chain() -> None:
    page = refusal_page(refuse_on_error(HOST, ValueError("no certificate")))
    assert "reason: internal-error:" in page
    assert "detail: ValueError: no certificate" in page
    assert "rule:" not in page and "verified chain" not in page


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_an_explanation(reason: Reason) -> None:
    page = refusal_page(Decision(Action.BLOCK, reason, HOST, None))
    assert page.splitlines()[1].startswith(f"reason: {reason.value}: ")
    assert len(page.splitlines()[1]) > len(f"reason: {reason.value}: ")


# -- violation_record (RFC 7469 section 3) -------------------------------------------------

def test_violation_record_has_every_rfc7469_field() -> None:
    rule = pinned_rule(include_subdomains=True, expires=dt.date(2027, 12, 31))
    decision = blocked(rule)
    served = certs.pki("rogue").chain[:2]  # what the server sent: leaf and intermediate
    record = violation_record(decision, 443, served, NOW)
    assert set(record) >= RFC7469_FIELDS
    assert set(record) == RFC7469_FIELDS | {"mode", "action", "reason", "rule"}
    assert record["date-time"] == "2026-03-14T12:30:05+00:00"
    assert record["hostname"] == HOST
    assert record["port"] == 443
    assert record["effective-expiration-date"] == "2027-12-31T23:59:59+00:00"
    assert record["include-subdomains"] is True
    assert record["noted-hostname"] == HOST
    assert record["known-pins"] == sorted(
        f'pin-sha256="{pin.hpkp.split(chr(34))[1]}"' for pin in rule.pins)
    assert f'pin-sha256="{HELLO}"' in record["known-pins"]
    assert (record["mode"], record["action"], record["reason"], record["rule"]) == (
        "enforce", "blocked", "pin-mismatch", "conf/pins.yaml:12")
    # the chains are PEM, in order, and read back to the same certificates
    validated = [x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
                 for pem in record["validated-certificate-chain"]]
    assert validated == [cert.der for cert in certs.pki("rogue").chain]
    assert [pem.startswith("-----BEGIN CERTIFICATE-----\n")
            for pem in record["served-certificate-chain"]] == [True, True]
    assert record["served-certificate-chain"] == [cert.pem for cert in served]
    assert json.loads(json.dumps(record)) == record


def test_violation_record_of_a_report_mode_rule_without_expiry() -> None:
    record = violation_record(blocked(pinned_rule(mode=Mode.REPORT)), None,
                              (), NOW.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert record["date-time"] == "2026-03-14T12:30:05+00:00"  # always in UTC
    assert (record["mode"], record["action"]) == ("report", "reported")
    assert record["effective-expiration-date"] is None
    assert record["include-subdomains"] is False
    assert record["port"] is None
    assert record["served-certificate-chain"] == []


def test_violation_record_keeps_certificate_pins_apart_from_hpkp_pins() -> None:
    cert_pin = certs.pki("a").chain[0].certificate
    decision = blocked(HostRule(host=HOST, pins=(cert_pin, BACKUP),
                                location=Location("p.yaml", 1)))
    known = violation_record(decision, 443, (), NOW)["known-pins"]
    assert f'pin-sha256="{HELLO}"' in known
    assert str(cert_pin) in known  # a whole-certificate pin is never spelled pin-sha256
    assert cert_pin.hpkp not in known


def test_violation_record_without_a_rule() -> None:
    decision = decide(Pinset(rules=(), source="p", unpinned=Unpinned.BLOCK), ["x.example"],
                      certs.pki("a").chain, TODAY)
    record = violation_record(decision, 443, certs.pki("a").chain, NOW)
    assert set(record) == RFC7469_FIELDS | {"mode", "action", "reason", "rule"}
    assert (record["noted-hostname"], record["known-pins"], record["mode"], record["rule"]) == (
        None, [], None, None)
    assert record["hostname"] == "x.example"
    assert (record["action"], record["reason"]) == ("blocked", "host-not-pinned")


# -- ReportLog -----------------------------------------------------------------------------

def test_report_log_appends_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    records = [violation_record(blocked(), 443, certs.pki("rogue").chain, NOW),
               {"note": "line\nbreak", "n": 2},
               {"unicode": "bücher"}]
    log = ReportLog(path)
    for record in records:
        log.write(record)
    log.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline
    assert [json.loads(line) for line in lines[:-1]] == records
    # a second log on the same file appends, it does not truncate
    again = ReportLog(str(path))
    again.write({"n": 4})
    again.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [*records, {"n": 4}]


def _append_records(path: str, n: int, big: dict[str, object]) -> None:
    """One worker process: its own ReportLog on the shared file, as `--workers` runs it."""
    log = ReportLog(path)
    for i in range(50):
        log.write({**big, "writer": n, "i": i})
    log.close()


def test_report_log_lines_stay_whole_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    big = violation_record(blocked(), 443, certs.pki("rogue").chain, NOW)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_records, args=(str(path), n, big))
               for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * 4
    parsed = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(parsed) == 200
    assert sorted((p["writer"], p["i"]) for p in parsed) == [(n, i) for n in range(4)
                                                             for i in range(50)]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("change", ["none", "rename", "unlink", "replace", "reopen"])
def test_report_log_follows_its_path(tmp_path: Path, change: str) -> None:
    """A moved, deleted or replaced file is reopened at the path before the next record (one
    stat per record); without a change the same file goes on; `reopen` (SIGHUP) reopens."""
    path = tmp_path / "reports.jsonl"
    moved = tmp_path / "reports.jsonl.1"
    log = ReportLog(path)
    log.write({"n": 1})
    if change == "rename":
        path.rename(moved)
    elif change == "unlink":
        path.unlink()
    elif change == "replace":
        path.rename(moved)
        path.write_text('{"n":0}\n')
    elif change == "reopen":
        path.rename(moved)
        log.reopen()
        assert path.exists()  # re-created at once
    log.write({"n": 2})
    log.close()
    if change == "none":
        assert _lines(path) == [{"n": 1}, {"n": 2}]
    else:
        assert _lines(path)[-1] == {"n": 2} and {"n": 1} not in _lines(path)
        assert _lines(moved) == ([{"n": 1}] if change != "unlink" else [])


def test_report_log_retries_after_a_failed_open(tmp_path: Path) -> None:
    path = tmp_path / "reports.jsonl"
    log = ReportLog(path)
    path.unlink()
    path.mkdir()  # the path cannot be opened
    for _ in range(2):
        with pytest.raises(IsADirectoryError):
            log.write({"n": 1})
    with pytest.raises(IsADirectoryError):
        log.reopen()
    path.rmdir()
    log.write({"n": 2})
    log.close()
    assert _lines(path) == [{"n": 2}]


def test_report_log_ends_a_torn_record_before_the_next(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves half a line: the next record starts on its own line,
    so a reader loses only the torn one."""
    path = tmp_path / "reports.jsonl"
    log = ReportLog(path)
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(PartialWriteError) as failed:
        log.write({"n": 1})
    assert failed.value.written == 5 and failed.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    log.write({"n": 2})
    log.write({"n": 3})
    log.close()
    assert path.read_text().splitlines() == ['{"n":', '{"n":2}', '{"n":3}']


def test_a_huge_client_host_is_cut_on_the_page_the_line_and_the_record() -> None:
    name = "b" * 1_000_000 + ".test"
    decision = decide(Pinset(rules=(), source="p"), [name], (), TODAY)
    assert decision.reason is Reason.INVALID_HOST
    page, line = refusal_page(decision), log_line(decision, 80)
    record = json.dumps(violation_record(decision, 80, (), NOW))
    for text in (page, line, record):
        assert len(text) < 2000
        assert "...[cut: 1000005 characters]" in text


# -- refusals without a rule still show their evidence -------------------------------------

def test_an_unpinned_refusal_shows_host_and_chain_on_the_page_and_in_the_record() -> None:
    chain = certs.pki("a").chain
    decision = decide(Pinset(rules=(), source="p", unpinned=Unpinned.BLOCK), ["X.Example"],
                      chain, TODAY)
    page = refusal_page(decision)
    assert page.startswith("pinproxy refused the connection to x.example\n")
    assert "reason: host-not-pinned: " in page
    for depth, cert in enumerate(chain):
        assert f"  {depth}: {cert.spki}  {cert.subject}\n" in page
    record = violation_record(decision, 443, chain[:1], NOW)
    assert record["hostname"] == "x.example"
    assert record["validated-certificate-chain"] == [cert.pem for cert in chain]


@pytest.mark.parametrize(("names", "host", "detail"), [
    (["bad host"], "bad host", "host 'bad host' is not a valid host name or IP address"),
    ([], "(no host)", "the connection names no host"),
])
def test_an_invalid_or_missing_host_refusal_shows_the_chain(names: list[str], host: str,
                                                            detail: str) -> None:
    chain = certs.pki("a").chain
    decision = decide(Pinset(rules=(), source="p"), names, chain, TODAY)
    page = refusal_page(decision)
    assert page.startswith(f"pinproxy refused the connection to {host}\n")
    assert "reason: invalid-host: " in page and f"detail: {detail}" in page
    assert f"  2: {chain[2].spki}  {chain[2].subject}\n" in page
    record = violation_record(decision, 443, (), NOW)
    assert record["validated-certificate-chain"] == [cert.pem for cert in chain]
    assert record["hostname"] == ("" if not names else host)


def test_a_plaintext_refusal_names_host_and_rule() -> None:
    rule = pinned_rule(include_subdomains=True)
    decision = decide_plaintext(Pinset(rules=(rule,), source="conf/pins.yaml"), "www." + HOST,
                                TODAY)
    page = refusal_page(decision)
    assert page.startswith(f"pinproxy refused the connection to www.{HOST}\n")
    assert "at conf/pins.yaml:12" in page
    record = violation_record(decision, 80, (), NOW)
    assert (record["hostname"], record["noted-hostname"], record["reason"]) == (
        f"www.{HOST}", HOST, "plaintext-to-pinned-host")
