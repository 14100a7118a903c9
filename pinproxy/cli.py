"""`pinproxy COMMAND`: the command line. A user error is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pinproxy.commands import COMMANDS
from pinproxy.errors import PinproxyError, PinsetError

__all__ = ["main"]

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.command(args)
    except PinsetError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except PinproxyError as e:
        print(f"pinproxy: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pinproxy schema | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="pinproxy",
        description="A forward proxy that enforces certificate and public-key pins.")
    subparsers = top.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return top
