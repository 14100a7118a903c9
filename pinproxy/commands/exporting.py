"""`pinproxy export`: write a pinset's pins for Android, iOS, OkHttp, Envoy or HPKP (being written)."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("export", help="write a pinset's pins for Android, iOS, OkHttp, Envoy or HPKP")
    parser.set_defaults(command=export)


def export(args: argparse.Namespace) -> int:
    raise PinproxyError("'export' is not implemented yet")
