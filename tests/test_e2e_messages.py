"""End to end: errors name what the operator gave, briefly.

A start-up failure names the path given (not the default `config/pins.yaml`), the default is
never read unless it is the pinset in use, and values echoed back (a 50 MB host name in a
pinset, a huge Host header from a client) are cut to a few hundred characters.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.certs import TrustedPki
from tests.proxy import (
    REPO,
    mitmdump_command,
    pinproxy_command,
    run_pinproxy,
    start,
    start_pinproxy,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands here run in other working directories: import this checkout's pinproxy."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))

# A pinset that refuses nothing: loading it logs a warning saying so, which shows it was read.
PROTECTS_NOTHING = "version: 1\nunpinned: allow\nhosts: []\n"
NOTHING_WARNING = "no connection is ever refused"


def pinset_text(pin: str, host: str = "a.test") -> str:
    return f'version: 1\nhosts:\n  - host: {host}\n    pins: ["{pin}"]\n'


def run_in(cwd: Path, confdir: Path, *args: str, workers: int = 1) -> tuple[int, str]:
    done = run_pinproxy("run", "--listen-port", "0", "--admin-listen", "off",
                        "--confdir", str(confdir), "--workers", str(workers), *args,
                        cwd=cwd, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def good(tmp_path: Path, pki: TrustedPki) -> Path:
    path = tmp_path / "given.yaml"
    path.write_text(pinset_text(pki.root_pin))
    return path


def bad_path(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"pins-{kind}.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return path  # "missing": nothing there


# -- the path given, not the default --------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_a_bad_pinset_is_named_as_given(tmp_path: Path, confdir: Path, kind: str,
                                        workers: int) -> None:
    """In a directory without config/pins.yaml the message used to name the default."""
    given = bad_path(tmp_path, kind)
    code, output = run_in(tmp_path, confdir, "--pinset", str(given), workers=workers)
    assert code == 2, output
    assert f"{given}: cannot read pinset" in output
    assert "config/pins.yaml" not in output
    assert "Traceback" not in output


def test_an_unwritable_report_log_is_named_as_given(tmp_path: Path, confdir: Path,
                                                    good: Path) -> None:
    code, output = run_in(tmp_path, confdir, "--pinset", str(good),
                          "--report-log", str(tmp_path / "no" / "dir" / "r.jsonl"))
    assert code == 2, output
    assert f"pinproxy cannot open report log '{tmp_path}/no/dir/r.jsonl'" in output
    assert "config/pins.yaml" not in output


@pytest.mark.parametrize("default", ["protects-nothing", "fifo", "broken"])
@pytest.mark.parametrize("failure", ["pinset", "report-log"])
def test_the_default_pinset_is_never_read_when_another_is_given(
        tmp_path: Path, confdir: Path, good: Path, default: str, failure: str) -> None:
    """config/pins.yaml in the working directory, --pinset naming another file: a failed
    start-up used to load the default first (mitmproxy's option rollback)."""
    (tmp_path / "config").mkdir()
    default_path = tmp_path / "config" / "pins.yaml"
    if default == "fifo":
        os.mkfifo(default_path)
    else:
        default_path.write_text(PROTECTS_NOTHING if default == "protects-nothing"
                                else "version: 1\nhosts: [oops\n")
    args = (["--pinset", str(tmp_path / "missing.yaml")] if failure == "pinset" else
            ["--pinset", str(good), "--report-log", str(tmp_path / "no" / "r.jsonl")])
    code, output = run_in(tmp_path, confdir, *args)
    assert code == 2, output
    assert "config/pins.yaml" not in output
    assert NOTHING_WARNING not in output
    expected = (f"{tmp_path}/missing.yaml: cannot read pinset" if failure == "pinset"
                else "pinproxy cannot open report log")
    assert expected in output


def test_the_default_pinset_is_read_when_none_is_given(tmp_path: Path, confdir: Path) -> None:
    """The twin: without --pinset, config/pins.yaml is the pinset (and is read)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "pins.yaml").write_text(PROTECTS_NOTHING)
    code, output = run_in(tmp_path, confdir, "--report-log", str(tmp_path / "no" / "r.jsonl"))
    assert code == 2, output
    assert NOTHING_WARNING in output  # loaded, then the report log failed
    assert "pinproxy cannot open report log" in output


def test_the_given_pinset_serves_with_a_broken_default_beside_it(
        tmp_path: Path, confdir: Path, good: Path, pki: TrustedPki) -> None:
    (tmp_path / "config").mkdir()
    os.mkfifo(tmp_path / "config" / "pins.yaml")
    command = ["run", "--pinset", str(good), "--listen-port", "0", "--admin-listen", "off",
               "--confdir", str(confdir), "--upstream-ca", str(pki.ca_bundle)]

    with start(pinproxy_command(*command), confdir, cwd=tmp_path) as proxy:
        proxy.wait_for_output(f"1 host rules, 1 pins from {good}")
    assert "config/pins.yaml" not in proxy.output()


@pytest.mark.parametrize("named", [True, False])
def test_mitmdump_script_reads_the_default_only_when_no_pinset_is_set(
        tmp_path: Path, confdir: Path, good: Path, named: bool) -> None:
    """`mitmdump -s addons/pinning.py` keeps config/pins.yaml as its default."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "pins.yaml").write_text(PROTECTS_NOTHING)
    sets = ["--set", f"pinset={good}"] if named else []
    command = mitmdump_command("--listen-port", "0", "--set", f"confdir={confdir}", *sets)
    with start(command, confdir, cwd=tmp_path) as proxy:
        proxy.wait_for_output("pinproxy listening")
        source = f"from {good}" if named else "from config/pins.yaml"
        assert source in proxy.output()
    assert (NOTHING_WARNING in proxy.output()) is not named


# -- values echoed are cut --------------------------------------------------------------------

HUGE = 50_000_000


@pytest.fixture(scope="module")
def huge_pinset(tmp_path_factory: pytest.TempPathFactory, pki: TrustedPki) -> Path:
    """A 50 MB host name in the rule at line 5."""
    path = tmp_path_factory.mktemp("huge") / "pins.yaml"
    with path.open("w") as f:
        f.write(pinset_text(pki.root_pin))
        f.write(f"  - host: {'a' * HUGE}.test\n    pins: [\"{pki.root_pin}\"]\n")
    return path


def assert_short_and_located(output: str, pinset: Path) -> None:
    assert len(output) < 2000, output[:3000]
    line = next(line for line in output.splitlines() if line.startswith(f"{pinset}:"))
    assert line.startswith(f"{pinset}:5: host 'aaaa")
    assert f"...[cut: {HUGE + 5} characters] is not a valid host name" in line


def test_check_cuts_a_huge_host_name(huge_pinset: Path) -> None:
    done = run_pinproxy("check", str(huge_pinset), timeout=60)
    assert done.returncode == 2
    assert_short_and_located(done.stdout + done.stderr, huge_pinset)


def test_run_cuts_a_huge_host_name(huge_pinset: Path, tmp_path: Path, confdir: Path) -> None:
    code, output = run_in(tmp_path, confdir, "--pinset", str(huge_pinset))
    assert code == 2
    assert_short_and_located(output, huge_pinset)


def test_check_names_a_short_bad_host_whole(tmp_path: Path, pki: TrustedPki) -> None:
    """The twin: a bad name of ordinary length is echoed whole, without a cut marker."""
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(pki.root_pin, host="bad_name!.test"))
    done = run_pinproxy("check", str(path))
    assert done.returncode == 2
    assert f"{path}:3: host 'bad_name!.test' is not a valid host name" in done.stderr
    assert "[cut:" not in done.stderr


def test_a_huge_flag_value_is_cut(confdir: Path) -> None:
    done = run_pinproxy("run", "--confdir", str(confdir), "--listen-port", "9" * 100_000)
    assert done.returncode == 2
    assert len(done.stderr) < 2000
    assert "...[cut: 100000 characters] is not a port number" in done.stderr


@pytest.mark.parametrize("size", [1000, 1_000_000])
def test_a_huge_host_header_gets_a_short_page_log_line_and_report(
        tmp_path: Path, confdir: Path, good: Path, pki: TrustedPki, size: int) -> None:
    """mitmproxy validates the request line's host (a long one is its own 400), but takes a
    Host header of any size: pinproxy refuses it as an invalid host, briefly."""
    report_log = tmp_path / "r.jsonl"
    with start_pinproxy(good, confdir, pki.ca_bundle, report_log=report_log) as proxy:
        mark = len(proxy.output())
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"GET http://free.test/ HTTP/1.1\r\nHost: {'b' * size}.test\r\n"
                         "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502") and b"X-Pinproxy-Reason: invalid-host" in head
        assert len(body) < 2000
        assert f"...[cut: {size + 5} characters]" in body.decode()
        line = proxy.wait_for_output(r"pinproxy action=blocked[^\n]*reason=invalid-host[^\n]*")
        assert len(line.group(0)) < 2000
        assert len(proxy.log_lines_since(mark)) < 5000
        record = json.loads(report_log.read_text())
        assert len(report_log.read_text()) < 2000
        assert record["reason"] == "invalid-host"


def test_a_huge_connect_authority_is_mitmproxys_400_and_a_short_log_line(
        confdir: Path, good: Path, pki: TrustedPki) -> None:
    """mitmproxy refuses a request line whose host is not valid (a megabyte one included) with
    its own 400, which echoes the line back to the client that sent it; its log line of the
    whole request line is cut by pinproxy's log handler."""
    with start_pinproxy(good, confdir, pki.ca_bundle) as proxy:
        mark = len(proxy.output())
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"CONNECT {'c' * 1_000_000}:443 HTTP/1.1\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400")
        proxy.wait_for_output(r"Bad HTTP request line")
        proxy.wait_for_output(r"client disconnect", timeout=5)
        logged = proxy.log_lines_since(mark)
        assert len(logged) < 10_000
        assert "...[cut: " in logged
