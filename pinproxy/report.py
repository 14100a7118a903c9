"""Every way a `Decision` is shown: the log line, the client's 502 page, the JSON report.

One place, so the operator reads the same facts (host, reason, rule file:line, pins of the
verified chain by position) in the log, in the client's error and in the report log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pinproxy.errors import shorten
from pinproxy.files import PartialWriteError, write_all
from pinproxy.pins import CertificatePins, PinKind
from pinproxy.pinset import HostRule, Mode, OnExpiry, Pinset
from pinproxy.policy import Decision, Reason

__all__ = [
    "ReportLog",
    "decision_fields",
    "expiry_note",
    "log_line",
    "pinset_summary",
    "refusal_page",
    "violation_record",
]

_BARE = re.compile(r"[\w.:/*\[\]-]+")
_EXPLANATIONS = {
    Reason.PIN_MISMATCH: "no certificate of the verified chain has a pinned key",
    Reason.NOT_PINNED: "the pinset blocks hosts that no rule covers (unpinned: block)",
    Reason.PLAINTEXT: "plain http:// to a pinned host cannot be checked; use https://",
    Reason.MISDIRECTED: "the request names a pinned host its connection was not checked for;"
    " retry on a new connection",
    Reason.CHAIN_NOT_VERIFIED: "the server's certificate chain did not verify",
    Reason.INVALID_HOST: "the host name is not valid",
    Reason.INTERNAL_ERROR: "the pin check failed with an error, so the connection was denied",
    Reason.UPSTREAM_TIMEOUT: "the upstream did not complete its connection and TLS handshake"
    " in time",
    Reason.PIN_MATCHED: "a pinned key is in the verified chain",
    Reason.FIRST_USE: "first verified chain for a host that learns its pins: they are learned",
    Reason.LEARN_FULL: "the learn file holds as many hosts as it may; a new host is not learned",
    Reason.RULE_EXPIRED: "the host's rule is past its 'expires' date, and its 'on_expiry' "
    "reports or refuses the connections it covers; renew the rule (new 'expires')",
}


def _rule_location(decision: Decision) -> str:
    return str(decision.rule.location) if decision.rule else "-"


def _observed(chain: Sequence[CertificatePins]) -> str:
    return ",".join(f"{depth}:{cert.spki}" for depth, cert in enumerate(chain)) or "-"


def _value(text: str) -> str:
    """A log field value: bare when safe, else JSON-quoted, so one record stays one line."""
    return text if _BARE.fullmatch(text) else json.dumps(text)


def decision_fields(decision: Decision, port: int | None = None) -> dict[str, str | int | None]:
    """The fields of a decision's canonical log record (JSON log) and line (`log_line`)."""
    fields: dict[str, str | int | None] = {
        "action": decision.action.value,
        "host": shorten(decision.host) or "-",  # a client's invalid host can be any size
        "port": port,
        "reason": decision.reason.value,
        "rule": _rule_location(decision),
        "mode": decision.rule.mode.value if decision.rule else "-",
        "observed": _observed(decision.chain),
    }
    if decision.detail:
        fields["detail"] = decision.detail
    return fields


def log_line(decision: Decision, port: int | None = None,
             fields: dict[str, str | int | None] | None = None) -> str:
    """One stable `key=value` line: the text form of `decision_fields` (passed when made)."""
    fields = fields if fields is not None else decision_fields(decision, port)
    return "pinproxy " + " ".join(f"{key}={_text(key, value)}" for key, value in fields.items())


def _text(key: str, value: str | int | None) -> str:
    if value is None:
        return "-"
    if key == "detail":
        return json.dumps(value)
    return _value(str(value)) if key in ("host", "rule") else str(value)


def expiry_note(rule: HostRule) -> str:
    """What the once-per-rule "expired" warning adds for the rule's `on_expiry`."""
    if rule.on_expiry is OnExpiry.ALLOW:
        return " (on_expiry: allow)"
    done = ("refused" if rule.on_expiry is OnExpiry.BLOCK and rule.mode is Mode.ENFORCE
            else "reported")
    return f" (on_expiry: {rule.on_expiry}): every connection it covers is {done}"


def refusal_page(decision: Decision) -> str:
    """The body of the 502 a client gets: enough to fix the pinset from the error alone."""
    lines = [
        f"pinproxy refused the connection to {shorten(decision.host) or '(no host)'}",
        f"reason: {decision.reason.value}: {_EXPLANATIONS[decision.reason]}",
    ]
    if decision.detail:
        lines.append(f"detail: {decision.detail}")
    if decision.rule is not None:
        lines.append(f"rule: {decision.rule.host} at {decision.rule.location}")
        lines.append("pinned:")
        lines.extend(f"  {pin}" for pin in sorted(map(str, decision.rule.pins)))
    if decision.chain:
        lines.append("verified chain (0 = leaf):")
        for depth, cert in enumerate(decision.chain):
            lines.append(f"  {depth}: {cert.spki}  {cert.subject}")
            lines.append(f"     {cert.certificate}")
    return "\n".join(lines) + "\n"


def violation_record(
    decision: Decision,
    port: int | None,
    served_chain: Sequence[CertificatePins],
    now: dt.datetime,
) -> dict[str, Any]:
    """An RFC 7469 section 3 report, plus `mode`, `action`, `reason` and `rule`: the one record
    of a violation, written to the report log and POSTed as is to a `report_uri` collector.
    Only what the decision has (host, port, chains, rule): never request data."""
    rule = decision.rule
    expiry = (
        dt.datetime.combine(rule.expires, dt.time(23, 59, 59), dt.UTC).isoformat()
        if rule is not None and rule.expires is not None else None
    )
    return {
        "date-time": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "hostname": shorten(decision.host),
        "port": port,
        "effective-expiration-date": expiry,
        "include-subdomains": rule.include_subdomains if rule else False,
        "noted-hostname": rule.host if rule else None,
        "served-certificate-chain": [cert.pem for cert in served_chain],
        "validated-certificate-chain": [cert.pem for cert in decision.chain],
        "known-pins": sorted(pin.hpkp if pin.kind is PinKind.SPKI else str(pin)
                             for pin in (rule.pins if rule else ())),
        "mode": rule.mode.value if rule else None,
        "action": decision.action.value,
        "reason": decision.reason.value,
        "rule": str(rule.location) if rule else None,
    }


def pinset_summary(pinset: Pinset, path: str | None, sha256: str | None,
                   loaded_at: dt.datetime | None) -> dict[str, Any]:
    """The pinset in force as the admin endpoint's /pinset shows it: what an operator needs to
    tell which file, which version of it, and which rules this process enforces."""
    return {
        "source": path if path is not None else pinset.source,
        "sha256": sha256,
        "loaded_at": (loaded_at.astimezone(dt.UTC).isoformat(timespec="seconds")
                      if loaded_at is not None else None),
        "mode": pinset.mode.value,
        "unpinned": pinset.unpinned.value,
        "on_expiry": pinset.on_expiry.value,
        "pin_count": pinset.pin_count,
        "serial": pinset.serial,
        "valid_until": (pinset.valid_until.isoformat() if pinset.valid_until is not None
                        else None),
        "rules": [{
            "host": rule.host,
            "include_subdomains": rule.include_subdomains,
            "mode": "learn" if rule.learn else rule.mode.value,
            "pins": [str(pin) for pin in rule.pins],
            "expires": rule.expires.isoformat() if rule.expires is not None else None,
            "on_expiry": rule.on_expiry.value,
            "location": str(rule.location),
        } for rule in pinset.rules],
    }


class ReportLog:
    """Appends one JSON object per line to an O_APPEND file, and follows the file's path.

    One `os.write` per record is what keeps records from several worker processes whole (each
    O_APPEND write lands at the end as one piece); `write_all` finishes a record the kernel wrote
    only in part, or raises. A failure raises OSError, which the caller logs and counts; a
    record cut short by one is ended by a newline before the next, so it spoils only its line.

    Log rotation moves or deletes the file: before each write the path is `os.stat`ed and
    compared with the open descriptor (as `logging.handlers.WatchedFileHandler` does, one
    syscall per violation record), and a different or missing file is reopened (re-created).
    `reopen` (SIGHUP) does the same unconditionally. Nothing that fails disables the log: a
    failed open leaves no descriptor, so the next record opens the path again, and a failed
    write (a full disk) is tried again with the next record. With `--workers N` each process
    sees the path change and reopens on its own.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._torn = False  # the last write stopped inside a record
        self._open()  # at start-up a path that cannot be opened is the operator's error

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._identity, self._torn = fd, (st.st_dev, st.st_ino), False
        return fd

    def _close(self) -> None:
        fd, self._fd, self._identity = self._fd, None, None
        if fd is not None:
            os.close(fd)

    def _current_fd(self) -> int:
        """The descriptor of the file now at the path, reopening it if the path changed."""
        if self._fd is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None  # deleted (or moved away): re-create it
            if st is not None and (st.st_dev, st.st_ino) == self._identity:
                return self._fd
            self._close()
        return self._open()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            fd = self._current_fd()
            if self._torn:  # end the record a failed write left half-written on its own line
                line = b"\n" + line
            try:
                write_all(fd, line)
            except PartialWriteError as e:
                self._torn = not line[:e.written].endswith(b"\n")
                raise
            self._torn = False

    def reopen(self) -> None:
        """Close the file and open the path again (SIGHUP, after logrotate moved the file).

        OSError if the path cannot be opened; the next `write` tries again."""
        with self._lock:
            self._close()
            self._open()

    def close(self) -> None:
        with self._lock:
            self._close()
