"""Where the proxy's log goes: one handler on the root logger, writing to stderr.

Every record passes through it, pinproxy's and mitmproxy's alike, so there is one stream in one
format: `text` (the line a person reads) or `json` (one object per line, for Loki, ELK or Cloud
Logging). JSON records have stable fields: `time` (ISO 8601, UTC), `level`, `event`
(`decision` for the canonical line of each checked connection, `log` for anything else),
`message`, and whatever the record carries as `extra` (for decisions: `action`, `reason`,
`host`, `port`, `rule`, `mode`, `observed`, `detail`). Pure: no mitmproxy here.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from pinproxy.errors import shorten

__all__ = ["FORMATS", "JsonLines", "configure"]

FORMATS = ("text", "json")


class JsonLines(JsonFormatter):
    """One JSON object per record, with the field names above."""

    def __init__(self) -> None:
        super().__init__("{levelname}{message}", style="{",
                         rename_fields={"levelname": "level"})

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["time"] = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
            timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()
        log_data.setdefault("event", "log")


class _Handler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again replaces it instead of adding a second one."""


MESSAGE_LIMIT = 4096  # characters of one log message


def _cut_long_message(record: logging.LogRecord) -> bool:
    """A client controls what some messages echo (mitmproxy logs a bad request line whole, a
    megabyte of it): no message is longer than `MESSAGE_LIMIT` characters, marked when cut."""
    message = record.getMessage()
    if len(message) > MESSAGE_LIMIT:
        record.msg, record.args = shorten(message, MESSAGE_LIMIT), None
    return True


def configure(level: str, format: str = "text", text: logging.Formatter | None = None,
              stream: TextIO | None = None) -> logging.Handler:
    """Send every record at `level` or above to `stream` (stderr) in `format`; `text` is the
    formatter of text lines (the proxy passes mitmproxy's, so lines look as they always did)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Handler):
            root.removeHandler(handler)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(_cut_long_message)
    if format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(text or logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
