#!/usr/bin/env python3
"""pinproxy against plain mitmdump of the same mitmproxy version, on loopback, in one run.

    .venv/bin/python bench/run.py            # the full benchmark, about 9 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # a half-minute sanity run

Every round starts each proxy afresh (in alternating order), times its start-up, loads it with
each workload through real curl to a local nginx, and reads its memory. Only 127.0.0.1 is ever
contacted. Exit status: 0 when every measurement is valid, 1 when some are not (they are listed),
2 for a usage or set-up error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as `python bench/run.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pinproxy
from bench import _proc, load, nginx, pinsets, pki, proxies, reload, results, soak
from pinproxy.proxy.ca import ensure_ca


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for the flags a run's length depends on; explicit flags override them."""

    rounds: int
    pinset_sizes: str
    duration: float
    requests: int


# 3 sizes x 5 rounds x 2 proxies x (3 x 5 s + warm-up + start): about 9 minutes on 2 cores
DEFAULTS = Preset(rounds=5, pinset_sizes="10,10000,100000", duration=5.0, requests=5000)
QUICK = Preset(rounds=1, pinset_sizes="10,10000", duration=2.0, requests=2000)  # ≈ 30-40 s


@dataclass(frozen=True, slots=True)
class Config:
    rounds: int
    requests: int
    duration: float
    parallel: int
    sizes: tuple[int, ...]
    workloads: tuple[load.Workload, ...]
    variants: tuple[proxies.Variant, ...]


class BenchError(Exception):
    """A set-up problem (missing tool, bad flag, a check that failed): one line, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config = _config(args)
        with tempfile.TemporaryDirectory(prefix="pinproxy-bench-") as tmp:
            return _run(args, config, Path(tmp))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a half-minute sanity run: 1 round, pinsets of 10 and 10 000 hosts, "
                             "2 s per measurement (explicit flags still win)")
    parser.add_argument("--rounds", type=_positive_int, help="rounds (default 5)")
    parser.add_argument("--requests", type=_positive_int,
                        help="at most this many requests per measurement (default 5000)")
    parser.add_argument("--duration", type=_positive_float,
                        help="at most this many seconds per measurement (default 5)")
    parser.add_argument("--parallel", type=_positive_int, default=16,
                        help="transfers in flight at once (default %(default)s)")
    parser.add_argument("--pinset-sizes", metavar="N,N,…",
                        help="host rules per generated pinset (default 10,10000,100000)")
    parser.add_argument("--workloads", default=",".join(w.name for w in load.WORKLOADS),
                        metavar="W,W,…", help="from new-tunnel, keep-alive, h2 (default: all)")
    parser.add_argument("--compare", default=f"{proxies.PLAIN},pinproxy", metavar="V,V,…",
                        help="proxy variants: plain, bare (mitmproxy's Master with six addons, "
                             "no pinning), pinproxy, pinproxy-wN (pinproxy with --workers N); "
                             "default %(default)s")
    parser.add_argument("--pinproxy-args", default="", metavar="'ARGS'",
                        help="extra flags for every pinproxy variant, e.g. '--workers 2'")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--soak", type=_positive_float, metavar="SECONDS",
                        help="instead of the comparison: keep-alive + new-tunnel load on pinproxy "
                             "for SECONDS (the largest pinset size), sampling RSS")
    parser.add_argument("--soak-interval", type=_positive_float, default=10.0, metavar="SECONDS",
                        help="RSS sampling interval of --soak (default %(default)s)")
    parser.add_argument("--reload", type=_positive_float, metavar="SECONDS",
                        help="instead of the comparison: per pinset size, SECONDS of keep-alive "
                             "load on pinproxy, then SECONDS more with one pinset reload "
                             "(SIGHUP) a third of the way in; the longest pause of traffic in "
                             "each")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (configs, pinsets, proxy and nginx logs)")
    return parser


def _config(args: argparse.Namespace) -> Config:
    preset = QUICK if args.quick else DEFAULTS
    pick = replace(preset, **{f.name: getattr(args, f.name) for f in fields(Preset)
                              if getattr(args, f.name) is not None})
    try:
        sizes = tuple(int(size) for size in pick.pinset_sizes.split(","))
        workloads = tuple(load.workload(name.strip()) for name in args.workloads.split(","))
        extra = shlex.split(args.pinproxy_args)
        variants = tuple(proxies.variant(name.strip(), extra) for name in args.compare.split(","))
    except ValueError as e:
        raise BenchError(str(e)) from None
    if any(size < 1 for size in sizes):
        raise BenchError(f"--pinset-sizes must be positive numbers, not {pick.pinset_sizes!r}")
    if args.json and not args.json.parent.is_dir():
        raise BenchError(f"--json {args.json}: no such directory {str(args.json.parent)!r}")
    if len({v.name for v in variants}) != len(variants):
        raise BenchError(f"--compare names a variant twice: {args.compare!r}")
    return Config(pick.rounds, pick.requests, pick.duration, args.parallel, sizes, workloads,
                  variants)


def _run(args: argparse.Namespace, config: Config, work: Path) -> int:
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="pinproxy-bench-kept-"))
        _say(f"work directory (kept): {work}")
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl not found: install it (apt-get install -y curl)")
    (work / "logs").mkdir()
    upstream = pki.make_pki(work)
    setup = proxies.ProxySetup(work / "confdir", upstream.ca_file, work / "logs")
    sizes = (max(config.sizes),) if args.soak else config.sizes
    pinset_files = {size: pinsets.write_pinset(work / f"pins-{size}.yaml", size, pki.BENCH_HOST,
                                               upstream.root_pin) for size in sizes}
    environment = _environment(curl)
    _say(" · ".join(f"{key} {value}" for key, value in environment.items()))
    try:
        with nginx.Nginx(work / "nginx", upstream) as server:
            calibration = _calibrate(setup, server, curl, config)
            if args.soak:
                return _soak(args, config, setup, server, curl, pinset_files[sizes[0]],
                             {"environment": environment, "calibration": calibration})
            if args.reload:
                return _reload(args, config, setup, server, curl, pinset_files,
                               {"environment": environment, "calibration": calibration})
            _say(f"benchmark: {len(sizes)} pinset sizes x {config.rounds} rounds x "
                 f"{len(config.variants)} proxies x {len(config.workloads)} workloads, each "
                 f"measurement ≤ {config.requests} requests and ≤ {config.duration:g} s")
            runs: list[results.ProxyRun] = []
            try:
                _compare(config, setup, server, curl, pinset_files, runs)
            except KeyboardInterrupt:
                if runs:
                    print("interrupted: the results so far")
                    _report(config, runs, sizes)
                raise
    except nginx.NginxError as e:
        raise BenchError(str(e)) from None
    summaries = _report(config, runs, sizes)
    if args.json:
        report = results.to_json(summaries, runs, {
            "config": _config_json(config), "environment": environment,
            "calibration": calibration})
        _write_json(args.json, report)
    valid = all(not run.error and all(x.valid for x in run.loads) for run in runs)
    return 0 if valid else 1


def _report(config: Config, runs: list[results.ProxyRun],
            sizes: Sequence[int]) -> list[results.Summary]:
    names = [v.name for v in config.variants]
    summaries = results.summarize(runs, sizes, config.rounds, names, config.workloads)
    print(results.render(summaries, runs, names, sizes), end="", flush=True)
    return summaries


def _compare(config: Config, setup: proxies.ProxySetup, server: nginx.Nginx, curl: str,
             pinset_files: dict[int, Path], runs: list[results.ProxyRun]) -> None:
    """Measure every (pinset size, round, variant), appending to `runs` as it goes."""
    failed: set[str] = set()
    for size in config.sizes:
        for number in range(1, config.rounds + 1):
            shift = (number - 1) % len(config.variants)  # alternate who goes first
            for proxy in config.variants[shift:] + config.variants[:shift]:
                if proxy.name in failed:
                    continue
                run = _measure(config, setup, server, curl, proxy, size, number,
                               pinset_files[size])
                runs.append(run)
                if run.startup is None:  # did not start: it will not in the next round either
                    failed.add(proxy.name)
                _say(_progress(run, config.rounds))


def _measure(config: Config, setup: proxies.ProxySetup, server: nginx.Nginx, curl: str,
             variant: proxies.Variant, size: int, number: int,
             pinset: Path) -> results.ProxyRun:
    try:
        proxy = proxies.start(variant, setup, pinset)
    except proxies.ProxyFailed as e:
        return results.ProxyRun(size, number, variant.name, None, None,
                                error=f"{e} (skipped from here on)")
    try:
        target = load.Target(curl, proxy.port, proxy.ca, server.port)
        for workload in config.workloads:  # warm-up: certificates, caches, connections
            load.run_load(target, workload, 2 * config.parallel, config.parallel, 10)
        loads = tuple(_measured_load(proxy, target, workload, config)
                      for workload in config.workloads)
        rss = proxy.rss_kib()
        died = proxy.process.poll()
    finally:
        proxy.stop()
    error = "" if died is None else f"exited ({died}) under load: {proxy.last_line()}"
    return results.ProxyRun(size, number, variant.name, proxy.startup, rss, loads, error)


def _measured_load(proxy: proxies.RunningProxy, target: load.Target, workload: load.Workload,
                   config: Config) -> load.LoadResult:
    cpu, (busy, total) = proxy.cpu_seconds(), _proc.machine_cpu_ticks()
    result = load.run_load(target, workload, config.requests, config.parallel, config.duration)
    busy_after, total_after = _proc.machine_cpu_ticks()
    return replace(result, proxy_cpu=proxy.cpu_seconds() - cpu,
                   machine_busy=(busy_after - busy) / max(total_after - total, 1))


def _calibrate(setup: proxies.ProxySetup, server: nginx.Nginx, curl: str,
               config: Config) -> dict[str, dict[str, int]]:
    """Check, with plain mitmdump, that each workload opens the tunnels it claims to.

    curl's own count (`%{num_connects}`) and nginx's (`stub_status` accepts: mitmproxy opens
    one upstream connection per tunnel) must agree; a new-tunnel workload that reused tunnels
    would measure the wrong thing. Also creates both proxies' CAs before any start-up is timed.
    """
    ensure_ca(str(setup.confdir_for(proxies.variant("pinproxy"))))
    try:
        proxy = proxies.start(proxies.variant(proxies.PLAIN), setup, Path())  # takes no pinset
    except proxies.ProxyFailed as e:
        raise BenchError(f"calibration: {e}") from None
    found: dict[str, dict[str, int]] = {}
    try:
        target = load.Target(curl, proxy.port, proxy.ca, server.port)
        for workload in config.workloads:
            transfers = (2 if workload.tunnel_per_request else 4) * config.parallel
            before = server.accepted_connections()
            result = load.run_load(target, workload, transfers, config.parallel, 60)
            upstream = server.accepted_connections() - before
            found[workload.name] = {"transfers": result.transfers, "tunnels": result.tunnels,
                                    "upstream_connections": upstream}
            if not result.valid:
                raise BenchError(f"calibration {workload.name} through plain mitmdump failed: "
                                 f"{'; '.join(result.problems)}")
            expected = transfers if workload.tunnel_per_request else None
            if upstream != result.tunnels or (expected and result.tunnels != expected) or (
                    not expected and result.tunnels >= transfers):
                raise BenchError(f"calibration {workload.name}: {transfers} transfers opened "
                                 f"{result.tunnels} tunnels (curl) and {upstream} upstream "
                                 "connections (nginx); the workload does not measure what it "
                                 "claims")
    finally:
        proxy.stop()
    _say("calibration (plain mitmdump): " + "; ".join(
        f"{name} {c['transfers']} transfers → {c['tunnels']} tunnels (curl), "
        f"{c['upstream_connections']} upstream connections (nginx)" for name, c in found.items()))
    return found


def _soak(args: argparse.Namespace, config: Config, setup: proxies.ProxySetup,
          server: nginx.Nginx, curl: str, pinset: Path, extra: dict[str, Any]) -> int:
    variant = _pinproxy_variant(args, config)
    try:
        proxy = proxies.start(variant, setup, pinset)
    except proxies.ProxyFailed as e:
        raise BenchError(f"soak: {e}") from None
    _say(f"soak: {variant.name} with {pinset.name}, {args.soak:g} s of keep-alive + new-tunnel "
         f"load, RSS every {args.soak_interval:g} s")
    try:
        target = load.Target(curl, proxy.port, proxy.ca, server.port)
        result = soak.soak(proxy, target, args.soak, args.soak_interval, config.parallel, _say)
    finally:
        proxy.stop()
    first, last = result.samples[0][1], result.samples[-1][1]
    print(f"soak {result.variant}, RSS (MiB) every {args.soak_interval:g} s:")
    for row in range(0, len(result.samples), 10):
        print(f"  t={result.samples[row][0]:5.0f} s " + " ".join(
            f"{rss / 1024:6.1f}" for _, rss in result.samples[row:row + 10]))
    print(f"soak {result.variant}: RSS {first / 1024:.1f} → {last / 1024:.1f} MiB, growth "
          f"first → last {result.growth_percent:+.1f} % over {result.samples[-1][0]:.0f} s; "
          + ", ".join(f"{name} {count} transfers" for name, count in result.transfers.items())
          + f"; {len(result.errors)} problems")
    for problem in dict.fromkeys(result.errors):
        print(f"  {problem}")
    if args.json:
        _write_json(args.json, {**extra, "config": _config_json(config), "soak": asdict(result)})
    return 0 if not result.errors else 1


def _reload(args: argparse.Namespace, config: Config, setup: proxies.ProxySetup,
            server: nginx.Nginx, curl: str, pinset_files: dict[int, Path],
            extra: dict[str, Any]) -> int:
    variant = _pinproxy_variant(args, config)
    _say(f"reload pause: {variant.name}, {args.reload:g} s of keep-alive load without, then "
         f"with, one SIGHUP; pinsets of {', '.join(map(str, pinset_files))} hosts")
    found: list[reload.ReloadResult] = []
    for size, pinset in pinset_files.items():
        try:
            proxy = proxies.start(variant, setup, pinset)
        except proxies.ProxyFailed as e:
            raise BenchError(f"reload: {e}") from None
        try:
            target = load.Target(curl, proxy.port, proxy.ca, server.port)
            load.run_load(target, load.workload("keep-alive"), 2 * config.parallel,
                          config.parallel, 10)  # warm-up
            found.append(reload.measure_reload(proxy, target, size, args.reload,
                                               config.parallel))
        finally:
            proxy.stop()
    rows = [["pinset hosts", "longest pause, no reload", "longest pause, reload",
             "requests/s with the reload"]]
    rows += [[f"{r.pinset_size:,}".replace(",", " "), f"{r.baseline_gap * 1000:.0f} ms",
              f"{r.reload_gap * 1000:.0f} ms", f"{r.reload_rate:.1f}"] for r in found]
    print(f"\nreload pause ({variant.name}, keep-alive, {config.parallel} transfers in flight): "
          "the longest time between two finished transfers")
    print("\n".join(results.columns(rows)))
    problems = [f"  pinset {r.pinset_size}: {problem}" for r in found for problem in r.problems]
    print("\n".join(["", "problems:", *problems]) if problems else
          "\nall transfers answered 200, every reload logged")
    if args.json:
        _write_json(args.json, {**extra, "config": _config_json(config),
                                "reload": [asdict(r) for r in found]})
    return 1 if problems else 0


def _pinproxy_variant(args: argparse.Namespace, config: Config) -> proxies.Variant:
    """The first pinproxy variant of --compare, or pinproxy with --pinproxy-args."""
    return next((v for v in config.variants if v.pinproxy_args is not None),
                proxies.variant("pinproxy", shlex.split(args.pinproxy_args)))


def _progress(run: results.ProxyRun, rounds: int) -> str:
    head = f"pinset {run.pinset_size} round {run.round}/{rounds} {run.variant}:"
    if run.error:
        return f"{head} FAILED {run.error}"
    loads = ", ".join(f"{x.workload} {x.rate:.1f}/s" + ("" if x.valid else " (INVALID)")
                      for x in run.loads)
    return (f"{head} start {run.startup or 0:.2f} s, {loads}, "
            f"RSS {(run.rss_kib or 0) / 1024:.1f} MiB")


def _environment(curl: str) -> dict[str, str]:
    def first_line(*command: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        return next(iter((done.stdout + done.stderr).splitlines()), "? ?")

    nginx_binary = shutil.which("nginx") or "/usr/sbin/nginx"
    source = Path(pinproxy.__file__).resolve().parent.parent  # what the proxies import too
    git = shutil.which("git")
    commit = first_line(git, "-C", str(source), "describe", "--always", "--dirty") if git \
        and (source / ".git").exists() else "no git"
    return {
        "mitmproxy": importlib.metadata.version("mitmproxy"),
        "pinproxy": f"{importlib.metadata.version('pinproxy')} from {source} ({commit})",
        "python": platform.python_version(),
        "curl": first_line(curl, "--version").split()[1],
        "nginx": first_line(nginx_binary, "-v").rpartition("/")[2],
        "cpus": str(os.cpu_count()),
        "load average": f"{os.getloadavg()[0]:.2f}",
    }


def _config_json(config: Config) -> dict[str, Any]:
    return {"rounds": config.rounds, "requests": config.requests, "duration": config.duration,
            "parallel": config.parallel, "pinset_sizes": list(config.sizes),
            "workloads": [w.name for w in config.workloads],
            "variants": [{"name": v.name, "pinproxy_args": v.pinproxy_args}
                         for v in config.variants]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise BenchError(f"--json {path}: {e.strerror or e}") from None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind, so every child is stopped on the way out


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


if __name__ == "__main__":
    sys.exit(main())
