"""Reload pause: how long traffic waits while the proxy reloads its pinset (SIGHUP).

A proxy that reads its pinset on the event loop holds every connection for as long as the
load takes: seconds for 100 000 rules. Under steady keep-alive load, the longest time between
two finished transfers shows that pause; the same load without a reload gives the baseline.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from bench.load import Target, run_load, workload
from bench.proxies import RunningProxy

__all__ = ["ReloadResult", "measure_reload"]

_RELOADED = "reloaded pinset"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    pinset_size: int
    baseline_gap: float  # longest pause between finished transfers, no reload
    reload_gap: float  # the same, with one reload in the middle of the load
    reload_rate: float  # requests/s over the load with the reload
    problems: tuple[str, ...]


def measure_reload(proxy: RunningProxy, target: Target, pinset_size: int, seconds: float,
                   parallel: int) -> ReloadResult:
    """Two keep-alive loads of `seconds` each: one plain, one with SIGHUP at a third of it."""
    keep_alive = workload("keep-alive")
    baseline = run_load(target, keep_alive, 100_000, parallel, seconds)
    reloads_before = proxy.log.read_text(errors="replace").count(_RELOADED)
    timer = threading.Timer(seconds / 3, os.kill, (proxy.process.pid, signal.SIGHUP))
    timer.start()
    try:
        loaded = run_load(target, keep_alive, 100_000, parallel, seconds)
    finally:
        timer.cancel()
    problems = list(baseline.problems) + list(loaded.problems)
    if proxy.log.read_text(errors="replace").count(_RELOADED) == reloads_before:
        problems.append(f"the proxy did not log '{_RELOADED}' during the load: "
                        f"{proxy.last_line()}")
    return ReloadResult(pinset_size, baseline.longest_gap, loaded.longest_gap, loaded.rate,
                        tuple(problems))
