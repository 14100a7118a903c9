"""pinproxy.files against real files: modes at creation, no partial files, exclusive and atomic."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pinproxy.files import (
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
