"""`pinproxy pin TARGET`: the pins of a certificate/key file or of a live host's chain."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pinproxy.commands._args import host_port
from pinproxy.errors import PinproxyError
from pinproxy.pins import read_pem_or_der
from pinproxy.probe import probe


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("pin", help="print the pins of a certificate file or live host")
    parser.add_argument("target", metavar="TARGET",
                        help="PEM/DER certificate, chain or public key file, or HOST[:PORT]")
    parser.add_argument("--servername", metavar="NAME",
                        help="SNI and name to verify (live host)")
    parser.add_argument("--upstream-ca", metavar="PEM",
                        help="trust only these CA certificates (live host)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds (default: %(default)s)")
    parser.set_defaults(command=pin)


def pin(args: argparse.Namespace) -> int:
    target: str = args.target
    if os.path.exists(target):
        try:
            data = Path(target).read_bytes()
        except OSError as e:
            raise PinproxyError(f"{target}: {e.strerror or e}") from None
        for position, item in enumerate(read_pem_or_der(data, target)):
            print(f"{position}  {item.spki}  {item.label}")
        return 0
    host, port = host_port(target)
    result = probe(host, port, args.servername, args.upstream_ca, args.timeout)
    chain = result.verified or result.served
    if result.error:
        print(f"pinproxy: warning: the chain of {target} does not verify ({result.error}); "
              "showing the certificates the server sent", file=sys.stderr)
    print(f"# {'verified' if result.verified else 'served'} chain of {host}:{port}, 0 = leaf")
    for depth, cert in enumerate(chain):
        print(f"{depth}  {cert.spki}  {cert.subject}")
    return 1 if result.error else 0
