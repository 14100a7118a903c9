"""Trust on first use: the learn file, pinproxy's `known_hosts`.

One line per learned host: `HOST LEARNED_AT PIN...` (the SPKI pins of the leaf and its issuer,
as the first verified chain presented them), `#` comments and blank lines allowed. The file is
the authority: a line that does not parse is an error naming `path:line`, never skipped (an
empty or partial read would learn an attacker's key again). Writes replace the file atomically
under an exclusive `flock` on `PATH.lock`, re-reading it first and adding only what this
process learned since (`merge`): several processes (`--workers`, `pinproxy learned forget`)
can share one file, and the first entry written for a host wins.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pinproxy.errors import HostnameError, PinproxyError, PinsetError, Problem, quote
from pinproxy.files import open_regular, replace_atomically
from pinproxy.hostnames import normalize_host
from pinproxy.pins import Pin, PinKind, parse_pin
from pinproxy.pinset import Location, Pinset, Unpinned

__all__ = ["MAX_LEARNED_HOSTS", "NOTHING_LEARNED", "Learned", "LearnedHost", "forget",
           "learning_location", "locked", "merge", "merge_signed", "read_learned",
           "read_learned_signed", "render_learned", "require_learn_file", "signature"]

MAX_LEARNED_HOSTS = 10_000  # beyond it a new host is refused, not learned (docs/design.md)
_LOCK_TIMEOUT = 5.0  # seconds a writer waits for another one to finish
_HEADER = ("# pinproxy learn file: HOST LEARNED_AT SPKI-PINS (leaf, then issuer).\n"
           "# Manage it with 'pinproxy learned list|forget|promote'.\n")


@dataclass(frozen=True, slots=True)
class LearnedHost:
    """The pins learned for one exact host name, and when."""

    host: str
    pins: tuple[Pin, ...]
    learned_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Learned:
    """What the policy sees of the learned hosts: a read-only view, and whether a new host may
    still be learned (`full`: the cap is reached)."""

    hosts: Mapping[str, LearnedHost] = field(default_factory=dict)
    full: bool = False

    def pins(self, host: str) -> tuple[Pin, ...] | None:
        entry = self.hosts.get(host)
        return entry.pins if entry is not None else None


NOTHING_LEARNED = Learned()


def learning_location(pinset: Pinset) -> Location | None:
    """Where the pinset asks to learn (a `mode: learn` rule, or `unpinned: learn`): a proxy
    must then have a learn file. None when it never learns."""
    rule = next((rule for rule in pinset.rules if rule.learn), None)
    if rule is not None:
        return rule.location
    return Location(pinset.source) if pinset.unpinned is Unpinned.LEARN else None


def require_learn_file(pinset: Pinset, learn_file: str | None) -> Pinset:
    """The pinset, unless it learns and no `--learn-file` was given (`PinsetError`): a proxy
    that cannot remember what it learned would trust every first use again after a restart."""
    if learn_file is None and (where := learning_location(pinset)) is not None:
        raise PinsetError([Problem(where, "this pinset learns pins on first use ('mode: learn' "
                                          "or 'unpinned: learn'): give --learn-file PATH")])
    return pinset


Signature = tuple[int, int, int] | None  # (inode, mtime ns, size); None: no file


def signature(path: str) -> Signature:
    """What tells that the file changed since it was read (a writer replaces it: new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_learned(path: str) -> dict[str, LearnedHost]:
    """The learn file's hosts; a missing file is empty (nothing learned yet). Anything else
    unreadable or malformed raises `PinsetError` naming `path:line`."""
    return read_learned_signed(path)[0]


def read_learned_signed(path: str) -> tuple[dict[str, LearnedHost], Signature]:
    """`read_learned`, and the signature of the very file that was read."""
    try:
        with open_regular(path) as stream:
            st = os.fstat(stream.fileno())
            data = stream.read()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        raise PinsetError([Problem(Location(path), f"cannot read learn file: "
                                                   f"{e.strerror or e}")]) from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise PinsetError([Problem(Location(path), "learn file is not UTF-8 text")]) from None
    hosts: dict[str, LearnedHost] = {}
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            entry = _entry(words)
        except (PinproxyError, ValueError) as e:
            problems.append(Problem(Location(path, number), str(e)))
            continue
        if entry.host in hosts:
            problems.append(Problem(Location(path, number),
                                    f"host {quote(entry.host)} is learned twice"))
            continue
        hosts[entry.host] = entry
    if problems:
        raise PinsetError(problems)
    return hosts, (st.st_ino, st.st_mtime_ns, st.st_size)


def _entry(words: list[str]) -> LearnedHost:
    if len(words) < 3:
        raise PinproxyError("expected 'HOST LEARNED_AT PIN...'")
    try:
        host = normalize_host(words[0])
    except HostnameError as e:
        raise PinproxyError(str(e)) from None
    try:
        when = dt.datetime.fromisoformat(words[1])
    except ValueError:
        raise PinproxyError(f"{quote(words[1])} is not a timestamp") from None
    if when.tzinfo is None:
        raise PinproxyError(f"{quote(words[1])} has no time zone")
    pins = tuple(dict.fromkeys(parse_pin(word) for word in words[2:]))
    if any(pin.kind is not PinKind.SPKI for pin in pins):
        raise PinproxyError("a learned pin is an SPKI pin ('sha256/...')")
    return LearnedHost(host, pins, when)


def render_learned(hosts: Mapping[str, LearnedHost]) -> bytes:
    """The learn file's text, hosts sorted (a stable file diffs well)."""
    lines = [_HEADER]
    for host in sorted(hosts):
        entry = hosts[host]
        when = entry.learned_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        lines.append(f"{host} {when.replace('+00:00', 'Z')} "
                     f"{' '.join(str(pin) for pin in entry.pins)}\n")
    return "".join(lines).encode()


@contextlib.contextmanager
def locked(path: str, timeout: float = _LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive lock of the learn file (`PATH.lock`), waiting at most `timeout`."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(errno.EWOULDBLOCK, f"{path}.lock is held by another "
                                                     "process") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def merge(path: str, new: Mapping[str, LearnedHost]) -> dict[str, LearnedHost]:
    """Add `new` hosts to the file (an entry already there wins) and return the whole file.
    Blocking: the proxy calls it in a thread."""
    return merge_signed(path, new)[0]


def merge_signed(path: str, new: Mapping[str, LearnedHost],
                 ) -> tuple[dict[str, LearnedHost], Signature]:
    """`merge`, and the signature of the file as this merge left it (taken under the lock)."""
    with locked(path):
        hosts, sig = read_learned_signed(path)
        added = {host: entry for host, entry in new.items() if host not in hosts}
        if added:
            hosts.update(added)
            replace_atomically(path, render_learned(hosts), 0o644)
            sig = signature(path)
        return hosts, sig


def forget(path: str, host: str) -> bool:
    """Remove one host from the file; False when it was not there."""
    with locked(path):
        hosts = read_learned(path)
        if hosts.pop(host, None) is None:
            return False
        replace_atomically(path, render_learned(hosts), 0o644)
        return True
