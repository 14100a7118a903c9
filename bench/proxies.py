"""The proxies compared: plain mitmdump, a bare mitmproxy Master, and pinproxy with or without
extra flags.

Both run exactly as a user starts them, from the venv that runs the benchmark, with the same
listen address, CA directory, upstream trust store and connection strategy, so the only
difference is what pinproxy adds (and leaves out).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import _proc

__all__ = ["BARE", "PLAIN", "ProxyFailed", "ProxySetup", "RunningProxy", "Variant", "start",
           "variant"]

PLAIN = "plain"
BARE = "bare"
_WORKERS = re.compile(r"pinproxy-w(\d+)")
_LISTENING = "pinproxy listening on"


@dataclass(frozen=True, slots=True)
class Variant:
    """A proxy to measure: pinproxy with flags, or (`pinproxy_args is None`) plain mitmdump or
    the bare Master."""

    name: str
    pinproxy_args: tuple[str, ...] | None

    @property
    def ready_lines(self) -> int:
        """How many `pinproxy listening on` lines mean ready: one per worker process."""
        if self.pinproxy_args is None:
            return 0
        args = list(self.pinproxy_args)
        flags = [i for i, arg in enumerate(args[:-1]) if arg == "--workers"]
        value = args[flags[-1] + 1] if flags else "1"
        return int(value) if value.isdigit() else 1


def variant(name: str, pinproxy_args: Sequence[str] = ()) -> Variant:
    """`plain`, `bare`, `pinproxy`, or `pinproxy-wN` (pinproxy with `--workers N`)."""
    if name in (PLAIN, BARE):
        return Variant(name, None)
    if name == "pinproxy":
        return Variant(name, tuple(pinproxy_args))
    if match := _WORKERS.fullmatch(name):
        return Variant(name, (*pinproxy_args, "--workers", match.group(1)))
    raise ValueError(f"unknown proxy variant {name!r}: use plain, bare, pinproxy or pinproxy-wN")


@dataclass(frozen=True, slots=True)
class ProxySetup:
    """What every proxy gets. Each kind keeps the CA it makes by default (mitmproxy RSA-2048,
    pinproxy ECDSA P-256: the key signs every client handshake), made before any timed start;
    the bare Master takes pinproxy's, so that the two differ only in their addons."""

    confdir: Path  # holds one CA directory per kind of proxy
    upstream_ca: Path
    logs: Path

    def confdir_for(self, proxy: Variant) -> Path:
        return self.confdir / ("mitmdump" if proxy.name == PLAIN else "pinproxy")

    def proxy_ca(self, proxy: Variant) -> Path:
        return self.confdir_for(proxy) / "mitmproxy-ca-cert.pem"


class ProxyFailed(RuntimeError):
    """The proxy exited or never accepted connections; the message is its last output line."""


@dataclass(frozen=True, slots=True)
class RunningProxy:
    variant: Variant
    process: subprocess.Popen[bytes]
    port: int
    startup: float  # seconds from process start to the port accepting connections
    log: Path
    ca: Path  # the proxy's CA certificate, which clients must trust

    def rss_kib(self) -> int:
        """Resident memory of the proxy and all its processes (workers), in KiB."""
        return _proc.tree_rss_kib(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time the proxy and all its processes have used so far."""
        return _proc.tree_cpu_seconds(self.process.pid)

    def last_line(self) -> str:
        return _proc.last_line(self.log)

    def stop(self) -> None:
        _proc.stop(self.process)


def _command(proxy: Variant, setup: ProxySetup, port: int, pinset: Path) -> list[str]:
    if proxy.name == BARE:
        return [sys.executable, str(Path(__file__).with_name("bare.py")), _proc.LOOPBACK,
                str(port), str(setup.confdir_for(proxy)), str(setup.upstream_ca)]
    if proxy.pinproxy_args is None:
        mitmdump = Path(sys.executable).parent / "mitmdump"
        return [str(mitmdump), "-q", "--listen-host", _proc.LOOPBACK, "--listen-port", str(port),
                "--set", f"confdir={setup.confdir_for(proxy)}",
                "--set", f"ssl_verify_upstream_trusted_ca={setup.upstream_ca}",
                "--set", "connection_strategy=eager"]
    return [sys.executable, "-m", "pinproxy", "run", "--listen-host", _proc.LOOPBACK,
            "--listen-port", str(port), "--confdir", str(setup.confdir_for(proxy)),
            "--upstream-ca", str(setup.upstream_ca), "--pinset", str(pinset),
            "--admin-listen", f"{_proc.LOOPBACK}:0", *proxy.pinproxy_args]


def start(proxy: Variant, setup: ProxySetup, pinset: Path, timeout: float = 180.0,
          ) -> RunningProxy:
    """Start a proxy and time it until it is ready.

    Ready means the port accepts a connection (`mitmdump -q` prints nothing, so polling the
    port is the one test that works for both) and, for pinproxy, every worker has printed
    `pinproxy listening on`: with `--workers` the first worker to listen already accepts.
    """
    port = _proc.free_port()
    log = setup.logs / f"{proxy.name}-{port}.log"

    def ready() -> bool:
        return (proxy.ready_lines == 0 or log.read_text(errors="replace").count(_LISTENING)
                >= proxy.ready_lines) and _proc.accepting(port)

    started = time.perf_counter()
    # unbuffered, so pinproxy's `listening` line reaches the log file at once
    try:
        process = _proc.spawn(_command(proxy, setup, port, pinset), log,
                              {"PYTHONUNBUFFERED": "1"})
    except OSError as e:  # e.g. no mitmdump next to this Python
        raise ProxyFailed(f"{proxy.name}: cannot start: {e}") from None
    try:
        ready_in_time = _proc.wait_until(process, ready, timeout)
    except BaseException:  # Ctrl-C while waiting: do not leave the proxy behind
        _proc.stop(process)
        raise
    startup = time.perf_counter() - started
    if not ready_in_time:
        exited = process.poll() is not None
        _proc.stop(process)
        reason = _proc.last_line(log) if exited else f"not listening after {timeout:.0f} s"
        raise ProxyFailed(f"{proxy.name} (exit {process.returncode}): {reason}")
    return RunningProxy(proxy, process, port, startup, log, setup.proxy_ca(proxy))
