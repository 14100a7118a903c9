"""Options and progress shared by the commands that probe live hosts (`pin`, `init`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pinproxy.commands._args import ConnectTo, connect_to
from pinproxy.errors import quote
from pinproxy.tools.probe import target_text

__all__ = ["add_probe_options", "progress", "seconds"]


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a number of seconds (0-3600)")
    return value


def add_probe_options(parser: argparse._ActionsContainer) -> None:
    """--upstream-ca, --connect-to and --timeout, with the same words everywhere (a parser
    or an argument group)."""
    parser.add_argument("--upstream-ca", metavar="PEM",
                        help="verify live chains with only these CA certificates "
                             "(default: certifi's bundle, as the proxy)")
    parser.add_argument("--connect-to", type=connect_to, action="append", default=[],
                        metavar="HOST:PORT:ADDR:PORT",
                        help="reach HOST:PORT at ADDR:PORT instead, keeping HOST for SNI and "
                             "verification (as curl's --connect-to); repeatable")
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="per host, connect and handshake (default: %(default)s)")


def progress(connect: Sequence[ConnectTo]) -> Callable[[str, int], None] | None:
    """A `probe_many(on_start=...)` callback: one line per host on stderr, on a terminal only.

    Piped or captured output stays clean for scripts; a person watching sees which host a
    slow run is waiting for.
    """
    if not sys.stderr.isatty():
        return None

    def show(host: str, port: int) -> None:
        sys.stderr.write(f"pinproxy: connecting to {target_text(host, port, connect)}...\n")
        sys.stderr.flush()

    return show
