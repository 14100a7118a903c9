"""`pinproxy run --workers N`: N proxy processes sharing one port, one CA and one pinset.

mitmproxy is one asyncio process on one core. Each worker is a complete `pinproxy run`
listening with SO_REUSEPORT, so the kernel spreads new connections across them; a connection
stays with the worker that accepted it, so every pin check and refusal is that worker's own.
Violation reports need no coordination: each worker appends whole lines to the same
append-only file.

The supervisor here creates the CA before any worker starts (else each would make its own),
holds the reserved port (so a restarted worker binds the same one), and keeps the workers
alive: one that dies is started again after a backoff (0.5 s doubling to 30 s, back to 0.5 s
once a worker has stayed up a minute), logged and counted in
`pinproxy_worker_restarts_total`; the others serve meanwhile. A worker that fails again and
again (say its pinset went bad on disk) keeps being retried at the capped delay, each failure
logged: a later fix of the file brings it back without anyone restarting the service. Only at
start-up, when every worker has exited before any said it was ready, does the supervisor give
up, with the first worker's exit status: then nothing would ever serve.

It relays SIGHUP (reload) to every worker; a change of the pinset's files each worker sees for
itself (`pinproxy.watching`), as only a worker knows which `file:` pins its pinset read.
SIGTERM drains: the supervisor stops restarting,
turns not-ready, relays SIGTERM and waits up to the drain timeout plus a margin before killing
what is left; SIGINT (and a second SIGTERM) is relayed too, and the workers stop at once.

It alone serves the admin endpoint (workers never bind it): /readyz is ready once every worker
has reported ready (one line on a pipe, `--status-fd`) and while at least one is; /metrics is
prometheus-client's multiprocess mode over a private directory every worker writes to;
/pinset shows the file's path and SHA-256, since the supervisor never parses the pinset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from pinproxy.reloading import file_sha256
from pinproxy.watching import INTERVAL as WATCH_INTERVAL
from pinproxy.watching import Changes, Seen, snapshot

__all__ = ["enable_reuse_port", "metrics_directory", "reserve_port", "supervise",
           "validate_pinset"]

logger = logging.getLogger(__name__)


def validate_pinset(path: str, load: Callable[[str], object] | None = None) -> int:
    """Load the pinset in a forked child and return its exit code: 0, or 2 after it printed
    every problem. The parent never holds the parsed pinset; each worker loads its own.
    `load` checks more than the file (the learn file a learning pinset needs)."""
    from pinproxy.errors import PinsetError
    from pinproxy.loader import load_pinset

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()  # single-threaded here: no event loop, no workers yet
    if pid == 0:
        code = 70  # whatever goes wrong below, the child never says "good"
        try:
            (load or load_pinset)(path)
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


def enable_reuse_port() -> None:
    """Make mitmproxy's regular-mode listener bind with SO_REUSEPORT (worker processes only).

    It replaces a private mitmproxy method, so it lives with the others (and their check) in
    `_mitmproxy_private`; imported here, when called, to keep mitmproxy out of the supervisor.
    """
    from pinproxy.proxy import _mitmproxy_private

    _mitmproxy_private.enable_reuse_port()



_FIRST_DELAY = 0.5  # seconds before a dead worker's first restart
_MAX_DELAY = 30.0  # the backoff's cap
_STABLE = 60.0  # a worker up this long has its backoff reset
_STOP_MARGIN = 5.0  # seconds past the drain timeout before stragglers are killed
_TICK = 0.1  # the supervisor's longest sleep: every wait below is bounded by it


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh private directory for prometheus-client's multiprocess mode, named in
    `PROMETHEUS_MULTIPROC_DIR` for this process and every worker it starts; removed at exit.

    Must be entered before anything imports prometheus_client: the library picks its value
    store (per-process files or memory) at import time."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess directory")
    path = tempfile.mkdtemp(prefix="pinproxy-metrics-")  # mode 0700
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
        shutil.rmtree(path, ignore_errors=True)


@dataclass(slots=True)
class _Worker:
    """One worker slot: the process in it now (None while waiting to restart)."""

    label: str  # "i/N"
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    status: int | None = None  # read end of the worker's status pipe
    ready: bool = False
    started: float = 0.0
    delay: float = _FIRST_DELAY
    restart_at: float | None = None
    last_code: int | None = None  # exit status of the last process (negative: a signal)
    buffer: bytes = field(default=b"")


class Supervisor:
    """Runs the workers; also the `AdminSource` of the admin endpoint (thread-safe reads)."""

    def __init__(self, worker_argv: Sequence[Sequence[str]], config: str, *, pinset: str,
                 drain_timeout: float, metrics_dir: str) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self._config = config
        self._pinset_path = pinset
        self._drain_timeout = drain_timeout
        self._metrics_dir = metrics_dir
        self._workers = [_Worker(label=argv[-1], argv=argv) for argv in worker_argv]
        self._draining = False
        self._stopping: int | None = None  # the signal that stops the supervisor
        self._stop_now = False  # a second SIGTERM, or SIGINT: relay at once
        self._reload = False
        self._all_ready_once = False  # every worker has been ready: the service is up
        self._any_ready_once = False  # some worker has been ready: the configuration works
        self._pinset_info: Mapping[str, Any] | None = None
        # Each worker watches the pinset's files itself (only a worker knows its `file:` pins);
        # the supervisor watches the file only to keep /pinset's SHA-256 true.
        self._changes = None if RunConfig.from_json(config).no_watch else Changes()
        self._next_poll = 0.0
        self._restarts = Counter("pinproxy_worker_restarts_total",
                                 "Workers the supervisor restarted after they died",
                                 registry=CollectorRegistry())  # counted through the directory
        self._hash_pinset()
        if self._changes is not None:
            self._changes.rebase(snapshot([pinset]))

    # -- AdminSource -----------------------------------------------------------------------

    def not_ready(self) -> str | None:
        if self._draining:
            return "draining: shutting down"
        if not self._all_ready_once:
            return "the workers are starting"
        if not any(worker.ready for worker in self._workers):
            return "no worker is serving"
        return None

    def metrics(self) -> tuple[bytes, str]:
        from pinproxy.metrics import exposition  # merges the workers' files in this directory

        return exposition()

    def pinset(self) -> Mapping[str, Any] | None:
        return self._pinset_info

    def _hash_pinset(self) -> None:
        """What /pinset shows: each worker parses the file itself; the supervisor only names it
        and its SHA-256 as read at start-up and at each reload."""
        if not self._pinset_path:  # --pinset-url without a cache: nothing to show
            return
        digest = file_sha256(self._pinset_path)
        if digest is None:
            logger.warning("pinproxy could not read the pinset %s", self._pinset_path)
            return
        self._pinset_info = {"source": self._pinset_path, "sha256": digest,
                             "read_at": datetime.now(UTC).isoformat(),
                             "workers": len(self._workers),
                             "note": "each worker parses this file; rules and pins are "
                                     "theirs and not shown by the supervisor"}

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for worker in self._workers:
            self._start(worker)
        try:
            while self._stopping is None:
                self._tick()
                if (not self._any_ready_once and all(
                        w.process is None and w.restart_at is not None for w in self._workers)):
                    return self._give_up()
            return self._stop()
        finally:
            for worker in self._workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
                self._close_status(worker)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
            return
        self._draining = True  # at once: /readyz answers 503 from now on
        if self._stopping is None:
            self._stopping = signum
            self._stop_now = signum == signal.SIGINT  # Ctrl-C stops at once
        else:  # a second SIGTERM, or SIGINT while draining: stop now
            self._stop_now = True

    def _start(self, worker: _Worker) -> None:
        read, write = os.pipe()
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [*worker.argv, "--status-fd", str(write)], stdin=subprocess.PIPE,
                pass_fds=(write,))
        finally:
            os.close(write)
        assert process.stdin is not None
        with process.stdin:  # a pipe buffer holds a configuration: the write does not wait
            process.stdin.write(self._config.encode())
        os.set_blocking(read, False)
        worker.process, worker.status, worker.ready = process, read, False
        worker.started, worker.restart_at, worker.buffer = time.monotonic(), None, b""
        logger.warning("pinproxy worker %s started (pid %d)", worker.label, process.pid)

    def _tick(self) -> None:
        if self._reload:
            self._reload = False
            self._hash_pinset()
            self._send_all(signal.SIGHUP)
        if self._changes is not None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + WATCH_INTERVAL
            files = snapshot([self._pinset_path])
            if self._changes.observe(files) is Seen.CHANGED:
                self._changes.rebase(files)
                self._hash_pinset()
        fds = [w.status for w in self._workers if w.status is not None]
        try:
            readable, _, _ = select.select(fds, [], [], _TICK) if fds else ([], [], [])
        except InterruptedError:  # a signal: look at the flags first
            readable = []
        if not fds:
            time.sleep(_TICK)
        for worker in self._workers:
            if worker.status in readable:
                self._read_status(worker)
        now = time.monotonic()
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is not None:
                self._died(worker, now)
            elif worker.restart_at is not None and now >= worker.restart_at \
                    and self._stopping is None:
                self._start(worker)
        if all(w.ready for w in self._workers):
            self._all_ready_once = True

    def _read_status(self, worker: _Worker) -> None:
        assert worker.status is not None
        try:
            data = os.read(worker.status, 256)
        except BlockingIOError:
            return
        if not data:  # the worker closed it (it exited): its exit is seen by poll()
            self._close_status(worker)
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, _, worker.buffer = worker.buffer.partition(b"\n")
            if line == b"ready":
                worker.ready = self._any_ready_once = True

    def _died(self, worker: _Worker, now: float) -> None:
        from prometheus_client import multiprocess

        assert worker.process is not None
        pid, code = worker.process.pid, worker.process.returncode
        multiprocess.mark_process_dead(pid, self._metrics_dir)
        self._close_status(worker)
        worker.process, worker.ready, worker.last_code = None, False, code
        if self._stopping is not None:
            return
        if now - worker.started >= _STABLE:
            worker.delay = _FIRST_DELAY
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 \
            else f"exited with status {code}"
        logger.warning("pinproxy worker %s (pid %d) %s; restarting it in %.1fs",
                       worker.label, pid, how, worker.delay)
        worker.restart_at = now + worker.delay
        worker.delay = min(worker.delay * 2, _MAX_DELAY)
        self._restarts.inc()

    def _close_status(self, worker: _Worker) -> None:
        if worker.status is not None:
            os.close(worker.status)
            worker.status = None

    def _send_all(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _give_up(self) -> int:
        codes = [w.last_code if w.last_code is not None else 1 for w in self._workers]
        code = next((c for c in codes if c > 0), 1)
        logger.error("pinproxy: every worker exited at start-up (first status %s); not starting",
                     codes[0])
        return code

    def _stop(self) -> int:
        """Relay the stop, wait for the workers (bounded), kill what is left."""
        assert self._stopping is not None
        self._send_all(self._stopping)
        relayed_now = self._stop_now
        wait = self._drain_timeout + _STOP_MARGIN if not self._stop_now else _STOP_MARGIN
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(
                w.process is not None and w.process.poll() is None for w in self._workers):
            if self._stop_now and not relayed_now:
                self._send_all(signal.SIGTERM)  # workers draining: the second one stops them
                relayed_now = True
                deadline = min(deadline, time.monotonic() + _STOP_MARGIN)
            time.sleep(_TICK)
        killed = 0
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
                killed += 1
        if killed:
            logger.error("pinproxy: killed %d worker(s) still running after %.0fs", killed, wait)
            return 1
        return 0


def supervise(worker_argv: Sequence[Sequence[str]], config: str, *, pinset: str,
              drain_timeout: float, admin: tuple[str, int] | None, metrics_dir: str) -> int:
    """Start one process per argv, each reading `config` (the serialized run configuration)
    from its standard input; keep them running until a signal stops the supervisor."""
    from pinproxy.admin import AdminServer

    supervisor = Supervisor(worker_argv, config, pinset=pinset, drain_timeout=drain_timeout,
                            metrics_dir=metrics_dir)
    server = AdminServer(*admin, supervisor) if admin is not None else None
    if server is not None:
        host, port = server.address
        logger.warning("pinproxy admin listening on http://%s:%d (supervisor of %d workers)",
                       host, port, len(worker_argv))
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.close()
