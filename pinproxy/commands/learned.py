"""`pinproxy learned list|forget|promote`: the pins a proxy learned on first use."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from pinproxy.errors import PinproxyError, quote
from pinproxy.files import create_exclusively, replace_atomically
from pinproxy.hostnames import normalize_host
from pinproxy.learned import LearnedHost, forget, read_learned
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Mode
from pinproxy.tools.render import PinLine, RuleText, render_pinset

__all__ = ["register"]

_VARIABLE = "PINPROXY_LEARN_FILE"  # the same variable `pinproxy run` reads


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "learned", help="list, forget or promote the pins learned on first use",
        description="Manage the learn file of 'mode: learn' and 'unpinned: learn' (trust on "
                    "first use), as 'pinproxy run --learn-file' writes it.")
    actions = parser.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print each learned host, when, and its pins")
    listing.set_defaults(command=list_learned)
    forgetting = actions.add_parser(
        "forget", help="remove a host, so that its next verified chain is learned again",
        description="Remove HOST from the learn file. A running proxy forgets it at its next "
                    "SIGHUP (or restart); until then it keeps enforcing the old pins.")
    forgetting.add_argument("host", metavar="HOST")
    forgetting.set_defaults(command=forget_host)
    promoting = actions.add_parser(
        "promote", help="write the learned pins as an ordinary pinset",
        description="Write one rule per learned host with its learned pins: a pinset "
                    "'pinproxy check' and 'pinproxy run --pinset' read.")
    promoting.add_argument("-o", "--output", metavar="FILE", required=True,
                           help="the pinset to write ('-': standard output)")
    promoting.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    promoting.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.ENFORCE.value,
                           help="the written pinset's mode (default: %(default)s)")
    promoting.set_defaults(command=promote)
    for sub in (listing, forgetting, promoting):
        sub.add_argument("--learn-file", metavar="PATH",
                         help=f"the learn file (default: ${_VARIABLE})")


def _learn_file(args: argparse.Namespace) -> str:
    path: str | None = args.learn_file or os.environ.get(_VARIABLE) or None
    if path is None:
        raise PinproxyError(f"which learn file? give --learn-file PATH (or {_VARIABLE})")
    return path


def _existing(path: str) -> dict[str, LearnedHost]:
    if not os.path.exists(path):
        raise PinproxyError(f"{path}: no such learn file")
    return read_learned(path)


def list_learned(args: argparse.Namespace) -> int:
    hosts = _existing(_learn_file(args))
    for host in sorted(hosts):
        entry = hosts[host]
        print(f"{host}  {_when(entry)}  {' '.join(str(pin) for pin in entry.pins)}")
    return 0


def forget_host(args: argparse.Namespace) -> int:
    path = _learn_file(args)
    host = normalize_host(args.host)
    _existing(path)
    try:
        removed = forget(path, host)
    except OSError as e:
        raise PinproxyError(f"{path}: {e.strerror or e}") from None
    if not removed:
        raise PinproxyError(f"{path}: {quote(host)} is not learned")
    print(f"pinproxy: forgot {host}; a running proxy forgets it at SIGHUP (or restart), then "
          "learns its next verified chain", file=sys.stderr)
    return 0


def promote(args: argparse.Namespace) -> int:
    path = _learn_file(args)
    hosts = _existing(path)
    rules = [RuleText(host, tuple(PinLine(pin, "leaf" if i == 0 else "issuer")
                                  for i, pin in enumerate(hosts[host].pins)),
                      notes=(f"learned on first use on {_when(hosts[host])}",))
             for host in sorted(hosts)]
    header = [f"Promoted by 'pinproxy learned promote' from {path}.",
              "Each rule holds the pins learned on first use (leaf, then issuer): add a backup",
              "pin to each before relying on it ('pinproxy backup-key')."]
    text = render_pinset(rules, Mode(args.mode), header=header)
    output: str = args.output
    parse_pinset(text, output)  # what we write must load; a bug here is ours
    if output == "-":
        sys.stdout.write(text)
        return 0
    write = replace_atomically if args.force else create_exclusively
    try:
        write(Path(output), text.encode(), 0o644)
    except FileExistsError:
        raise PinproxyError(f"{output}: already exists; use --force to overwrite it") from None
    except OSError as e:
        raise PinproxyError(f"{output}: {e.strerror or e}") from None
    print(f"pinproxy: wrote {output}: {len(rules)} host rule{'' if len(rules) == 1 else 's'}, "
          f"mode {args.mode}", file=sys.stderr)
    return 0


def _when(entry: LearnedHost) -> str:
    return entry.learned_at.astimezone(dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
