"""`pinproxy init`: write a starter pinset from live hosts (being written)."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("init", help="write a starter pinset from live hosts")
    parser.set_defaults(command=init)


def init(args: argparse.Namespace) -> int:
    raise PinproxyError("'init' is not implemented yet")
