"""Reload the pinset when its file, or a file it names, changes: a poll of `os.stat`.

Why a poll and not inotify: `os.stat` follows symlinks, so a Kubernetes ConfigMap update (a new
`..data` symlink renamed over the old one) shows as a new inode like any atomic rename; it works
on every filesystem (overlayfs, NFS, where inotify misses other hosts' writes) with no new
dependency; and a few stats a second cost nothing next to the traffic.

Never load a half-written file: an in-place writer can be seen mid-way, and a truncated pinset
may still be valid with fewer rules (weaker, or a host unpinned). So a change is loaded only once
every watched file has kept the same signature for one whole poll interval; a writer that pauses
longer than that can still be seen mid-way, which is why atomic rename is the way to write.
A file that is gone changes nothing (the last good pinset stays) until it is back.

`Changes` is the pure part (snapshots in, decisions out); `watch` drives it on the event loop,
with the stats in a thread so that a hung network filesystem never holds traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import StrEnum

from pinproxy.reloading import CurrentPinset, FileSignature, file_signature

__all__ = ["INTERVAL", "Changes", "Seen", "snapshot", "start_watching", "watch",
           "watched_paths"]

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between polls: a change is loaded 1 to 2 intervals after it settles

type Snapshot = Mapping[str, FileSignature | None]  # path -> signature, None: cannot be read


class Seen(StrEnum):
    """What one poll saw."""

    SAME = "same"  # nothing changed since the files were last read
    SETTLING = "settling"  # a change, not yet stable for a whole interval
    MISSING = "missing"  # a watched file is gone: wait for it
    CHANGED = "changed"  # a change, stable for a whole interval: reload now


class Changes:
    """Tells, poll after poll, when the watched files have changed and settled.

    `baseline` is what the pinset in force was read from; `rebase` sets it after a load (by the
    watch or by SIGHUP), so a change that a load already read is not loaded twice, and a change
    made while a load ran still differs from it and is loaded next (no lost update).
    """

    def __init__(self) -> None:
        self.baseline: dict[str, FileSignature | None] = {}
        self._previous: Snapshot | None = None
        self._missing: frozenset[str] = frozenset()

    def rebase(self, baseline: Snapshot) -> None:
        self.baseline = dict(baseline)
        self._previous = None

    def observe(self, now: Snapshot) -> Seen:
        previous, self._previous = self._previous, now
        missing = frozenset(path for path, signature in now.items() if signature is None)
        newly_missing, back, self._missing = missing - self._missing, self._missing - missing, \
            missing
        if newly_missing:
            logger.warning("pinproxy: pinset file %s is gone; the pinset in force stays until "
                           "it is back", ", ".join(sorted(newly_missing)))
        if back:
            logger.info("pinproxy: pinset file %s is there again", ", ".join(sorted(back)))
        if missing:
            return Seen.MISSING
        if all(self.baseline.get(path, signature) == signature
               for path, signature in now.items()):
            return Seen.SAME
        if previous != now:  # changed since the last poll: perhaps still being written
            return Seen.SETTLING
        return Seen.CHANGED


def watched_paths(path: str, pinsets: CurrentPinset) -> list[str]:
    """The pinset file, then every file its pinset in force read for `file:` pins."""
    pinset = pinsets.pinset
    return list(dict.fromkeys([path, *(pinset.files if pinset is not None else ())]))


def snapshot(paths: Iterable[str]) -> dict[str, FileSignature | None]:
    return {path: file_signature(path) for path in paths}


async def watch(path: str, pinsets: CurrentPinset, reload: Callable[[], Awaitable[None]],
                interval: float = INTERVAL) -> None:
    """Poll until cancelled; call `reload` (the SIGHUP reload) for each settled change."""
    changes = Changes()
    attempts = -1  # the loads `changes.baseline` knows of
    while True:
        paths = watched_paths(path, pinsets)
        now = await asyncio.to_thread(snapshot, paths)
        if pinsets.attempts != attempts:  # a load ran (SIGHUP, or ours): what did it read?
            attempts = pinsets.attempts
            # The pinset file as signed just before it was read; a file: pin as known before
            # the load, else as it is now.
            changes.rebase({p: (pinsets.read_signature if p == path
                                else changes.baseline.get(p, now[p])) for p in paths})
        seen = changes.observe(now)
        if seen is Seen.CHANGED:
            logger.info("pinproxy: pinset file changed; reloading %s", path)
            changes.rebase(now)  # the next poll rebases again, on what the load read
            await reload()
        await asyncio.sleep(interval)


def start_watching(path: str, pinsets: CurrentPinset,
                   reload: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """`watch` as a task on the running loop; if it ever stops on an error, that is logged (the
    pinset in force stays, and SIGHUP still reloads)."""
    task = asyncio.get_running_loop().create_task(watch(path, pinsets, reload))
    task.add_done_callback(_stopped)
    return task


def _stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("pinproxy stopped watching the pinset files: %r; SIGHUP still reloads",
                     error)
