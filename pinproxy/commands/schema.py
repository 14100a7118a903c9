"""`pinproxy schema`: print the JSON Schema of pinset version 1, for editors and CI."""

from __future__ import annotations

import argparse
import json

from pinproxy.json_schema import PINSET_SCHEMA


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schema", help="print the JSON Schema of pinset version 1",
        description="Print the JSON Schema (draft 2020-12) of pinset version 1 on stdout. Save "
                    "it next to your pinset and point your editor at it; pinproxy check is "
                    "still the authority (duplicate keys, dates, files, IDNA).")
    parser.set_defaults(command=schema)


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(PINSET_SCHEMA, indent=2))
    return 0
