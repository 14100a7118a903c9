"""The supervisor's pinset check runs in a forked child: its verdict is the exit code, and
whatever stops it says why on stderr (the workers' traffic is tested end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinproxy.proxy.workers import validate_pinset


def test_a_good_pinset_passes_and_a_bad_one_prints_its_problems(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nhosts: []\n")
    assert validate_pinset(str(good)) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nhosts: []\n")
    assert validate_pinset(str(bad)) == 2
    assert f"{bad}:1: unsupported pinset version '2'" in capfd.readouterr().err


def test_an_unexpected_error_in_the_check_refuses_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    def broken(path: str) -> None:
        raise MemoryError("no room for the pinset")

    monkeypatch.setattr("pinproxy.loader.load_pinset", broken)
    path = tmp_path / "pins.yaml"
    assert validate_pinset(str(path)) == 70
    err = capfd.readouterr().err
    assert err == (f"pinproxy: could not check the pinset {path}: "
                   "MemoryError('no room for the pinset'); not starting\n")
