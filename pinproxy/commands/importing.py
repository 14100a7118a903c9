"""`pinproxy import FILE`: Android, iOS, HPKP or OkHttp pins -> pinset YAML.

Exit 0 when the pinset says exactly what the file said, 1 when a warning reports something that
could not be mapped faithfully (unless --allow-lossy), 2 for a file that cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from pinproxy.errors import PinproxyError
from pinproxy.files import read_regular, replace_atomically
from pinproxy.formats import IMPORT_FORMATS, Converted, import_pins

EXIT_LOSSY = 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import", help="convert Android, iOS, HPKP or OkHttp pins to a pinset",
        description="Convert the pins of an app or server config to pinset YAML. What cannot "
                    "be mapped faithfully is printed as 'file:line: warning: ...' and makes "
                    "the command exit 1, unless --allow-lossy.")
    parser.add_argument("file", metavar="FILE",
                        help="network_security_config.xml, Info.plist (XML or binary), HPKP "
                             "header lines, or OkHttp pins; '-' reads standard input")
    parser.add_argument("--format", metavar="FORMAT",
                        help=f"one of {', '.join(IMPORT_FORMATS)} (default: detected from "
                             "the content)")
    parser.add_argument("--host", metavar="HOST",
                        help="the host that sends the HPKP headers (HPKP only)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write the pinset here instead of standard output")
    parser.add_argument("--allow-lossy", action="store_true",
                        help="exit 0 even when warnings report pins or semantics that could "
                             "not be mapped")
    parser.set_defaults(command=import_)


def import_(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else read_regular(args.file)
    except OSError as e:
        raise PinproxyError(f"{source}: cannot read: {e.strerror or e}") from None
    result = import_pins(data, source, args.format, args.host)
    return deliver(result, args.output, args.allow_lossy)


def deliver(result: Converted, output: str | None, allow_lossy: bool) -> int:
    """Print the notices, write the text (even when lossy: the warnings say what to review),
    and choose the exit code. Shared by `import` and `export`."""
    for notice in result.notices:
        print(notice, file=sys.stderr)
    if output is None:
        sys.stdout.write(result.text)
    else:
        try:
            # swapped in whole: a proxy reloading this pinset never reads half of it
            replace_atomically(output, result.text.encode(), 0o644)
        except OSError as e:
            raise PinproxyError(f"{output}: cannot write: {e.strerror or e}") from None
    if result.lossy and not allow_lossy:
        count = sum(notice.lossy for notice in result.notices)
        print(f"pinproxy: {count} warning(s): the result is not a faithful copy; review it and "
              "pass --allow-lossy to accept it", file=sys.stderr)
        return EXIT_LOSSY
    return 0
