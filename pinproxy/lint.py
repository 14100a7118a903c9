"""Lint findings for a pinset: what `pinproxy check` reports beyond load errors (being written).

A `Finding` is one line of `check` output; errors make `check` exit 2, warnings only with
`--strict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pinproxy.pinset import Location

__all__ = ["Finding", "Severity"]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where, how bad, a stable code (`missing-backup-pin`) and the message."""

    severity: Severity
    code: str
    message: str
    location: Location | None = None  # None: about the pinset as a whole
    host: str | None = None

    def __str__(self) -> str:
        where = str(self.location) if self.location else "-"
        return f"{where}: {self.severity.value}: {self.message} [{self.code}]"
