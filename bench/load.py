"""The client side: real curl, driven as parallel transfers through a proxy to the upstream.

One curl process per measurement runs up to `requests` transfers, `parallel` at a time, and is
stopped after `duration` seconds if it has not finished. curl writes one line per finished
transfer to stderr (unbuffered), and each line is timestamped here as it arrives, so the rate
is taken over the steady part of the run: from the moment the first `parallel` transfers have
finished to the last finished transfer. Neither curl's start-up nor transfers cut off by the
time bound count.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._proc import LOOPBACK
from bench.pki import BENCH_HOST

__all__ = ["MARK", "WORKLOADS", "LoadResult", "Target", "Workload", "read_transfers", "run_load",
           "workload"]

MARK = "@bench "
_MAX_TIME = 30  # seconds per transfer: a hung transfer is an error, never a hung benchmark


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    unit: str
    curl_args: tuple[str, ...]
    http_version: str  # what curl must report for every transfer
    tunnel_per_request: bool  # every transfer must open a new CONNECT tunnel


WORKLOADS = (
    # curl sends Connection: close inside the tunnel and the proxy then closes the tunnel, so
    # every transfer costs a CONNECT, two TLS handshakes (client and upstream) and a pin check.
    Workload("new-tunnel", "tunnels/s", ("--http1.1", "-H", "Connection: close"), "1.1", True),
    # up to `parallel` tunnels, each carrying many requests
    Workload("keep-alive", "requests/s", ("--http1.1",), "1.1", False),
    # curl multiplexes every transfer onto one tunnel (so h2 cannot measure new tunnels)
    Workload("h2", "requests/s", ("--http2",), "2", False),
)


def workload(name: str) -> Workload:
    for item in WORKLOADS:
        if item.name == name:
            return item
    raise ValueError(f"unknown workload {name!r}: use {', '.join(w.name for w in WORKLOADS)}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where curl goes: through the proxy on `proxy_port` to nginx on `upstream_port`."""

    curl: str
    proxy_port: int
    proxy_ca: Path  # the proxy's CA certificate, which curl must trust
    upstream_port: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One measurement. `problems` is empty for a valid one."""

    workload: str
    rate: float  # transfers per second, steady state
    transfers: int  # finished transfers, answered or not
    ok: int  # answered 200 with the expected HTTP version
    tunnels: int  # new connections curl opened to the proxy (sum of %{num_connects})
    elapsed: float
    truncated: bool  # stopped by the time bound before all transfers were done
    problems: tuple[str, ...]
    longest_gap: float = 0.0  # seconds between two finished transfers, at most: a stall shows
    proxy_cpu: float | None = None  # CPU seconds the proxy used meanwhile (set by the caller)
    machine_busy: float | None = None  # share of all cores busy meanwhile (set by the caller)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def cpu_ms_per_transfer(self) -> float | None:
        """The proxy's cost per transfer, which other load on the machine disturbs far less
        than the rate: a shared 2-core machine slows the proxy down, it does not make it work
        harder."""
        if self.proxy_cpu is None or not self.transfers:
            return None
        return self.proxy_cpu * 1000 / self.transfers


def run_load(target: Target, load: Workload, requests: int, parallel: int,
             duration: float) -> LoadResult:
    command = [
        target.curl, "-q", "--no-progress-meter", "--parallel", "--parallel-max", str(parallel),
        "--proxy", f"http://{LOOPBACK}:{target.proxy_port}", "--noproxy", "",
        "--cacert", str(target.proxy_ca),
        "--connect-to", f"{BENCH_HOST}:443:{LOOPBACK}:{target.upstream_port}",
        "--max-time", str(_MAX_TIME), "--output", "/dev/null",
        "--write-out", f"%{{stderr}}{MARK}%{{http_code}} %{{num_connects}} %{{http_version}}\\n",
        *load.curl_args, f"https://{BENCH_HOST}/?n=[1-{requests}]",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - curl with our own arguments, no shell
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
    reader.start()
    try:
        process.wait(timeout=duration)
        truncated = False
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
        truncated = True
    finally:
        if process.poll() is None:  # interrupted: do not leave curl running
            process.kill()
            process.wait()
    reader.join()
    elapsed = time.perf_counter() - started
    return read_transfers(load, lines, elapsed, truncated, requests, parallel,
                          process.returncode)


def _read_lines(process: subprocess.Popen[str], lines: list[tuple[float, str]]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if line.endswith("\n"):  # not a line curl was writing when the time bound stopped it
            lines.append((time.perf_counter(), line[:-1]))


def read_transfers(load: Workload, lines: Sequence[tuple[float, str]], elapsed: float,
                   truncated: bool, requests: int, parallel: int, returncode: int) -> LoadResult:
    """Judge one curl run from its timestamped stderr lines (`MARK` + code, connects, version
    per finished transfer; anything else is a curl error message)."""
    finished = [(at, line[len(MARK):].split()) for at, line in lines if line.startswith(MARK)]
    messages = Counter(line for _, line in lines if line and not line.startswith(MARK))
    outcomes = Counter(_outcome(fields, load.http_version) for _, fields in finished)
    ok = outcomes.pop("ok", 0)
    tunnels = sum(int(fields[1]) for _, fields in finished if fields[1:2] and fields[1].isdigit())
    problems = [f"{count}x {what}" for what, count in outcomes.most_common()]
    problems += [f"{count}x {message}" for message, count in messages.most_common(3)]
    if not truncated and len(finished) < requests:
        problems.append(f"curl exited ({returncode}) after {len(finished)} of {requests} transfers")
    if load.tunnel_per_request and tunnels != len(finished):
        problems.append(f"{len(finished)} transfers opened {tunnels} tunnels, not one each")
    times = [at for at, _ in finished]
    if len(times) > 2 * parallel:  # steady state: after the first wave of transfers finished
        rate = (len(times) - parallel) / (times[-1] - times[parallel - 1])
    else:
        rate = len(times) / elapsed if elapsed > 0 else 0.0
    steady = times[parallel - 1:]
    gap = max((later - earlier for earlier, later in itertools.pairwise(steady)), default=0.0)
    return LoadResult(load.name, rate, len(finished), ok, tunnels, elapsed, truncated,
                      tuple(problems), gap)


def _outcome(fields: list[str], http_version: str) -> str:
    code = fields[0] if fields else "?"
    version = fields[2] if len(fields) > 2 else "?"
    if code == "000":
        return "no response (curl error)"
    if code != "200":
        return f"status {code}"
    return "ok" if version == http_version else f"200 over HTTP/{version}"
