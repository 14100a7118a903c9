"""`pinproxy check PINSET`: validate a pinset; every problem as `path:line: message`, exit 2."""

from __future__ import annotations

import argparse

from pinproxy.loader import load_pinset


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("check", help="validate a pinset file")
    parser.add_argument("pinset", metavar="PINSET")
    parser.set_defaults(command=check)


def check(args: argparse.Namespace) -> int:
    pinset = load_pinset(args.pinset)
    print(f"{args.pinset}: OK: {len(pinset.rules)} host rules, {pinset.pin_count} pins, "
          f"mode {pinset.mode}, unpinned {pinset.unpinned}")
    return 0
