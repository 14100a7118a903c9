"""`pinproxy run`: the proxy, embedding mitmproxy with the pinning addon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from dataclasses import replace
from pathlib import Path

from pinproxy.commands._args import port
from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from pinproxy.loader import load_pinset
from pinproxy.pinset import Pinset
from pinproxy.proxy.ca import ensure_ca
from pinproxy.tools.probe import check_ca_file

_SWITCH_INTERVAL = 0.0005  # seconds; see docs/performance.md
_NO_FULL_COLLECTIONS = 1_000_000_000  # a gen-2 threshold no load reaches

_DEFAULTS = RunConfig()


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="start the proxy")
    parser.add_argument("--pinset", default=_DEFAULTS.pinset, metavar="PATH",
                        help="pinset YAML (default: %(default)s)")
    parser.add_argument("--listen-host", default=_DEFAULTS.listen_host,
                        help="default: %(default)s")
    parser.add_argument("--listen-port", type=port, default=_DEFAULTS.listen_port,
                        help="default: %(default)s")
    parser.add_argument("--confdir", default=_DEFAULTS.confdir, metavar="DIR",
                        help="directory of the proxy's CA (default: %(default)s)")
    parser.add_argument("--upstream-ca", metavar="PEM",
                        help="trust only these CA certificates upstream "
                             "(replaces the default bundle)")
    parser.add_argument("--report-log", metavar="PATH",
                        help="append one JSON object per pin violation to this file")
    parser.add_argument("--workers", type=_workers, default=_DEFAULTS.workers, metavar="N",
                        help="proxy processes sharing the port, one per core (default: 1)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=_DEFAULTS.log_level, help="default: %(default)s")
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                        help="the same as --log-level debug")
    parser.add_argument("--log-format", choices=("text", "json"), default=_DEFAULTS.log_format,
                        help="json: one object per line on stderr (default: %(default)s)")
    parser.add_argument("--admin-listen", default=_DEFAULTS.admin_listen, metavar="HOST:PORT",
                        help="serve /healthz, /readyz, /metrics and /pinset here; 'off' disables"
                             " it (default: %(default)s)")
    parser.add_argument("--proxy-auth", metavar="SPEC",
                        help="clients must authenticate: 'user:pass' or '@path/to/htpasswd'")
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="listen beyond loopback without --proxy-auth")
    parser.add_argument("--drain-timeout", type=float, default=_DEFAULTS.drain_timeout,
                        metavar="SECONDS",
                        help="on SIGTERM, how long in-flight requests may finish "
                             "(default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "i/N": started by --workers
    parser.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)  # a worker's "ready" pipe
    parser.set_defaults(command=run)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:  # started by --workers: the whole configuration is on stdin
        return _serve(RunConfig.from_json(sys.stdin.read()), worker=args.worker,
                      status_fd=args.status_fd)
    config = _config(args)
    ensure_ca(config.confdir)  # before any worker starts, else each would make its own CA
    if config.workers > 1:
        return _supervise(config)
    return _serve(config)


def _config(args: argparse.Namespace) -> RunConfig:
    """The validated run configuration: the one value every part of the proxy reads."""
    if args.upstream_ca:
        try:  # the check `pin` and `check --live` use: CA certificates OpenSSL can load
            check_ca_file(args.upstream_ca)
        except PinproxyError as e:
            raise PinproxyError(f"--upstream-ca {e}") from None
    return RunConfig(pinset=args.pinset, listen_host=args.listen_host,
                     listen_port=args.listen_port, confdir=args.confdir,
                     upstream_ca=args.upstream_ca, report_log=args.report_log,
                     workers=args.workers, log_level=args.log_level,
                     log_format=args.log_format, admin_listen=args.admin_listen,
                     proxy_auth=args.proxy_auth, allow_unauthenticated=args.allow_unauthenticated,
                     drain_timeout=args.drain_timeout)


def _serve(config: RunConfig, worker: str = "", status_fd: int | None = None) -> int:
    from pinproxy.proxy.serve import serve

    # The process is the proxy's: a pinset loading in a thread must hand the GIL back to the
    # event loop often (the default 5 ms switch interval holds traffic for long stretches).
    sys.setswitchinterval(_SWITCH_INTERVAL)
    return asyncio.run(serve(config, worker, load=load_without_full_collections,
                             status_fd=status_fd))


def load_without_full_collections(path: str | Path) -> Pinset:
    """Load a pinset with the cycle collector's full collections held off.

    Each full collection would scan every object of the process, the growing pinset included,
    to find nothing (the loader makes no cycles), with the event loop held when the load runs
    in the background. Young collections go on, so the proxy still collects its own garbage.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, _NO_FULL_COLLECTIONS)
    try:
        return load_pinset(path)
    finally:
        if gc.get_threshold()[2] == _NO_FULL_COLLECTIONS:  # unless someone set it meanwhile
            gc.set_threshold(young, middle, old)


def _supervise(config: RunConfig) -> int:
    """Check what every worker would check, once, then start the workers on one port."""
    from pinproxy.proxy.workers import (
        metrics_directory,
        reserve_port,
        supervise,
        validate_pinset,
    )

    # A bad pinset: one set of messages, not one per worker. Checked in a child process, so the
    # supervisor does not keep a parsed pinset (up to 100+ MB) that it never uses.
    if code := validate_pinset(config.pinset):
        return code
    with (metrics_directory() as metrics_dir,
          reserve_port(config.listen_host, config.listen_port) as reserved):
        # The supervisor alone serves the admin endpoint: workers never bind it.
        shared = replace(config, listen_port=reserved.getsockname()[1], admin_listen="off")
        command = [sys.executable, "-m", "pinproxy", "run", "--worker"]
        return supervise([[*command, f"{i}/{config.workers}"]
                          for i in range(1, config.workers + 1)], shared.to_json(),
                         pinset=config.pinset, drain_timeout=config.drain_timeout,
                         admin=config.admin_address, metrics_dir=metrics_dir)
