"""The pinset in force, and how a new one replaces it: one reference, swapped whole.

A reload builds a complete new `Pinset` and then swaps the one reference every check reads, so a
check sees the old pinset or the new one, never a mix; a file that fails to load changes nothing.
Loading runs on the caller's thread (start-up, an option change) or in a thread
(`load_in_background`, for SIGHUP) so that traffic keeps flowing, checked against the old
pinset, while a big pinset is parsed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from pinproxy.files import open_regular
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset

__all__ = ["CurrentPinset", "FileSignature", "file_sha256", "file_signature"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What tells a changed pinset file from the one loaded: a replaced file (new inode), an
    edited one (new mtime or size), or another path."""

    path: str
    inode: int
    mtime_ns: int
    size: int


def file_signature(path: str) -> FileSignature | None:
    """The file's signature now, or None when it cannot be read (then it is always reloaded)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FileSignature(os.path.abspath(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


def file_sha256(path: str) -> str | None:
    """The hex SHA-256 of the file's bytes, or None when it cannot be read (the load then fails
    with the loader's own error)."""
    try:
        with open_regular(path) as f:  # never a FIFO: that would block
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


class CurrentPinset:
    """Owns the pinset in force, the file it came from and that file's signature.

    `load` is what reads a file into a `Pinset` (the loader by default; `pinproxy run` passes a
    wrapper that tunes the process around a load). `on_install` is told of every pinset put in
    force, e.g. to forget what was said about the previous one; `on_failure` of every load that
    failed (e.g. to count it).
    """

    def __init__(self, load: Callable[[str], Pinset] = load_pinset,
                 on_install: Callable[[Pinset], None] | None = None,
                 on_failure: Callable[[Exception], None] | None = None) -> None:
        self._load = load
        self._on_install = on_install
        self._on_failure = on_failure
        self.pinset: Pinset | None = None
        self.path: str | None = None
        self.signature: FileSignature | None = None
        self.sha256: str | None = None  # of the file's bytes as read just before loading
        self.loaded_at: dt.datetime | None = None
        self.attempts = 0  # loads begun, good or bad: a file watcher tells them apart by this
        self.read_signature: FileSignature | None = None  # the file's, just before the last read
        self._loading = False  # a background load is running
        self._next: str | None = None  # the path asked for while it ran

    @property
    def kept_note(self) -> str:
        """What to add to a load error: whether an old pinset stays in force."""
        return "; the previous pinset stays in force" if self.pinset is not None else ""

    def load(self, path: str, force: bool = True) -> bool:
        """Load `path` now and put it in force; True if it was loaded.

        Without `force`, a file whose signature matches the pinset in force is not read again.
        A file that fails to load raises the loader's error and the old pinset stays.
        """
        signature = file_signature(path)
        if not force and signature is not None and signature == self.signature:
            return False
        self._begin(signature)
        digest = file_sha256(path)
        try:
            pinset = self._load(path)
        except Exception as e:
            self._failed(e)
            raise
        self._install(pinset, path, signature, digest)
        return True

    async def load_in_background(self, path: str) -> None:
        """Load `path` in a thread and put it in force; the event loop keeps running meanwhile.

        A file that fails to load is logged and changes nothing. Loads asked for while one runs
        are merged into one more, of the last path asked for; so is a file written to while it
        was read (what was read may be torn), instead of being put in force.
        """
        if self._loading:
            self._next = path
            return
        self._loading = True
        try:
            next_path: str | None = path
            while next_path is not None:
                self._next = None
                signature = file_signature(next_path)  # before reading: a later change reloads
                self._begin(signature)
                try:
                    digest = await asyncio.to_thread(file_sha256, next_path)
                    pinset = await asyncio.to_thread(self._load, next_path)
                except Exception as e:  # noqa: BLE001 - a failed reload keeps the old pinset
                    logger.error("pinproxy pinset reload failed: %s%s", e, self.kept_note)
                    self._failed(e)
                else:
                    if file_signature(next_path) != signature and self._next is None:
                        # Written to while read: what was read may be torn (a truncated
                        # pinset can be valid and weaker). Read it again; keep the old meanwhile.
                        logger.info("pinproxy: pinset %s changed while being read; reading it "
                                    "again", next_path)
                        self._next = next_path
                    else:
                        self._install(pinset, next_path, signature, digest)
                next_path = self._next
        finally:
            self._loading = False

    def install(self, pinset: Pinset, source: str, sha256: str | None) -> None:
        """Put an already validated pinset in force (a verified signed pinset, `--pinset-url`):
        the same swap, and the same `on_install`, as a file load."""
        self._install(pinset, source, None, sha256)

    def _begin(self, signature: FileSignature | None) -> None:
        self.attempts += 1
        self.read_signature = signature

    def _failed(self, error: Exception) -> None:
        if self._on_failure is not None:
            self._on_failure(error)

    def _install(self, pinset: Pinset, path: str, signature: FileSignature | None,
                 digest: str | None) -> None:
        if self.pinset is not None:  # the first load is announced by the proxy's start-up line
            logger.info("pinproxy reloaded pinset %s: %d host rules, %d pins, mode %s, "
                        "unpinned %s", path, len(pinset.rules), pinset.pin_count, pinset.mode,
                        pinset.unpinned)
        self.pinset = pinset
        self.path = path
        self.signature = signature
        self.sha256 = digest
        self.loaded_at = dt.datetime.now(dt.UTC)
        if self._on_install is not None:
            self._on_install(pinset)
