"""One module per `pinproxy` subcommand; each has `register(subparsers)`.

`register` adds the subcommand's parser and sets `command=<function(args) -> exit code>`.
A command raises `PinproxyError` for a user error; `pinproxy.cli` prints it as one line.
"""

from pinproxy.commands import check, pin, run

COMMANDS = (run, pin, check)

__all__ = ["COMMANDS"]
