"""`pinproxy sign PINSET --key SECRET`: a minisign signature of a pinset, for `--pinset-url`.

The pinset is loaded first: a pinset that does not load is never signed (the proxy would
refuse it after fetching, and the mistake would surface only there). `file:` pins are refused
too: the signature covers the YAML, not the files it names. The signature is what
`minisign -S` writes (prehashed, with a trusted comment signed along), so `minisign -V`
verifies it, and `minisign -S` signatures verify in the proxy.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

from pinproxy import minisign
from pinproxy.errors import PinproxyError, PinsetError, Problem
from pinproxy.files import read_regular, replace_atomically
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sign", help="sign a pinset (minisign format) for run --pinset-url",
        description="Validate PINSET, then write its minisign signature (PINSET.minisig by "
                    "default). An encrypted secret key asks for its password on the terminal, "
                    "or reads one line from standard input.")
    parser.add_argument("pinset", metavar="PINSET")
    parser.add_argument("--key", required=True, metavar="SECRET",
                        help="minisign secret key file (pinproxy keygen, minisign -G)")
    parser.add_argument("-o", "--output", metavar="SIG",
                        help="signature file (default: PINSET.minisig)")
    parser.add_argument("--trusted-comment", metavar="TEXT",
                        help="signed one-line comment (default: timestamp, file name and "
                             "serial, as minisign writes it)")
    parser.set_defaults(command=sign)


def sign(args: argparse.Namespace) -> int:
    path = Path(args.pinset)
    try:
        data = read_regular(path)  # read once: the bytes validated are the bytes signed
    except OSError as e:
        raise PinsetError([Problem(Location(str(path)),
                                   f"cannot read pinset: {e.strerror or e}")]) from None
    # raises PinsetError: a pinset that does not load is never signed
    pinset = parse_pinset(data, str(path), base_dir=path.parent, allow_files=False)
    try:
        key_data = read_regular(args.key)
    except OSError as e:
        raise PinproxyError(f"{args.key}: cannot read secret key: {e.strerror or e}") from None
    try:
        key = minisign.parse_secret_key(key_data, _password)
    except minisign.MinisignError as e:
        raise PinproxyError(f"{args.key}: {e}") from None
    if args.trusted_comment is not None:
        comment = args.trusted_comment
    else:
        serial = f"\tserial:{pinset.serial}" if pinset.serial is not None else ""
        comment = f"timestamp:{int(time.time())}\tfile:{path.name}{serial}\thashed"
    signature = minisign.sign(key, data, comment)
    output = Path(args.output) if args.output else path.with_name(path.name + ".minisig")
    try:
        replace_atomically(output, signature.file_text().encode(), 0o644)
    except OSError as e:
        raise PinproxyError(f"{output}: cannot write: {e.strerror or e}") from None
    print(f"{output}: signed {path} with key {key.id_text}")
    return 0


def _password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")
