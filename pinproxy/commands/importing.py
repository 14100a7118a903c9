"""`pinproxy import`: convert Android, iOS, HPKP or OkHttp pins to a pinset (being written)."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("import", help="convert Android, iOS, HPKP or OkHttp pins to a pinset")
    parser.set_defaults(command=import_)


def import_(args: argparse.Namespace) -> int:
    raise PinproxyError("'import' is not implemented yet")
