"""`pinproxy export --format FORMAT PINSET`: a pinset as Android, iOS, OkHttp, Envoy or HPKP.

Exit codes as for `import`: 1 when a warning reports something the format cannot express
(unless --allow-lossy), 2 for a pinset that does not load.
"""

from __future__ import annotations

import argparse

from pinproxy.commands.importing import deliver
from pinproxy.formats import EXPORT_FORMATS, export_pinset
from pinproxy.loader import load_pinset


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "export", help="write a pinset's pins for Android, iOS, OkHttp, Envoy or HPKP",
        description="Write a pinset's pins in an app or server format. What the format cannot "
                    "express is printed as 'file:line: warning: ...' and makes the command "
                    "exit 1, unless --allow-lossy.")
    parser.add_argument("--format", metavar="FORMAT", required=True,
                        help=f"one of {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("pinset", metavar="PINSET")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write here instead of standard output")
    parser.add_argument("--allow-lossy", action="store_true",
                        help="exit 0 even when warnings report what the format cannot express")
    parser.set_defaults(command=export)


def export(args: argparse.Namespace) -> int:
    result = export_pinset(load_pinset(args.pinset), args.format)
    return deliver(result, args.output, args.allow_lossy)
