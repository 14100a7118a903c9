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

from pinproxy.errors import PinproxyError

__all__ = ["DEFAULT_PINSET", "RunConfig"]

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
    workers: int = 1
    verbose: bool = False

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


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "bool": (bool,), "str | None": (str, type(None)),
}


def _check_type(name: str, value: Any, annotation: object) -> None:
    expected = _TYPES[str(annotation)]
    # bool is an int in Python: a JSON true must not pass as a port
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        raise PinproxyError(f"run configuration setting {name!r} has the wrong type: {value!r}")
