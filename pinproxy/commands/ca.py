"""`pinproxy ca export|init`: the CA clients must trust, exported or brought from elsewhere."""

from __future__ import annotations

import argparse
import os
import sys

from pinproxy.config import RunConfig
from pinproxy.errors import PinproxyError
from pinproxy.files import create_exclusively, replace_atomically
from pinproxy.proxy.ca import CA_KEY_FILE, EXPORT_FORMATS, ensure_ca, export_ca, install_ca

_CONFDIR = RunConfig().confdir


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("ca", help="export the proxy's CA certificate, or install one")
    parser.set_defaults(command=lambda _args: _help(parser))
    sub = parser.add_subparsers(metavar="SUBCOMMAND")

    export = sub.add_parser(
        "export", help="write the CA certificate clients must trust (never the key)",
        description="Write the CA certificate clients must trust. A confdir without a CA gets "
                    "one, as 'pinproxy run' would make it.")
    export.add_argument("--confdir", default=_CONFDIR, metavar="DIR",
                        help="directory of the proxy's CA (default: %(default)s)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="pem",
                        help="pem, der, or p12 (PKCS#12, certificate only; default: pem)")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write here (replaced if it exists) instead of standard output")
    export.set_defaults(command=_export)

    init = sub.add_parser(
        "init", help="install an organisation's own CA (certificate and key)",
        description="Install an organisation's CA in the confdir, in the layout mitmproxy "
                    "reads. The key file is written 0600, the directory 0700.")
    init.add_argument("--cert", required=True, metavar="FILE",
                      help="the CA certificate, PEM or DER")
    init.add_argument("--key", required=True, metavar="FILE",
                      help="its private key, PEM or DER, unencrypted")
    init.add_argument("--confdir", default=_CONFDIR, metavar="DIR",
                      help="directory of the proxy's CA (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace a CA already there")
    init.set_defaults(command=_init)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _export(args: argparse.Namespace) -> int:
    confdir = os.path.expanduser(args.confdir)
    if not os.path.exists(os.path.join(confdir, CA_KEY_FILE)):
        ensure_ca(args.confdir)
        print(f"pinproxy: created a new CA in {args.confdir}", file=sys.stderr)
    data = export_ca(args.confdir, args.format)
    if args.output:
        try:
            if os.path.exists(args.output):
                replace_atomically(args.output, data, 0o644)
            else:
                create_exclusively(args.output, data, 0o644)
        except OSError as e:
            raise PinproxyError(f"-o {args.output}: {e.strerror or e}") from None
        return 0
    if args.format != "pem" and sys.stdout.isatty():
        raise PinproxyError(f"--format {args.format} is binary: give -o FILE, or redirect "
                            "standard output")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _init(args: argparse.Namespace) -> int:
    path = install_ca(args.confdir, args.cert, args.key, force=args.force)
    print(f"installed the CA in {path}; clients must trust it "
          f"('pinproxy ca export --confdir {args.confdir}')", file=sys.stderr)
    return 0
