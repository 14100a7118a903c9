"""`pinproxy run`: the proxy, embedding mitmproxy with the pinning addon."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pinproxy.commands._args import port
from pinproxy.errors import PinproxyError
from pinproxy.proxy.ca import ensure_ca
from pinproxy.tools.probe import check_ca_file


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("run", help="start the proxy")
    parser.add_argument("--pinset", default="config/pins.yaml", metavar="PATH",
                        help="pinset YAML (default: %(default)s)")
    parser.add_argument("--listen-host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--listen-port", type=port, default=8080, help="default: %(default)s")
    parser.add_argument("--confdir", default="~/.mitmproxy", metavar="DIR",
                        help="directory of the proxy's CA (default: %(default)s)")
    parser.add_argument("--upstream-ca", metavar="PEM",
                        help="trust only these CA certificates upstream "
                             "(replaces the default bundle)")
    parser.add_argument("--report-log", metavar="PATH",
                        help="append one JSON object per pin violation to this file")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N",
                        help="proxy processes sharing the port, one per core (default: 1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log every allowed connection")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "i/N": started by --workers
    parser.set_defaults(command=run)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def run(args: argparse.Namespace) -> int:
    if args.upstream_ca:
        try:  # the check `pin` and `check --live` use: CA certificates OpenSSL can load
            check_ca_file(args.upstream_ca)
        except PinproxyError as e:
            raise PinproxyError(f"--upstream-ca {e}") from None
    if args.worker is None:  # the supervisor made it before starting the workers
        ensure_ca(args.confdir)
    if args.workers > 1:
        return _supervise(args)
    from pinproxy.proxy.serve import serve

    return asyncio.run(serve(args))


def _supervise(args: argparse.Namespace) -> int:
    """Check what every worker would check, once, then start the workers on one port."""
    from pinproxy.proxy.workers import reserve_port, supervise, validate_pinset

    # A bad pinset: one set of messages, not one per worker. Checked in a child process, so the
    # supervisor does not keep a parsed pinset (up to 100+ MB) that it never uses.
    if code := validate_pinset(args.pinset):
        return code
    with reserve_port(args.listen_host, args.listen_port) as reserved:
        port = reserved.getsockname()[1]
        common = [sys.executable, "-m", "pinproxy", "run", "--pinset", args.pinset,
                  "--listen-host", args.listen_host, "--listen-port", str(port),
                  "--confdir", args.confdir]
        if args.upstream_ca:
            common += ["--upstream-ca", args.upstream_ca]
        if args.report_log:
            common += ["--report-log", args.report_log]
        if args.verbose:
            common.append("--verbose")
        return supervise([[*common, "--worker", f"{i}/{args.workers}"]
                          for i in range(1, args.workers + 1)])
