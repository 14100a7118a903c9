"""One module per `pinproxy` subcommand; each has `register(subparsers)`.

`register` adds the subcommand's parser and sets `command=<function(args) -> exit code>`.
A command raises `PinproxyError` for a user error; `pinproxy.cli` prints it as one line.
"""

from pinproxy.commands import (
    backup_key,
    ca,
    check,
    exporting,
    importing,
    init,
    keygen,
    learned,
    pin,
    run,
    schema,
    sign,
)

COMMANDS = (run, pin, check, init, backup_key, importing, exporting, schema, ca, keygen, sign,
            learned)

__all__ = ["COMMANDS"]
