"""One immutable run configuration for `pinproxy run`, built and validated once.

The supervisor of `--workers N` hands each worker this whole value (serialized, through the
worker's standard input), never a command line re-spelled flag by flag: a setting added here
reaches every worker without anyone remembering to forward it, and a secret in it never shows
in `ps`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Self

from pinproxy.errors import PinproxyError, quote, shorten

__all__ = ["DEFAULT_PINSET", "RunConfig", "host_and_port"]

DEFAULT_PINSET = "config/pins.yaml"


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Every setting of a running proxy; the same value in the supervisor and each worker."""

    pinset: str = DEFAULT_PINSET
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    confdir: str = "~/.mitmproxy"
    upstream_ca: str | None = None  # replaces the default upstream trust bundle
    report_log: str | None = None
    report_queue: int = 1000  # violation reports waiting for the report_uri collector
    workers: int = 1
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "text"  # text | json
    admin_listen: str = "127.0.0.1:9901"  # HOST:PORT of /healthz, /readyz, /metrics, /pinset; "off"
    proxy_auth: str | None = None  # "user:pass" or "@htpasswd": clients must authenticate
    allow_unauthenticated: bool = False  # listen beyond loopback without --proxy-auth
    drain_timeout: float = 10.0  # seconds in-flight requests get after SIGTERM
    pinset_url: str | None = None  # https URL of a signed pinset (instead of --pinset)
    pinset_pubkey: str | None = None  # minisign public key "RW..." or "@file"
    pinset_refresh: float = 300.0  # seconds between fetches of pinset_url (+-10 % jitter)
    pinset_cache: str | None = None  # directory keeping the last accepted signed pinset
    on_stale: str = "keep"  # keep | report | block: a signed pinset past its valid_until
    learn_file: str | None = None  # trust on first use: the learned pins (pinproxy.learned)
    no_watch: bool = False  # reload only on SIGHUP, not when the pinset's files change
    upstream_timeout: float = 10.0  # seconds for an upstream's TCP connect, and its TLS handshake
    request_head_timeout: float = 30.0  # seconds from accept (or CONNECT) to a request head
    idle_timeout: int = 300  # seconds a client connection may see no byte either way
    max_connections: int = 4096  # open client connections per process; more are refused

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """The configuration `to_json` wrote; anything else is a `PinproxyError`."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise PinproxyError(f"run configuration is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise PinproxyError("run configuration is not a JSON object")
        names = {field.name for field in dataclasses.fields(cls)}
        if set(data) != names:
            raise PinproxyError("run configuration has the wrong settings: "
                                f"{', '.join(sorted(set(data) ^ names))}")
        for field in dataclasses.fields(cls):
            _check_type(field.name, data[field.name], field.type)
        return cls(**data)

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """The admin listener's (host, port), or None when `admin_listen` is "off"."""
        if self.admin_listen == "off":
            return None
        return host_and_port(self.admin_listen)


def host_and_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`, port 0-65535; anything else is a `PinproxyError`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address: which colon ends it is ambiguous
            host = ""
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise PinproxyError(f"{quote(text)} is not HOST:PORT")
    return host, int(port_text)


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "bool": (bool,), "float": (float, int),
    "str | None": (str, type(None)),
}


def _check_type(name: str, value: Any, annotation: object) -> None:
    expected = _TYPES[str(annotation)]
    # bool is an int in Python: a JSON true must not pass as a port
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        raise PinproxyError(f"run configuration setting {name!r} has the wrong type: "
                            f"{shorten(repr(value))}")
