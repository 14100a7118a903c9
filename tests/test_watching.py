"""Tests of `pinproxy.watching`: the pure change detector as a table, then the poll itself on
real files with a real `CurrentPinset` (a short interval, every wait bounded)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.reloading import CurrentPinset, FileSignature
from pinproxy.watching import Changes, Seen, start_watching, watch

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 42 + "E="


def sig(inode: int, size: int = 10, path: str = "/p") -> FileSignature:
    return FileSignature(path, inode, 1, size)


# -- Changes: snapshots in, decisions out ------------------------------------------------------

A, B, C = sig(1), sig(2), sig(3)


@pytest.mark.parametrize(("polls", "expected"), [
    ([{"p": A}], [Seen.SAME]),
    ([{"p": B}, {"p": B}], [Seen.SETTLING, Seen.CHANGED]),  # stable for one whole interval
    ([{"p": B}, {"p": C}, {"p": C}], [Seen.SETTLING, Seen.SETTLING, Seen.CHANGED]),  # a burst
    ([{"p": B}, {"p": A}], [Seen.SETTLING, Seen.SAME]),  # changed and changed back
    ([{"p": None}, {"p": None}, {"p": B}, {"p": B}],
     [Seen.MISSING, Seen.MISSING, Seen.SETTLING, Seen.CHANGED]),  # gone, then back changed
    ([{"p": None}, {"p": A}], [Seen.MISSING, Seen.SAME]),  # gone, then back the same
    ([{"p": A, "q": B}, {"p": A, "q": B}], [Seen.SAME, Seen.SAME]),  # a new file is not a change
    ([{"p": A, "q": None}], [Seen.MISSING]),  # a file: pin gone
])
def test_a_change_is_reported_once_it_is_stable(polls: list[dict[str, FileSignature | None]],
                                                expected: list[Seen]) -> None:
    changes = Changes()
    changes.rebase({"p": A})
    assert [changes.observe(poll) for poll in polls] == expected


def test_a_missing_file_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    changes = Changes()
    changes.rebase({"p": A})
    for _ in range(3):
        changes.observe({"p": None})
    assert caplog.text.count("pinset file p is gone") == 1
    changes.observe({"p": A})
    changes.observe({"p": None})  # gone again: said again
    assert caplog.text.count("pinset file p is gone") == 2


# -- watch: the poll on real files --------------------------------------------------------------

INTERVAL = 0.05


def pinset_text(*pins: str, host: str = "api.example") -> str:
    return f"version: 1\nhosts:\n  - host: {host}\n    pins: [{', '.join(map(repr, pins))}]\n"


def pins_of(current: CurrentPinset) -> set[str]:
    assert current.pinset is not None
    return {str(pin) for rule in current.pinset.rules for pin in rule.pins}


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run_watching(path: Path, body: Callable[[CurrentPinset], Awaitable[None]]) -> CurrentPinset:
    """Load `path`, watch it while `body` runs, and return the pinsets for inspection."""
    current = CurrentPinset()
    current.load(str(path))

    async def main() -> None:
        task = asyncio.create_task(watch(str(path), current,
                                         lambda: current.load_in_background(str(path)),
                                         interval=INTERVAL))
        try:
            await asyncio.wait_for(body(current), 10)
        finally:
            task.cancel()
    asyncio.run(main())
    return current


def test_an_in_place_edit_is_loaded_once(tmp_path: Path) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))

    async def body(current: CurrentPinset) -> None:
        await asyncio.sleep(3 * INTERVAL)
        assert current.attempts == 1  # twin: nothing changed, nothing loaded
        path.write_text(pinset_text(PIN_B))
        await until(lambda: pins_of(current) == {PIN_B})
        await asyncio.sleep(4 * INTERVAL)
    assert run_watching(path, body).attempts == 2


def test_an_atomic_rename_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))

    async def body(current: CurrentPinset) -> None:
        new = tmp_path / "pins.yaml.new"
        new.write_text(pinset_text(PIN_B))
        os.replace(new, path)
        await until(lambda: pins_of(current) == {PIN_B})
    assert run_watching(path, body).attempts == 2


def test_a_write_in_two_steps_is_never_loaded_half_written(tmp_path: Path) -> None:
    """The first half alone is a valid pinset with one rule fewer (its host unpinned): the
    second half lands within one interval, so no poll can see the first half stay put."""
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))
    whole = pinset_text(PIN_A) + "  - host: second.example\n    pins: ['" + PIN_B + "']\n"
    half = len(pinset_text(PIN_A)) + 2

    async def body(current: CurrentPinset) -> None:
        with path.open("r+") as f:
            f.truncate(0)
            f.write(whole[:half])
            f.flush()
            await asyncio.sleep(INTERVAL / 2)
            f.write(whole[half:])
        await until(lambda: current.attempts == 2)
        await asyncio.sleep(4 * INTERVAL)
    current = run_watching(path, body)
    assert current.attempts == 2  # one load, of the whole file
    assert current.pinset is not None and len(current.pinset.rules) == 2


def test_a_sighup_load_of_the_change_is_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))

    async def body(current: CurrentPinset) -> None:
        path.write_text(pinset_text(PIN_B))
        await current.load_in_background(str(path))  # as SIGHUP does, before the poll acts
        await asyncio.sleep(5 * INTERVAL)
    assert run_watching(path, body).attempts == 2


def test_a_gone_file_keeps_the_pinset_until_it_is_back(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))

    async def body(current: CurrentPinset) -> None:
        path.unlink()
        await asyncio.sleep(5 * INTERVAL)
        assert current.attempts == 1 and pins_of(current) == {PIN_A}
        path.write_text(pinset_text(PIN_B))
        await until(lambda: pins_of(current) == {PIN_B})
    with caplog.at_level(logging.INFO):
        assert run_watching(path, body).attempts == 2
    assert caplog.text.count("is gone") == 1
    assert caplog.text.count("is there again") == 1


def test_a_bad_file_is_tried_once_then_a_good_one_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))

    async def body(current: CurrentPinset) -> None:
        path.write_text("version: 1\nhosts: [oops\n")
        await until(lambda: current.attempts == 2)
        await asyncio.sleep(4 * INTERVAL)
        assert current.attempts == 2 and pins_of(current) == {PIN_A}  # not retried, kept
        path.write_text(pinset_text(PIN_B))
        await until(lambda: pins_of(current) == {PIN_B})
    assert run_watching(path, body).attempts == 3


def test_a_file_pin_change_is_loaded(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"

    def write_key() -> None:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        pem.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    write_key()
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text("file:key.pem", PIN_A))

    async def body(current: CurrentPinset) -> None:
        assert current.pinset is not None and current.pinset.files == (str(pem),)
        before = pins_of(current)
        await asyncio.sleep(INTERVAL)  # a same-size rewrite within one clock tick keeps the mtime
        write_key()
        await until(lambda: pins_of(current) != before)
        assert PIN_A in pins_of(current)
    assert run_watching(path, body).attempts == 2


def test_a_file_written_to_while_read_is_read_again_not_put_in_force(tmp_path: Path) -> None:
    """The first read sees a valid pinset with one rule fewer; the file grows meanwhile. What
    was read may be torn, so it is read again, and only the whole file is put in force."""
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))
    whole = pinset_text(PIN_A) + "  - host: second.example\n    pins: ['" + PIN_B + "']\n"
    reads: list[int] = []

    def load_while_written(name: str) -> Pinset:
        pinset = load_pinset(name)
        reads.append(len(pinset.rules))
        if len(reads) == 2:  # the reload's first read: the rest of the file lands meanwhile
            path.write_text(whole)
        return pinset

    installed: list[int] = []
    current = CurrentPinset(load_while_written,
                            on_install=lambda pinset: installed.append(len(pinset.rules)))
    current.load(str(path))
    path.write_text(pinset_text(PIN_B))
    asyncio.run(current.load_in_background(str(path)))
    assert reads == [1, 1, 2]
    assert installed == [1, 2]  # never the read the write overtook


def test_a_watch_that_fails_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pins.yaml"
    path.write_text(pinset_text(PIN_A))
    current = CurrentPinset()
    current.load(str(path))

    async def broken_reload() -> None:
        raise RuntimeError("no reload today")

    async def main() -> None:
        task = start_watching(str(path), current, broken_reload)
        path.unlink()
        path.write_text(pinset_text(PIN_B))  # a new inode: a change, settled after one poll
        await asyncio.wait_for(asyncio.wait([task]), 10)
        await asyncio.sleep(0)  # the done callback runs next
    asyncio.run(main())
    assert "stopped watching the pinset files: RuntimeError('no reload today')" in caplog.text
