#!/usr/bin/env python3
"""The pin decision alone, without a proxy: what one upstream handshake costs pinproxy.

    .venv/bin/python bench/decision.py [--pinset-sizes 10,10000,100000]

For a three-certificate chain (leaf, intermediate, root; the pin is on the root, so a match
walks the whole chain) against pinsets of each size: microseconds per handshake for the
decision itself (`certificate_pins`, cached, for each certificate + `policy.decide`) and for
what the verify callback does around it (pyOpenSSL's DER dump of each certificate), plus the
pinset's load time and memory. Lookup is a dict access, so only load time and memory should
grow with the pinset.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import platform
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/decision.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import crypto

from bench import pinsets, pki
from pinproxy.commands.run import load_without_full_collections as load_pinset  # as the proxy loads
from pinproxy.pins import CertificatePins, certificate_pins
from pinproxy.policy import decide

MIB = 1024 * 1024
# what the addon passes for `curl --connect-to bench.pinned.test:443:127.0.0.1:PORT`:
# upstream SNI, CONNECT host, client SNI
PINNED_NAMES = (pki.BENCH_HOST, "127.0.0.1", pki.BENCH_HOST)
UNPINNED_NAMES = ("unpinned.example.org", "127.0.0.1", "unpinned.example.org")


@dataclass(frozen=True, slots=True)
class SizeResult:
    hosts: int
    load_seconds: float
    rss_mib: float  # resident memory added by loading (and keeping) the pinset
    peak_mib: float | None  # Python allocations at the peak of loading (tracemalloc)
    kept_mib: float | None  # Python allocations still held by the loaded pinset
    pinned_us: float
    unpinned_us: float
    callback_us: float


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/decision.py", description=__doc__.split("\n")[0]
                                     if __doc__ else None)
    parser.add_argument("--pinset-sizes", default="10,10000,100000", metavar="N,N,…")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="skip the second, traced load that measures Python allocations "
                             "(it takes about three times as long as a plain load)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.pinset_sizes.split(",")]
    except ValueError:
        parser.error(f"--pinset-sizes must be numbers separated by commas, not "
                     f"{args.pinset_sizes!r}")
    with tempfile.TemporaryDirectory(prefix="pinproxy-decision-") as tmp:
        work = Path(tmp)
        chain = pki.make_pki(work)
        x509s = [crypto.load_certificate(crypto.FILETYPE_ASN1, der) for der in chain.ders]
        print(f"pinproxy {importlib.metadata.version('pinproxy')} · Python "
              f"{platform.python_version()} · chain: leaf, intermediate, root (pinned)")
        print(f"one new certificate (certificate_pins, not cached): "
              f"{_per_call(lambda: certificate_pins.__wrapped__(chain.ders[0])):.1f} µs")
        rows = []
        for size in sizes:
            path = pinsets.write_pinset(work / f"pins-{size}.yaml", size, pki.BENCH_HOST,
                                        chain.root_pin)
            rows.append(_measure(size, path, chain.ders, x509s, not args.no_tracemalloc))
    _print_table(rows)
    return 0


def _measure(size: int, path: Path, ders: tuple[bytes, ...], x509s: list[crypto.X509],
             traced: bool) -> SizeResult:
    gc.collect()
    rss_before = _rss_mib()
    started = time.perf_counter()
    pinset = load_pinset(path)
    load_seconds = time.perf_counter() - started
    gc.collect()
    rss = _rss_mib() - rss_before
    peak = kept = None
    if traced:
        tracemalloc.start()
        traced_pinset = load_pinset(path)
        kept_bytes, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del traced_pinset
        peak, kept = peak_bytes / MIB, kept_bytes / MIB
    today = dt.datetime.now(dt.UTC).date()
    if not decide(pinset, PINNED_NAMES, _chain(ders), today).proceeds:
        raise SystemExit(f"bench/decision.py: the pinned handshake was refused with {size} hosts")

    def callback() -> None:  # what pinproxy's verify callback does per handshake
        dumped = [crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in x509s]
        decide(pinset, PINNED_NAMES, [certificate_pins(der) for der in dumped], today)

    return SizeResult(
        size, load_seconds, rss, peak, kept,
        _per_call(lambda: decide(pinset, PINNED_NAMES, _chain(ders), today)),
        _per_call(lambda: decide(pinset, UNPINNED_NAMES, _chain(ders), today)),
        _per_call(callback))


def _chain(ders: tuple[bytes, ...]) -> list[CertificatePins]:
    return [certificate_pins(der) for der in ders]


def _per_call(function: Callable[[], object]) -> float:
    """Best of five timeit repeats, in microseconds per call."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    return min(timer.repeat(5, number)) / number * 1e6


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _print_table(rows: list[SizeResult]) -> None:
    header = ["pinset hosts", "load s", "RSS +MiB", "alloc peak MiB", "kept MiB",
              "pinned µs", "unpinned µs", "callback µs"]
    table = [header] + [[
        f"{r.hosts:,}".replace(",", " "), f"{r.load_seconds:.2f}", f"{r.rss_mib:.1f}",
        "—" if r.peak_mib is None else f"{r.peak_mib:.1f}",
        "—" if r.kept_mib is None else f"{r.kept_mib:.1f}",
        f"{r.pinned_us:.2f}", f"{r.unpinned_us:.2f}", f"{r.callback_us:.2f}"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print("\npinned/unpinned µs: certificate_pins (cached) of each certificate + policy.decide, "
          "per handshake;\ncallback µs: the same plus pyOpenSSL's DER dump of each certificate, "
          "as the verify callback does")


if __name__ == "__main__":
    sys.exit(main())
