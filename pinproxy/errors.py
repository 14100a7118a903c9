"""One base error for everything a user can get wrong, so callers catch one class."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pinset imports pins, which imports this module
    from pinproxy.pinset import Location

__all__ = ["QUOTE_LIMIT", "FormatError", "HostnameError", "PinError", "PinproxyError",
           "PinsetError", "Problem", "quote", "shorten"]

QUOTE_LIMIT = 300  # characters echoed: more than any valid value (a 253-character host name)


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as a message shows it bare: cut to `limit` characters, marked when cut.

    A value the user (or a client of the proxy) controls can be any size: a 50 MB host name
    must not become a 50 MB error line, log line or 502 page.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut: {len(text)} characters]"


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as a message quotes it: `repr` of at most `limit` characters, marked when cut
    (`'abc'...[cut: 5000 characters]`), so escapes keep the message on one line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...[cut: {len(text)} characters]"


class PinproxyError(Exception):
    """A user error: the message is one line, location first, and says what to fix."""


class PinError(PinproxyError, ValueError):
    """A pin that cannot be parsed or computed."""


class HostnameError(PinproxyError, ValueError):
    """A host name or host pattern that is not valid."""


class FormatError(PinproxyError):
    """An app-format file (Android, iOS, OkHttp, HPKP) that cannot be read, or that its own
    platform would reject."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, kept structured so callers never parse text back.

    `location.line` is None for a problem with the file as a whole (it cannot be read).
    `str()` is the one rendering users see: `path:line: message`, or `path: message`.
    """

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PinsetError(PinproxyError):
    """A pinset file with problems; `problems` holds every `Problem`, in file order, and
    `str()` is their renderings, one a line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))
