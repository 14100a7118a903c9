"""Tests of `pinproxy.reloading`: real pinset files, loaded and really swapped.

Each load that puts a pinset in force has a twin whose file is bad, unchanged or still loading,
and the pinset in force is then the same object as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from pinproxy.errors import PinsetError
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.reloading import CurrentPinset, FileSignature, file_signature

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 42 + "E="


def write(path: Path, pin: str) -> Path:
    path.write_text(f"version: 1\nhosts:\n  - host: api.example\n    pins: [\"{pin}\"]\n")
    return path


def pins_of(current: CurrentPinset) -> list[str]:
    assert current.pinset is not None
    return [str(pin) for pin in current.pinset.rules[0].pins]


def test_file_signature_tells_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path / "pins.yaml", PIN_A)
    first = file_signature(str(path))
    assert isinstance(first, FileSignature) and first.path == str(path.resolve())
    assert file_signature(str(path)) == first  # twin: nothing changed
    write(path, PIN_B + "  ")  # another size
    assert file_signature(str(path)) != first
    replaced = tmp_path / "new.yaml"
    write(replaced, PIN_A)
    os.replace(replaced, path)  # another inode
    assert file_signature(str(path)) not in (first, None)
    assert file_signature(str(tmp_path / "missing.yaml")) is None


def test_load_puts_a_pinset_in_force_and_tells_on_install(tmp_path: Path) -> None:
    installed: list[Pinset] = []
    current = CurrentPinset(on_install=installed.append)
    assert current.pinset is None and current.kept_note == ""
    path = write(tmp_path / "pins.yaml", PIN_A)
    assert current.load(str(path))
    assert pins_of(current) == [PIN_A] and current.path == str(path)
    assert installed == [current.pinset]
    assert current.signature == file_signature(str(path))
    assert current.kept_note == "; the previous pinset stays in force"


def test_an_unchanged_file_is_not_read_again_unless_forced(tmp_path: Path) -> None:
    loads: list[str] = []

    def counted(path: str) -> Pinset:
        loads.append(path)
        return load_pinset(path)

    current = CurrentPinset(load=counted)
    path = str(write(tmp_path / "pins.yaml", PIN_A))
    assert current.load(path, force=False)
    first = current.pinset
    assert not current.load(path, force=False)
    assert current.pinset is first and loads == [path]
    assert current.load(path, force=True)  # twin: forced, a new (equal) pinset
    assert current.pinset is not first and loads == [path, path]
    write(Path(path), PIN_B)  # twin: a changed file is read without force
    os.utime(path, ns=(0, 1))
    assert current.load(path, force=False) and pins_of(current) == [PIN_B]


def test_a_bad_file_raises_and_keeps_the_old_pinset(tmp_path: Path) -> None:
    installed: list[Pinset] = []
    current = CurrentPinset(on_install=installed.append)
    good = str(write(tmp_path / "pins.yaml", PIN_A))
    current.load(good)
    kept, signature = current.pinset, current.signature
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nhosts: [\n")
    with pytest.raises(PinsetError, match="not valid YAML"):
        current.load(str(bad))
    assert current.pinset is kept and current.path == good and current.signature == signature
    assert len(installed) == 1


def test_the_injected_load_is_used(tmp_path: Path) -> None:
    path = str(write(tmp_path / "pins.yaml", PIN_A))
    other = load_pinset(str(write(tmp_path / "other.yaml", PIN_B)))
    current = CurrentPinset(load=lambda _: other)
    current.load(path)
    assert current.pinset is other and current.path == path


def test_a_background_load_runs_in_a_thread_and_merges_requests(tmp_path: Path) -> None:
    path_a = str(write(tmp_path / "a.yaml", PIN_A))
    path_b = str(write(tmp_path / "b.yaml", PIN_B))
    threads: list[str] = []
    loads: list[str] = []
    release = threading.Event()

    def slow(path: str) -> Pinset:
        threads.append(threading.current_thread().name)
        loads.append(path)
        release.wait(5)
        return load_pinset(path)

    current = CurrentPinset(load=slow)

    async def signals() -> None:
        first = asyncio.create_task(current.load_in_background(path_a))
        await asyncio.sleep(0.05)  # the first load is running in its thread
        assert current.pinset is None  # the loop is free meanwhile; nothing swapped yet
        await asyncio.gather(current.load_in_background(path_a),
                             current.load_in_background(path_b))
        release.set()
        await first

    asyncio.run(signals())
    assert loads == [path_a, path_b]  # the two asked meanwhile became one, of the last path
    assert threading.main_thread().name not in threads
    assert pins_of(current) == [PIN_B] and current.path == path_b


def test_a_bad_file_in_a_background_load_is_logged_and_changes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "pins.yaml", PIN_A)
    current = CurrentPinset()
    current.load(str(path))
    kept = current.pinset
    path.write_text("version: 1\nhosts: [\n")
    asyncio.run(current.load_in_background(str(path)))
    assert current.pinset is kept
    assert f"pinproxy pinset reload failed: {path}:3: not valid YAML" in caplog.text
    assert caplog.text.rstrip().endswith("the previous pinset stays in force")
    # twin: the file fixed, the next background load swaps and says so
    write(path, PIN_B)
    with caplog.at_level(logging.INFO, logger="pinproxy.reloading"):
        asyncio.run(current.load_in_background(str(path)))
    assert current.pinset is not kept and pins_of(current) == [PIN_B]
    assert f"pinproxy reloaded pinset {path}: 1 host rules" in caplog.text


def test_a_background_load_error_of_any_kind_keeps_the_old_pinset(tmp_path: Path) -> None:
    path = str(write(tmp_path / "pins.yaml", PIN_A))
    current = CurrentPinset()
    current.load(path)
    kept = current.pinset

    def broken(_: str) -> Pinset:
        raise MemoryError("out of memory")

    current._load = broken
    asyncio.run(current.load_in_background(path))
    assert current.pinset is kept


def test_install_puts_a_validated_pinset_in_force_as_a_load_does(tmp_path: Path) -> None:
    installed: list[Pinset] = []
    current = CurrentPinset(on_install=installed.append)
    fetched = load_pinset(write(tmp_path / "pins.yaml", PIN_B))
    current.install(fetched, "https://pins.example/pins.yaml", "ab" * 32)
    assert current.pinset is fetched and installed == [fetched]
    assert (current.path, current.sha256, current.signature) == (
        "https://pins.example/pins.yaml", "ab" * 32, None)
    assert current.loaded_at is not None
