"""`pinproxy run --workers N`: N proxy processes sharing one port, one CA and one pinset.

mitmproxy is one asyncio process on one core. Each worker is a complete `pinproxy run`
listening with SO_REUSEPORT, so the kernel spreads new connections across them; a connection
stays with the worker that accepted it, so every pin check and refusal is that worker's own.
The supervisor here creates the CA before any worker starts (else each would make its own),
forwards SIGHUP (reload) and SIGTERM/SIGINT (stop) to every worker, and stops them all if one
dies: a partial set would keep serving with fewer cores and nobody watching.
Violation reports need no coordination: each worker appends whole lines to the same
append-only file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from pinproxy.errors import PinproxyError

__all__ = ["enable_reuse_port", "reserve_port", "supervise", "validate_pinset"]


def validate_pinset(path: str) -> int:
    """Load the pinset in a forked child and return its exit code: 0, or 2 after it printed
    every problem. The parent never holds the parsed pinset; each worker loads its own."""
    from pinproxy.errors import PinsetError
    from pinproxy.loader import load_pinset

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()  # single-threaded here: no event loop, no workers yet
    if pid == 0:
        code = 70  # whatever goes wrong below, the child never says "good"
        try:
            load_pinset(path)
            code = 0
        except PinsetError as e:
            code = 2
            print(e, file=sys.stderr)
        except BaseException as e:  # noqa: BLE001 - a child must never return into the caller
            print(f"pinproxy: could not check the pinset {path}: {e!r}; not starting",
                  file=sys.stderr)
            code = 70
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) host:port with SO_REUSEPORT, choosing a port for 0.

    Held by the supervisor, it keeps the port for the workers and makes a port already in use
    fail here with one clear message. A socket that never listens gets no connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PinproxyError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _start(argv: Sequence[str], config: str) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(list(argv), stdin=subprocess.PIPE)  # noqa: S603
    assert worker.stdin is not None
    with worker.stdin:  # a pipe buffer holds a configuration: the write does not wait
        worker.stdin.write(config.encode())
    return worker


def enable_reuse_port() -> None:
    """Make mitmproxy's regular-mode listener bind with SO_REUSEPORT (worker processes only).

    It replaces a private mitmproxy method, so it lives with the others (and their check) in
    `_mitmproxy_private`; imported here, when called, to keep mitmproxy out of the supervisor.
    """
    from pinproxy.proxy import _mitmproxy_private

    _mitmproxy_private.enable_reuse_port()


def supervise(worker_argv: Sequence[Sequence[str]], config: str) -> int:
    """Start one process per argv, each reading `config` (the serialized run configuration)
    from its standard input; relay signals, and stop everything when one exits."""
    workers = [_start(argv, config) for argv in worker_argv]

    def relay(signum: int, _frame: FrameType | None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, relay)
    try:
        while all(worker.poll() is None for worker in workers):
            time.sleep(0.2)
    finally:
        stopping = [w for w in workers if w.poll() is None]
        for worker in stopping:
            worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for worker in stopping:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    codes = [worker.returncode for worker in workers]
    failed = [code for code in codes if code not in (0, -signal.SIGTERM)]
    if failed:
        print(f"pinproxy: a worker exited with status {failed[0]}; stopped all workers",
              file=sys.stderr)
        return 1
    return 0
