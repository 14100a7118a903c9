"""pinproxy.files against real files: modes at creation, no partial files, exclusive and atomic."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pinproxy.files import (
    PartialWriteError,
    create_exclusively,
    open_regular,
    read_regular,
    replace_atomically,
    write_all,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_create_exclusively_sets_mode_at_creation(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "key.pem"
    old = os.umask(0)
    try:
        create_exclusively(target, b"secret", mode)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert _mode(target) == mode


def test_create_exclusively_refuses_existing_file_and_leaves_it(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        create_exclusively(target, b"new", 0o600)
    assert target.read_bytes() == b"old"


def test_create_exclusively_removes_partial_file_after_failed_write(tmp_path: Path) -> None:
    target = tmp_path / "parent-is-a-file"
    target.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        create_exclusively(target / "key.pem", b"secret", 0o600)
    assert target.read_bytes() == b"x"


def test_write_all_to_full_device_raises() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError):
            write_all(fd, b"x" * 100_000)
    finally:
        os.close(fd)


def test_write_all_writes_every_byte(tmp_path: Path) -> None:
    target = tmp_path / "big"
    data = os.urandom(1 << 20)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    assert target.read_bytes() == data


def test_write_all_finishes_short_writes_and_retries_eintr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    real_write = os.write
    calls = {"n": 0}

    def short_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise InterruptedError
        return real_write(fd, bytes(data[:3]))  # at most 3 bytes a call

    monkeypatch.setattr(os, "write", short_write)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    assert target.read_bytes() == b"0123456789"


@pytest.mark.parametrize(("results", "error", "written"), [
    ([0], OSError, None),  # no progress at all: ENOSPC, not a loop for ever
    ([4, 0], PartialWriteError, 4),  # progress, then none
])
def test_write_all_never_spins_on_a_zero_byte_write(
        monkeypatch: pytest.MonkeyPatch, results: list[int], error: type[OSError],
        written: int | None) -> None:
    returned = iter(results)
    calls = {"n": 0}

    def stuck_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        return next(returned)

    monkeypatch.setattr(os, "write", stuck_write)
    with pytest.raises(error) as failed:
        write_all(99, b"0123456789")
    assert failed.value.errno == errno.ENOSPC
    assert calls["n"] == len(results)
    assert getattr(failed.value, "written", None) == written
    assert (type(failed.value) is PartialWriteError) is (written is not None)


def test_write_all_reports_how_much_of_a_record_a_full_pipe_took() -> None:
    """A real short write: a non-blocking pipe takes what fits, then refuses the rest."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        with pytest.raises(PartialWriteError) as failed:
            write_all(write_end, b"x" * (4 << 20))
        assert 0 < failed.value.written < 4 << 20
        assert failed.value.errno == errno.EAGAIN
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_replace_atomically_replaces_with_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "ca.pem"
    target.write_bytes(b"old")
    os.chmod(target, 0o666)
    old = os.umask(0)
    try:
        replace_atomically(target, b"new", mode)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert _mode(target) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["ca.pem"]


def test_replace_atomically_failure_leaves_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ca.pem"
    target.write_bytes(b"old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        replace_atomically(tmp_path / "dir", b"new", 0o600)  # rename onto a directory fails
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "dir"]


def test_open_regular_reads_a_regular_file_and_a_symlink_to_one(tmp_path: Path) -> None:
    (tmp_path / "pins.yaml").write_bytes(b"version: 1\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "pins.yaml")
    assert read_regular(tmp_path / "pins.yaml") == b"version: 1\n"
    assert read_regular(tmp_path / "link.yaml") == b"version: 1\n"


@pytest.mark.parametrize(("make", "complaint"), [
    (os.mkfifo, "not a regular file"),
    (os.mkdir, "a directory|Is a directory"),
])
def test_open_regular_refuses_at_once_what_is_not_a_regular_file(
        tmp_path: Path, make: Callable[[Path], None], complaint: str) -> None:
    path = tmp_path / "pins.yaml"
    make(path)  # a FIFO with no writer: a blocking open would wait for ever
    with pytest.raises(OSError, match=complaint):
        open_regular(path)
