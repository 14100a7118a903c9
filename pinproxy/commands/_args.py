"""Argument types shared by several subcommands; argparse turns their errors into usage errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pinproxy.errors import PinproxyError, quote

__all__ = ["ConnectTo", "connect_to", "host_port", "port"]


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a port number (0-65535)")
    return value


def host_port(target: str, default_port: int = 443) -> tuple[str, int]:
    """Split `HOST[:PORT]` or `[IPv6][:PORT]`; raise `PinproxyError` when it is neither."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest.removeprefix(":") or str(default_port)
    elif target.count(":") == 1:
        host, _, port_text = target.partition(":")
    else:
        host, port_text = target, str(default_port)
    if not host or not _is_port(port_text):
        raise PinproxyError(f"{quote(target)} is not HOST[:PORT]")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class ConnectTo:
    """curl's `--connect-to HOST:PORT:ADDR:PORT`: reach host:port at addr:addr_port instead.

    An empty HOST or PORT matches any; an empty ADDR or PORT keeps the original.
    """

    host: str
    port: int | None
    address: str
    address_port: int | None

    def applies(self, host: str, port: int) -> bool:
        return (not self.host or self.host.lower() == host.lower()) and (
            self.port is None or self.port == port)

    def target(self, host: str, port: int) -> tuple[str, int]:
        return (self.address or host, self.address_port or port)


def connect_to(text: str) -> ConnectTo:
    """Parse `HOST:PORT:ADDR:PORT` (IPv6 addresses in brackets), as curl does."""
    parts = _split_colons(text)
    if len(parts) != 4 or not all(p == "" or _is_port(p) for p in (parts[1], parts[3])):
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not HOST:PORT:ADDR:PORT (ports 1-65535; empty means any/same)")
    host, port_text, address, address_port = parts
    return ConnectTo(host.strip("[]"), int(port_text) if port_text else None,
                     address.strip("[]"), int(address_port) if address_port else None)


def _is_port(text: str) -> bool:
    """1-65535 in ASCII digits (`str.isdigit` also accepts '²', which `int` refuses)."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def _split_colons(text: str) -> list[str]:
    parts, current, depth = [], "", 0
    for char in text:
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current += char
    parts.append(current)
    return parts
