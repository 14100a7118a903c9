"""`pinproxy schema`: print the JSON Schema of pinset version 1 (being written)."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("schema", help="print the JSON Schema of pinset version 1")
    parser.set_defaults(command=schema)


def schema(args: argparse.Namespace) -> int:
    raise PinproxyError("'schema' is not implemented yet")
