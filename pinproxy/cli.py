"""`pinproxy run | pin | check`: the command line. User errors are one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pinproxy.errors import PinproxyError, PinsetError
from pinproxy.loader import load_pinset
from pinproxy.pins import read_pem_or_der
from pinproxy.probe import probe

if TYPE_CHECKING:
    from pinproxy.addon import Pinning

__all__ = ["main"]

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.command(args)
    except PinsetError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return EXIT_USAGE
    except PinproxyError as e:
        print(f"pinproxy: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinproxy",
        description="A forward proxy that enforces certificate and public-key pins.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the proxy")
    run.add_argument("--pinset", default="config/pins.yaml", metavar="PATH",
                     help="pinset YAML (default: %(default)s)")
    run.add_argument("--listen-host", default="127.0.0.1", help="default: %(default)s")
    run.add_argument("--listen-port", type=_port, default=8080, help="default: %(default)s")
    run.add_argument("--confdir", default="~/.mitmproxy", metavar="DIR",
                     help="directory of the proxy's CA (default: %(default)s)")
    run.add_argument("--upstream-ca", metavar="PEM",
                     help="trust only these CA certificates upstream (replaces the default bundle)")
    run.add_argument("--report-log", metavar="PATH",
                     help="append one JSON object per pin violation to this file")
    run.add_argument("-v", "--verbose", action="store_true", help="log every allowed connection")
    run.set_defaults(command=_run)

    pin = commands.add_parser("pin", help="print the pins of a certificate file or live host")
    pin.add_argument("target", metavar="TARGET",
                     help="PEM/DER certificate, chain or public key file, or HOST[:PORT]")
    pin.add_argument("--servername", metavar="NAME", help="SNI and name to verify (live host)")
    pin.add_argument("--upstream-ca", metavar="PEM",
                     help="trust only these CA certificates (live host)")
    pin.add_argument("--timeout", type=float, default=10.0, help="seconds (default: %(default)s)")
    pin.set_defaults(command=_pin)

    check = commands.add_parser("check", help="validate a pinset file")
    check.add_argument("pinset", metavar="PINSET")
    check.set_defaults(command=_check)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


# -- check ---------------------------------------------------------------------------------

def _check(args: argparse.Namespace) -> int:
    pinset = load_pinset(args.pinset)
    print(f"{args.pinset}: OK: {len(pinset.rules)} host rules, {pinset.pin_count} pins, "
          f"mode {pinset.mode}, unpinned {pinset.unpinned}")
    return 0


# -- pin -----------------------------------------------------------------------------------

def _pin(args: argparse.Namespace) -> int:
    target: str = args.target
    if os.path.exists(target):
        try:
            data = Path(target).read_bytes()
        except OSError as e:
            raise PinproxyError(f"{target}: {e.strerror or e}") from None
        for position, item in enumerate(read_pem_or_der(data, target)):
            print(f"{position}  {item.spki}  {item.label}")
        return 0
    host, port = _host_port(target)
    result = probe(host, port, args.servername, args.upstream_ca, args.timeout)
    chain = result.verified or result.served
    if result.error:
        print(f"pinproxy: warning: the chain of {target} does not verify ({result.error}); "
              "showing the certificates the server sent", file=sys.stderr)
    print(f"# {'verified' if result.verified else 'served'} chain of {host}:{port}, 0 = leaf")
    for depth, cert in enumerate(chain):
        print(f"{depth}  {cert.spki}  {cert.subject}")
    return 1 if result.error else 0


def _host_port(target: str) -> tuple[str, int]:
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest.removeprefix(":") or "443"
    elif target.count(":") == 1:
        host, _, port_text = target.partition(":")
    else:
        host, port_text = target, "443"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PinproxyError(f"{target!r} is neither a file nor HOST[:PORT]")
    return host, int(port_text)


# -- run -----------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    if args.upstream_ca:
        try:
            read_pem_or_der(Path(args.upstream_ca).read_bytes(), args.upstream_ca)
        except OSError as e:
            raise PinproxyError(f"--upstream-ca {args.upstream_ca}: {e.strerror or e}") from None
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from pinproxy.addon import Pinning

    logging.getLogger("pinproxy").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    opts = options.Options()
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    addon = Pinning()
    master.addons.add(addon)
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
    loop.add_signal_handler(signal.SIGHUP, _reload, addon)
    await master.run()
    return 0


def _reload(addon: Pinning) -> None:
    """SIGHUP: read the pinset file again; a bad file is logged and the old pinset stays."""
    from mitmproxy import exceptions

    try:
        addon.reload()
    except exceptions.OptionsError as e:
        logging.getLogger("pinproxy.addon").error("pinproxy pinset reload failed: %s", e)
