"""End to end: no report lost. The report log follows logrotate's `mv` + SIGHUP, a moved or
deleted file (without a signal), and a failing location, with `--workers 2` too.

Real `pinproxy run`, real files renamed and unlinked with `os.rename` / `os.unlink`, real SIGHUP;
each violation is a real refused handshake (the pinset pins the other root).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import Proxy, curl, start_pinproxy
from tests.upstream import UpstreamServer, wait_for

pytestmark = pytest.mark.e2e

HOST = "root.pinned.test"


def pinset_text(pin: str) -> str:
    return f'version: 1\nhosts:\n  - host: {HOST}\n    pins: ["{pin}"]\n'


@pytest.fixture
def pinset(tmp_path: Path, pki: TrustedPki) -> Path:
    """Pins the rogue root: every handshake with the genuine server is a violation."""
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki.rogue_root_pin))
    return path


@pytest.fixture
def genuine(serve: Serve, good_leaf: trustme.LeafCert) -> UpstreamServer:
    return serve(good_leaf)


@pytest.fixture
def report_log(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "violations.jsonl"


@pytest.fixture
def proxy(pinset: Path, confdir: Path, pki: TrustedPki, report_log: Path) -> Iterator[Proxy]:
    report_log.parent.mkdir()
    with start_pinproxy(pinset, confdir, pki.ca_bundle, report_log=report_log) as proxy:
        yield proxy


def records(path: Path) -> list[dict[str, object]]:
    """The records of one report file (every line whole JSON), none if it is missing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def violate(proxy: Proxy, server: UpstreamServer) -> None:
    result = curl(proxy, HOST, server.port)
    assert result.status == 502 and "reason: pin-mismatch" in result.body, result


def write_errors(proxy: Proxy) -> float:
    """`pinproxy_report_write_errors_total` on /metrics (the supervisor's, summed over workers)."""
    if proxy.admin_port is None:  # --workers: the supervisor names its admin port on its own line
        proxy.admin_port = int(proxy.wait_for_output(r"admin listening on http://[^\s]*:(\d+)")
                               .group(1))
    response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5)
    assert response.status_code == 200
    return sum(sample.value for family in text_string_to_metric_families(response.text)
               for sample in family.samples
               if sample.name == "pinproxy_report_write_errors_total")


def sighup_handled(proxy: Proxy, count: int) -> None:
    """SIGHUP reopens the report log, then reloads the pinset: the reload's line shows both
    are done (`count` such lines in all, one per process)."""
    wait_for(lambda: proxy.output().count("reloaded pinset") >= count, timeout=10)


# -- rotation -------------------------------------------------------------------------------

def test_without_rotation_records_keep_appending_to_the_same_file(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    inode = report_log.stat().st_ino
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 2)
    assert report_log.stat().st_ino == inode
    assert write_errors(proxy) == 0


def test_rotated_with_sighup_the_path_is_reopened_at_once(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    rotated = report_log.with_name("violations.jsonl.1")
    os.rename(report_log, rotated)  # logrotate's default: mv, then postrotate kill -HUP
    proxy.reload()
    sighup_handled(proxy, 1)
    assert report_log.is_file()  # re-created by the signal, before any new record
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    assert len(records(rotated)) == 1  # the moved file got nothing more
    assert write_errors(proxy) == 0


def test_rotated_without_sighup_the_new_path_still_gets_the_records(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    rotated = report_log.with_name("violations.jsonl.1")
    os.rename(report_log, rotated)
    report_log.write_text("")  # logrotate's `create`: a new empty file at the path
    violate(proxy, genuine)
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 2)
    assert len(records(rotated)) == 1


def test_a_deleted_report_log_is_re_created(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    os.unlink(report_log)
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    assert records(report_log)[0]["hostname"] == HOST
    assert write_errors(proxy) == 0


# -- a location that cannot be written --------------------------------------------------------

def test_an_unwritable_path_is_logged_counted_and_recovers(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    os.unlink(report_log)
    report_log.mkdir()  # the path is now a directory: the reopen fails
    mark = len(proxy.output())
    violate(proxy, genuine)
    violate(proxy, genuine)
    wait_for(lambda: write_errors(proxy) == 2)
    logged = proxy.log_lines_since(mark)
    assert logged.count(f"could not write a record to report log '{report_log}': "
                        "Is a directory; the next record tries again") == 2

    report_log.rmdir()  # fixed: the next record opens the path again
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    assert write_errors(proxy) == 2
    assert proxy.process.poll() is None


def test_a_full_disk_is_logged_counted_and_recovers(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    """/dev/full answers every write with ENOSPC: the open succeeds, the write fails."""
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    rotated = report_log.with_name("violations.jsonl.1")
    os.rename(report_log, rotated)
    report_log.symlink_to("/dev/full")
    mark = len(proxy.output())
    violate(proxy, genuine)
    wait_for(lambda: write_errors(proxy) == 1)
    assert ("could not write a record to report log" in proxy.log_lines_since(mark)
            and "No space left on device" in proxy.log_lines_since(mark))

    report_log.unlink()  # space again
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    assert len(records(rotated)) == 1
    assert write_errors(proxy) == 1


def test_a_failed_reopen_on_sighup_is_logged_and_the_next_record_retries(
        proxy: Proxy, report_log: Path, genuine: UpstreamServer) -> None:
    os.rename(report_log, report_log.with_name("violations.jsonl.1"))
    report_log.mkdir()
    proxy.reload()
    proxy.wait_for_output(f"could not reopen report log '{report_log}': Is a directory")
    report_log.rmdir()
    violate(proxy, genuine)
    wait_for(lambda: len(records(report_log)) == 1)
    assert write_errors(proxy) == 0  # no record was lost


# -- --workers 2: each worker follows the path on its own -----------------------------------

@pytest.mark.parametrize("signal", [True, False], ids=["mv+sighup", "mv"])
def test_workers_each_follow_a_rotation(
        pinset: Path, confdir: Path, pki: TrustedPki, report_log: Path,
        genuine: UpstreamServer, signal: bool) -> None:
    report_log.parent.mkdir()
    with start_pinproxy(pinset, confdir, pki.ca_bundle, "--workers", "2",
                        report_log=report_log) as proxy:
        proxy.wait_for_output(r"\(worker 1/2\)")
        proxy.wait_for_output(r"\(worker 2/2\)")
        for _ in range(6):
            violate(proxy, genuine)
        wait_for(lambda: len(records(report_log)) == 6)
        rotated = report_log.with_name("violations.jsonl.1")
        os.rename(report_log, rotated)
        if signal:
            proxy.reload()
            sighup_handled(proxy, 2)
            assert report_log.is_file()
        # the kernel spreads new connections over both workers: a worker still writing to
        # the moved file would leave records there
        for _ in range(12):
            violate(proxy, genuine)
        wait_for(lambda: len(records(report_log)) == 12)
        assert len(records(rotated)) == 6
        assert write_errors(proxy) == 0
