"""Every file pinproxy reads must be a regular file: anything else is one line and exit 2, at once.

A FIFO named as a pinset, a `file:` pin or an `--upstream-ca` used to hang `check`, `run` and
`run --workers 2` for ever (no output): a blocking open waits for a writer that never comes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.certs import TrustedPki
from tests.proxy import run_pinproxy, start_pinproxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pins.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", [
    ["check"],
    ["run", "--listen-port", "0", "--admin-listen", "off", "--confdir", "{confdir}", "--pinset"],
    ["run", "--listen-port", "0", "--admin-listen", "off", "--confdir", "{confdir}",
     "--workers", "2", "--pinset"],
])
def test_a_fifo_pinset_is_refused_at_once(
        fifo: Path, confdir: Path, command: list[str]) -> None:
    args = [arg.format(confdir=confdir) for arg in command]
    result = run_pinproxy(*args, str(fifo), timeout=20)
    assert result.returncode == 2, result.stderr
    assert f"{fifo}: cannot read pinset: not a regular file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_regular_pinset_is_read(tmp_path: Path, pki: TrustedPki) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f'version: 1\nhosts:\n  - host: a.test\n    pins: ["{pki.root_pin}"]\n')
    result = run_pinproxy("check", str(pinset), timeout=20)
    assert result.returncode == 0, result.stderr


def test_a_fifo_pin_file_is_refused_at_once(tmp_path: Path, fifo: Path) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f'version: 1\nhosts:\n  - host: a.test\n    pins: ["file:{fifo.name}"]\n')
    result = run_pinproxy("check", str(pinset), timeout=20)
    assert result.returncode == 2, result.stderr
    assert f"{pinset}:4: pin file '{fifo}': not a regular file" in result.stderr


def test_a_fifo_upstream_ca_is_refused_at_once(
        tmp_path: Path, fifo: Path, confdir: Path, pki: TrustedPki) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f'version: 1\nhosts:\n  - host: a.test\n    pins: ["{pki.root_pin}"]\n')
    result = run_pinproxy("run", "--pinset", str(pinset), "--listen-port", "0",
                          "--admin-listen", "off", "--confdir", str(confdir),
                          "--upstream-ca", str(fifo), timeout=20)
    assert result.returncode == 2, result.stderr
    assert f"--upstream-ca {fifo}: cannot read CA file: not a regular file" in result.stderr


@pytest.mark.parametrize(("hosts", "warned"), [
    ("[]", True),
    ('[{host: a.test, pins: ["PIN"]}]', False),  # the twin: one enforced rule
])
def test_a_pinset_that_refuses_nothing_is_named_at_start(
        tmp_path: Path, confdir: Path, pki: TrustedPki, hosts: str, warned: bool) -> None:
    pinset = tmp_path / "pins.yaml"
    pinset.write_text(f"version: 1\nunpinned: allow\nhosts: {hosts.replace('PIN', pki.root_pin)}\n")
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        proxy.wait_for_output("listening on")
        assert ("no connection is ever refused" in proxy.output()) is warned
