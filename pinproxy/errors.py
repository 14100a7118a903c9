"""One base error for everything a user can get wrong, so callers catch one class."""

from __future__ import annotations

__all__ = ["FormatError", "HostnameError", "PinError", "PinproxyError", "PinsetError"]


class PinproxyError(Exception):
    """A user error: the message is one line, location first, and says what to fix."""


class PinError(PinproxyError, ValueError):
    """A pin that cannot be parsed or computed."""


class HostnameError(PinproxyError, ValueError):
    """A host name or host pattern that is not valid."""


class FormatError(PinproxyError):
    """An app-format file (Android, iOS, OkHttp, HPKP) that cannot be read, or that its own
    platform would reject."""


class PinsetError(PinproxyError):
    """A pinset file with problems; `problems` holds every `path:line: message`, in file order."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))
