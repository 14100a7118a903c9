"""`pinproxy backup-key`: generate a backup key pair, its CSR and its pin (being written)."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("backup-key", help="generate a backup key pair, its CSR and its pin")
    parser.set_defaults(command=backup_key)


def backup_key(args: argparse.Namespace) -> int:
    raise PinproxyError("'backup-key' is not implemented yet")
