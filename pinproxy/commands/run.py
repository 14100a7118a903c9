"""`pinproxy run`: the proxy, embedding mitmproxy with the pinning addon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from pinproxy.ca import ensure_ca
from pinproxy.commands._args import port
from pinproxy.errors import PinproxyError
from pinproxy.probe import check_ca_file


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
    return asyncio.run(_serve(args))


def _supervise(args: argparse.Namespace) -> int:
    """Check what every worker would check, once, then start the workers on one port."""
    from pinproxy.workers import reserve_port, supervise, validate_pinset

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


async def _serve(args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options

    from pinproxy.addon import Pinning
    from pinproxy.master import build_master

    logging.getLogger("pinproxy").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.worker:
        from pinproxy.workers import enable_reuse_port

        enable_reuse_port()
    opts = options.Options()
    addon = Pinning(label=f"worker {args.worker}" if args.worker else "")
    master = build_master(opts, addon)
    try:
        # Set every option in one update, after all addons are added: each addon's configure
        # then sees the final values together (and ours can refuse a bypassing combination).
        opts.update(
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            confdir=args.confdir,
            mode=["regular"],
            connection_strategy="eager",
            http3=False,
            ssl_verify_upstream_trusted_ca=args.upstream_ca,
            termlog_verbosity="debug" if args.verbose else "info",
            pinset=args.pinset,
            pinset_report_log=args.report_log or "",
        )
    except exceptions.OptionsError as e:
        if isinstance(e.__cause__, PinproxyError):
            raise e.__cause__ from None
        raise PinproxyError(str(e)) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    reloads: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def reload() -> None:  # SIGHUP; a bad file is logged and the old pinset stays
        task = loop.create_task(addon.reload_in_background())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    # What start-up made, the pinset above all, lives as long as the process (or until a
    # reload): out of the cycle collector's full scans, which would walk a 100 000-rule
    # pinset's million objects each time (about 0.3 s, with traffic held).
    gc.collect()
    gc.freeze()
    await master.run()
    return 0
