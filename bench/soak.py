"""Soak: steady keep-alive and new-tunnel load on one proxy, sampling its memory.

A proxy that leaks a little per connection looks fine in a five-second benchmark and dies
after a week; ten minutes of steady load with RSS sampled every ten seconds shows the trend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.load import LoadResult, Target, Workload, run_load, workload
from bench.proxies import RunningProxy

__all__ = ["SoakResult", "soak"]

_CHUNK = 10.0  # seconds per curl process: bounded, and errors show up while it runs


@dataclass(frozen=True, slots=True)
class SoakResult:
    variant: str
    samples: tuple[tuple[float, int], ...]  # (seconds since the load began, RSS KiB)
    transfers: dict[str, int]
    errors: tuple[str, ...]

    @property
    def growth_percent(self) -> float:
        first, last = self.samples[0][1], self.samples[-1][1]
        return (last - first) / first * 100 if first else 0.0


@dataclass
class _Tally:
    transfers: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: LoadResult) -> None:
        with self.lock:
            self.transfers[result.workload] = self.transfers.get(result.workload, 0) + result.ok
            self.errors.extend(result.problems)


def soak(proxy: RunningProxy, target: Target, seconds: float, interval: float, parallel: int,
         progress: Callable[[str], None]) -> SoakResult:
    """Run both loads side by side and sample RSS every `interval` seconds for `seconds`.

    Sampling starts after a warm-up (a tenth of the soak, at most 30 s) under the same load, so
    the first sample is a proxy whose caches and buffers are already full, not an idle one.
    """
    loads = (workload("keep-alive"), workload("new-tunnel"))
    share = max(1, parallel // len(loads))
    warmup = min(30.0, seconds / 10)
    tally = _Tally()
    deadline = time.monotonic() + warmup + seconds
    threads = [threading.Thread(target=_keep_loading, args=(target, load, share, deadline, tally),
                                daemon=True) for load in loads]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    began = time.monotonic()
    samples = [(0.0, proxy.rss_kib())]
    progress(f"soak t={0:5.0f} s  RSS {samples[0][1] / 1024:7.1f} MiB")
    while (now := time.monotonic()) < deadline:
        time.sleep(min(interval - (now - began) % interval, deadline - now))
        samples.append((time.monotonic() - began, proxy.rss_kib()))
        progress(f"soak t={samples[-1][0]:5.0f} s  RSS {samples[-1][1] / 1024:7.1f} MiB")
    for thread in threads:
        thread.join()
    return SoakResult(proxy.variant.name, tuple(samples), dict(tally.transfers),
                      tuple(tally.errors))


def _keep_loading(target: Target, load: Workload, parallel: int, deadline: float,
                  tally: _Tally) -> None:
    while (left := deadline - time.monotonic()) > 0.2:
        # far more requests than fit: the time bound ends each chunk
        tally.add(run_load(target, load, 100_000, parallel, min(_CHUNK, left)))
