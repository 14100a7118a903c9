"""`pinproxy pin TARGET...`: the pins of certificate, key and CSR files and of live hosts.

A live host shows two chains: the one the server sent, in order, and the one OpenSSL built and
verified (trust anchor included even when not sent). Pins match only the verified chain, so a
certificate the server sent that is not on the verified path is marked: it is what a
CVE-2016-2402 decoy looks like. Exit 0 when all is well, 1 when a live chain does not verify,
2 for a bad or unreadable file or an unreachable host (one line each on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from pinproxy.commands._args import host_port
from pinproxy.commands._probe_options import add_probe_options, progress
from pinproxy.errors import PinError, PinproxyError
from pinproxy.files import read_regular
from pinproxy.hostnames import normalize_host
from pinproxy.pins import CertificatePins, KeyMaterial, Pin, read_pem_or_der
from pinproxy.tools.probe import ProbeResult, probe_many, target_text
from pinproxy.tools.render import PinLine, RuleText, printable, render_rules
from pinproxy.tools.suggest import BACKUP_NOTE, role, suggested_rule

EXIT_UNVERIFIED = 1
EXIT_ERROR = 2
PLACEHOLDER_HOST = "replace-me.example"
_FILE_SUFFIXES = frozenset({".pem", ".der", ".crt", ".cer", ".cert", ".key", ".pub", ".csr",
                            ".req"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "pin", help="print the pins of certificate, key or CSR files and live hosts",
        description="Print the sha256/ (SPKI) pins of files and live hosts. A file may hold "
                    "certificates (PEM bundle or DER), public keys, private keys or CSRs. A "
                    "live host shows the chain it sent and the chain that verified.")
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="a PEM/DER certificate, key or CSR file, or HOST[:PORT] "
                             "(port 443 by default)")
    parser.add_argument("--format", choices=("text", "yaml", "json"), default="text",
                        help="text: one line per certificate; yaml: a ready 'hosts:' rule; "
                             "json: one record per certificate (default: %(default)s)")
    parser.add_argument("--servername", metavar="NAME",
                        help="SNI and name to verify, instead of each live HOST")
    add_probe_options(parser)
    parser.set_defaults(command=pin)


@dataclass(frozen=True, slots=True)
class FilePins:
    target: str
    items: tuple[KeyMaterial, ...]


@dataclass(frozen=True, slots=True)
class HostPins:
    target: str  # host:port
    heading: str  # host:port, and where it was reached if a --connect-to applied
    host: str
    port: int
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class _Host:
    host: str
    port: int


Shown = FilePins | HostPins


def pin(args: argparse.Namespace) -> int:
    parsed: list[str | _Host | PinproxyError] = [_classify(t) for t in args.targets]
    hosts = [(p.host, p.port) for p in parsed if isinstance(p, _Host)]
    probed = iter(probe_many(hosts, servername=args.servername, ca_file=args.upstream_ca,
                             timeout=args.timeout, connect_to=args.connect_to,
                             on_start=progress(args.connect_to)))
    shown: list[Shown] = []
    code = 0
    for item in parsed:
        outcome: Shown | PinproxyError
        if isinstance(item, _Host):
            result = next(probed)
            outcome = result if isinstance(result, PinproxyError) else HostPins(
                target_text(item.host, item.port),
                target_text(item.host, item.port, args.connect_to), item.host, item.port, result)
        elif isinstance(item, str):
            try:
                outcome = FilePins(item, tuple(read_key_file(item)))
            except PinproxyError as e:
                outcome = e
        else:
            outcome = item
        if isinstance(outcome, PinproxyError):
            print(f"pinproxy: {outcome}", file=sys.stderr)
            code = EXIT_ERROR
            continue
        if isinstance(outcome, HostPins) and outcome.result.error:
            print(f"pinproxy: {outcome.target}: the chain does not verify "
                  f"({outcome.result.error}); showing the certificates the server sent",
                  file=sys.stderr)
            code = max(code, EXIT_UNVERIFIED)
        shown.append(outcome)
    render = {"text": render_text, "yaml": render_yaml, "json": render_json}[args.format]
    if shown:
        sys.stdout.write(render(shown))
    return code


def _classify(target: str) -> str | _Host | PinproxyError:
    """A file when one exists; else HOST[:PORT]; a missing file that looks like one is an error."""
    if os.path.exists(target):
        return target
    if os.sep in target or os.path.splitext(target)[1].lower() in _FILE_SUFFIXES:
        return PinproxyError(f"{target}: no such file")
    try:
        host, port = host_port(target)
        return _Host(normalize_host(host), port)
    except PinproxyError as e:
        return e


# -- text --------------------------------------------------------------------------------------

def render_text(shown: Sequence[Shown]) -> str:
    return "\n".join(_text(item) for item in shown)


def _text(item: Shown) -> str:
    if isinstance(item, FilePins):
        lines = [f"# {item.target}"]
        lines += [f"{n}  {key.spki}  {printable(key.label)}" for n, key in enumerate(item.items)]
        return "\n".join(lines) + "\n"
    result = item.result
    lines = [f"# {item.heading}", "# served chain: as the server sent it, 0 = leaf"]
    for depth, cert in enumerate(result.served):
        decoy = result.verified and not result.in_verified_path(cert)
        mark = "  [NOT in the verified path: pins never match it]" if decoy else ""
        lines.append(f"{depth}  {cert.spki}  {printable(cert.subject)}{mark}")
    if result.verified:
        lines.append("# verified chain: as OpenSSL built it, 0 = leaf, last = trust anchor")
        for depth, cert in enumerate(result.verified):
            mark = "" if result.was_sent(cert) else "  [not sent: from the trust store]"
            lines.append(f"{depth}  {cert.spki}  {printable(cert.subject)}{mark}")
    else:
        lines.append("# verified chain: none, the chain does not verify")
    return "\n".join(lines) + "\n"


# -- yaml --------------------------------------------------------------------------------------

def render_yaml(shown: Sequence[Shown]) -> str:
    """A `hosts:` list to paste into a pinset: one rule per target that gave pins."""
    parts: list[str] = []
    rules = 0
    for item in shown:
        if isinstance(item, HostPins) and not item.result.verified:
            parts.append(f"  # {item.target}: no rule: the chain does not verify "
                         f"({printable(item.result.error or '')})\n")
            continue
        rule = _file_rule(item) if isinstance(item, FilePins) else suggested_rule(
            item.host, item.result.verified, item.port)
        parts.append(render_rules([rule]))
        rules += 1
    return ("hosts:\n" if rules else "hosts: []\n") + "".join(parts)


def _file_rule(item: FilePins) -> RuleText:
    seen: dict[str, PinLine] = {}
    for key in item.items:
        seen.setdefault(str(key.spki), PinLine(key.spki, printable(key.label)))
    note = (f"{PLACEHOLDER_HOST}: replace with the host these keys serve "
            f"(pins of {printable(item.target)})")
    return RuleText(host=PLACEHOLDER_HOST, pins=tuple(seen.values()), notes=(note, BACKUP_NOTE))


# -- json --------------------------------------------------------------------------------------

def render_json(shown: Sequence[Shown]) -> str:
    """One record per certificate or key, in target order: the same keys in every record."""
    records: list[dict[str, Any]] = []
    for item in shown:
        if isinstance(item, FilePins):
            records += [_record(item.target, "file", n, key.label, key.spki, key.certificate,
                                None, None) for n, key in enumerate(item.items)]
            continue
        result = item.result
        roles = {cert.der: role(d, len(result.verified)) for d, cert in enumerate(result.verified)}
        off_path = "not in verified path" if result.verified else "unverified"
        records += [_record(item.target, "served", d, roles.get(cert.der, off_path), cert.spki,
                            cert, result.in_verified_path(cert), True)
                    for d, cert in enumerate(result.served)]
        records += [_record(item.target, "verified", d, roles[cert.der], cert.spki, cert, True,
                            result.was_sent(cert))
                    for d, cert in enumerate(result.verified)]
    return json.dumps(records, indent=2) + "\n"


def _record(target: str, chain: str, depth: int, label: str, spki: Pin,
            cert: CertificatePins | None, in_verified_path: bool | None, sent: bool | None,
            ) -> dict[str, Any]:
    return {
        "target": target,
        "chain": chain,
        "depth": depth,
        "label": label,
        "subject": cert.subject if cert else None,
        "spki": str(spki),
        "certificate": str(cert.certificate) if cert else None,
        "in_verified_path": in_verified_path,
        "sent": sent,
        "not_after": _not_after(cert) if cert else None,
    }


def _not_after(cert: CertificatePins) -> str:
    expiry = x509.load_der_x509_certificate(cert.der).not_valid_after_utc
    return expiry.isoformat().replace("+00:00", "Z")


def read_key_file(path: str) -> list[KeyMaterial]:
    """Every certificate, key and CSR of a file; `PinError` names the file."""
    try:
        data = read_regular(path)
    except OSError as e:
        raise PinError(f"{path}: {e.strerror or e}") from None
    return read_pem_or_der(data, path)
