"""Child processes of a benchmark: free loopback ports, readiness, memory, and stopping.

Every child runs in a session of its own, so a Ctrl-C on the terminal reaches only the
benchmark, which then stops its children in order instead of leaving them half-dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["LOOPBACK", "accepting", "free_port", "last_line", "machine_cpu_ticks", "spawn", "stop",
           "tree_cpu_seconds", "tree_rss_kib", "wait_until"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def spawn(command: Sequence[str], log: Path,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child with stdout and stderr in `log`, in its own session (see module doc).

    It runs in the log's directory: `python -m` puts the working directory first on the
    module path, and the code measured must not depend on where the benchmark was started.
    """
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own command lines, no shell
            list(command), cwd=log.parent, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})


def accepting(port: int) -> bool:
    """True when a TCP connection to the loopback port succeeds."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
        return True
    return False


def wait_until(process: subprocess.Popen[bytes], ready: Callable[[], bool],
               timeout: float) -> bool:
    """Poll `ready` until it holds; False if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.005)
    return False


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the child's own process group (its workers) if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group is the child's: see `spawn`
    process.wait()


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process plus all its descendants (a proxy with worker processes), in KiB."""
    return sum(_rss_kib(member) for member in _tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process and all its live descendants."""
    ticks = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(member)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores, since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # user … steal; guest time is already counted in user
    return total - idle, total


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(int(_stat_fields(int(stat.parent.name))[1]), []).append(
                int(stat.parent.name))
    members, todo = [], [pid]
    while todo:
        members.append(current := todo.pop())
        todo.extend(children.get(current, ()))
    return members


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses):
    index 0 is the state, 1 the parent pid."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def last_line(log: Path) -> str:
    """The last non-empty line of a child's log: its error message when it failed to start."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
