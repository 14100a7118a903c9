"""`pinproxy init HOST[:PORT]...`: write a starter pinset from the chains live hosts serve.

Each host gets a rule pinning its leaf and issuing intermediate(s), labelled by subject, and a
note to add a backup pin. Nothing is written unless every host verifies: a pinset built from a
chain that does not verify would pin whatever answered. The default mode is `report`: a pinset
without backup pins should report before it refuses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from pinproxy.commands._args import host_port
from pinproxy.commands._probe_options import add_probe_options, progress
from pinproxy.errors import PinproxyError, quote
from pinproxy.files import create_exclusively, replace_atomically
from pinproxy.hostnames import normalize_host
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Mode
from pinproxy.tools.probe import probe_many, target_text
from pinproxy.tools.render import RuleText, render_pinset
from pinproxy.tools.suggest import suggested_rule

EXIT_UNVERIFIED = 1
EXIT_ERROR = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init", help="write a starter pinset from live hosts",
        description="Connect to each host, verify its chain, and write a pinset pinning its "
                    "leaf and intermediate keys. Add a backup pin to every rule before "
                    "enforcing.")
    parser.add_argument("hosts", nargs="+", metavar="HOST[:PORT]",
                        help="a host to pin (port 443 by default; the rule covers every port)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the pinset here instead of standard output")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output")
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.REPORT.value,
                        help="the pinset's mode (default: %(default)s, until backups are added)")
    add_probe_options(parser)
    parser.set_defaults(command=init)


def init(args: argparse.Namespace) -> int:
    targets = _targets(args.hosts)
    output: str | None = args.output
    if output and not args.force and Path(output).exists():
        raise PinproxyError(f"{output}: already exists; use --force to overwrite it")
    if output and not Path(output).parent.is_dir():  # say so before probing twenty hosts
        raise PinproxyError(f"{output}: no such directory: {Path(output).parent}")
    results = probe_many(targets, ca_file=args.upstream_ca, timeout=args.timeout,
                         connect_to=args.connect_to, on_start=progress(args.connect_to))
    code = 0
    rules: list[RuleText] = []
    for (host, port), result in zip(targets, results, strict=True):
        where = target_text(host, port, args.connect_to)
        if isinstance(result, PinproxyError):
            print(f"pinproxy: {result}", file=sys.stderr)
            code = EXIT_ERROR
        elif not result.verified:
            print(f"pinproxy: {where}: the chain does not verify ({result.error}); "
                  "not pinning it", file=sys.stderr)
            code = max(code, EXIT_UNVERIFIED)
        else:
            rules.append(suggested_rule(host, result.verified, port))
    if code:
        print(f"pinproxy: nothing written: {len(targets) - len(rules)} of {len(targets)} hosts "
              "failed", file=sys.stderr)
        return code
    text = render_pinset(rules, Mode(args.mode), header=_header())
    parse_pinset(text, output or "<init>")  # what we write must load; a bug here is ours
    if output is None:
        sys.stdout.write(text)
        return 0
    _write(Path(output), text, args.force)
    count = f"{len(rules)} host rule{'' if len(rules) == 1 else 's'}"
    print(f"pinproxy: wrote {output}: {count}, mode {args.mode}; "
          "add a backup pin to each rule, then run 'pinproxy check'", file=sys.stderr)
    return 0


def _targets(texts: list[str]) -> list[tuple[str, int]]:
    targets: dict[str, tuple[str, int]] = {}
    for text in texts:
        host, port = host_port(text)
        host = normalize_host(host)
        if host in targets:
            raise PinproxyError(f"{quote(text)}: host {host} is given twice; a rule covers "
                                "every port of its host")
        targets[host] = (host, port)
    return list(targets.values())


def _header() -> list[str]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return [
        f"Starter pinset written by 'pinproxy init' on {today} from the chains the hosts",
        "served. Each rule pins the leaf key and the issuing intermediate key(s).",
        "Before enforcing: add a backup pin to every rule ('pinproxy backup-key'), run",
        "'pinproxy check --live' on this file, then set 'mode: enforce'.",
    ]


def _write(path: Path, text: str, force: bool) -> None:
    """A new pinset never clobbers unless --force; a replaced one is swapped in whole, so a
    proxy watching or reloading the file never reads half of it."""
    write = replace_atomically if force else create_exclusively
    try:
        write(path, text.encode(), 0o644)
    except FileExistsError:
        raise PinproxyError(f"{path}: already exists; use --force to overwrite it") from None
    except OSError as e:
        raise PinproxyError(f"{path}: {e.strerror or e}") from None
