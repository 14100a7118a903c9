"""Pins in the formats app and web teams already have: import them into a pinset, export one.

One pinset is the source of truth for the proxy and for the apps. Each format module is pure
(bytes or text in, entries out; a `Pinset` in, text out) and knows nothing of files or argparse;
this module picks the module, detects a format from content, and renders the pinset YAML.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pinproxy.errors import FormatError, quote
from pinproxy.formats import android, envoy, hpkp, ios, okhttp
from pinproxy.formats.model import (
    Converted,
    Notice,
    Parsed,
    merge,
    rule_texts,
)
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location, Pinset
from pinproxy.tools.render import render_pinset

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "Converted",
    "FormatError",
    "Notice",
    "detect_format",
    "export_pinset",
    "import_pins",
]

IMPORT_FORMATS = {
    "android": "Android network security config",
    "ios": "iOS Info.plist NSPinnedDomains",
    "hpkp": "HPKP Public-Key-Pins headers",
    "okhttp": "OkHttp CertificatePinner pins",
}
EXPORT_FORMATS = ("android", "ios", "okhttp", "envoy", "hpkp")


def detect_format(data: bytes) -> str | None:
    """The import format a file's content shows, or None when it shows none."""
    head = data.lstrip()[:4096].lower()
    if data.startswith(b"bplist") or (head.startswith(b"<") and b"<plist" in head):
        return "ios"
    if head.startswith(b"<") and b"<network-security-config" in head:
        return "android"
    if b"public-key-pins" in data.lower() or head.startswith(b"pin-sha256"):
        return "hpkp"
    if b"sha256/" in data or b"sha1/" in data:
        return "okhttp"
    return None


def import_pins(data: bytes, source: str, fmt: str | None = None, host: str | None = None,
                now: datetime | None = None) -> Converted:
    """Pinset YAML for the pins of an app file, and every notice about what did not map.

    `fmt` None detects the format; `host` names the host of HPKP headers; `now` (UTC) is when
    HPKP's max-age starts counting.
    """
    fmt = fmt or detect_format(data)
    if fmt is None:
        raise FormatError(f"{source}: cannot tell the format from the content; give --format "
                          f"{'|'.join(IMPORT_FORMATS)}")
    if fmt not in IMPORT_FORMATS:
        raise FormatError(f"unknown import format {quote(fmt)}: choose {', '.join(IMPORT_FORMATS)}")
    if host is not None and fmt != "hpkp":
        raise FormatError(f"--host names the host of HPKP headers, but {source} is read as "
                          f"{IMPORT_FORMATS[fmt]}")
    parsed = _parse(data, source, fmt, host, now or datetime.now(UTC))
    entries, merge_notices = merge(parsed.entries, source)
    notices = [*parsed.notices, *merge_notices]
    if not entries:
        notices.append(Notice(Location(source),
                              f"found no pins to import (read as {IMPORT_FORMATS[fmt]})"))
    text = render_pinset(rule_texts(entries), header=(
        f"Imported by `pinproxy import` from {source} ({IMPORT_FORMATS[fmt]}).",
        "Review it, then check it with: pinproxy check FILE"))
    parse_pinset(text, f"{source} (imported)")  # the output must load; a failure is our bug
    return Converted(text, _in_file_order(notices))


def _parse(data: bytes, source: str, fmt: str, host: str | None, now: datetime) -> Parsed:
    if fmt == "android":
        return android.parse(data, source)
    if fmt == "ios":
        return ios.parse(data, source)
    text = _text(data, source)
    return hpkp.parse(text, source, host, now) if fmt == "hpkp" else okhttp.parse(text, source)


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FormatError(f"{source}: not UTF-8 text (byte {e.start})") from None


def export_pinset(pinset: Pinset, fmt: str, now: datetime | None = None) -> Converted:
    """A pinset in an app format, and every notice about what that format cannot express."""
    result = _render(pinset, fmt, now or datetime.now(UTC))
    return Converted(result.text, _in_file_order(result.notices))


def _render(pinset: Pinset, fmt: str, now: datetime) -> Converted:
    match fmt:
        case "android":
            return android.render(pinset)
        case "ios":
            return ios.render(pinset)
        case "okhttp":
            return okhttp.render(pinset)
        case "envoy":
            return envoy.render(pinset)
        case "hpkp":
            return hpkp.render(pinset, now)
    raise FormatError(f"unknown export format {quote(fmt)}: choose {', '.join(EXPORT_FORMATS)}")


def _in_file_order(notices: Iterable[Notice]) -> tuple[Notice, ...]:
    """Notices by line (file-wide ones first), as a person reads the file."""
    return tuple(sorted(notices, key=lambda notice: notice.location.line or 0))
