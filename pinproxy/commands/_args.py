"""Argument types shared by several subcommands; argparse turns their errors into usage errors."""

from __future__ import annotations

import argparse

from pinproxy.errors import PinproxyError

__all__ = ["host_port", "port"]


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
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
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PinproxyError(f"{target!r} is not HOST[:PORT]")
    return host, int(port_text)
