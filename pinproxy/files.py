"""One way to read and write a file: only regular files are read, writes are complete, modes are
set at creation, atomic where a file is replaced and exclusive where one must not be clobbered.

Reading opens without blocking and refuses anything but a regular file (or a symlink to one): a
FIFO named as a pinset would otherwise hang the proxy at start-up, or at a reload, for ever.

A private key must never exist, even for a moment, with a wider mode than its final one, so the
mode is given to `os.open` with O_CREAT|O_EXCL rather than fixed by a later `chmod`. A failed write
never leaves a partial file behind: the temporary (or freshly created) file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
from pathlib import Path

__all__ = ["PartialWriteError", "create_exclusively", "open_regular", "read_regular",
           "replace_atomically", "write_all"]


def open_regular(path: str | Path) -> io.BufferedReader:
    """Open a regular file for reading; OSError for anything else (FIFO, device, directory).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; for a regular
    file the flag changes nothing, so the returned stream reads normally.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise OSError(errno.EINVAL, kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path) -> bytes:
    """The bytes of a regular file (see `open_regular`)."""
    with open_regular(path) as stream:
        return stream.read()


class PartialWriteError(OSError):
    """A write that failed after some of the data was written: `written` bytes of it are in
    the file (a reader of line records sees a torn line there)."""

    def __init__(self, error: OSError, written: int) -> None:
        super().__init__(error.errno, error.strerror)
        self.written = written


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`, finishing after short writes and retrying on EINTR.

    Raises OSError on failure (e.g. ENOSPC), a `PartialWriteError` when part of `data` was
    already written. A write that makes no progress (`os.write` returning 0 for data that is
    not empty) is reported as ENOSPC rather than retried: it would loop for ever.
    """
    view = memoryview(data)
    written = 0
    while view:
        try:
            count = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError as e:
            if written == 0:
                raise
            raise PartialWriteError(e, written) from e
        if count <= 0:
            error = OSError(errno.ENOSPC, "no progress writing (" + os.strerror(errno.ENOSPC) + ")")
            raise error if written == 0 else PartialWriteError(error, written)
        view = view[count:]
        written += count


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusively(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Create `path` with `mode` and write `data`; refuse (FileExistsError) if it exists.

    On a failed write the partial file is removed; an existing file is never touched.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def replace_atomically(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Replace `path` with `data` so that readers see either the old or the new file, whole.

    The temporary file lives in the same directory (so `os.replace` is a rename, not a copy) and is
    created with the final mode; it is removed on any failure.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
